// Times the public JS SDK's execFile('true') against a wisp server (wisp-bench's sdk
// section): WISP_EXECS runs on an awake sprite, prints {"median_ms": N, "min_ms": N}.
if (typeof globalThis.WebSocket === 'undefined') {
  const { WebSocket } = await import('ws');
  globalThis.WebSocket = WebSocket;
}
const { SpritesClient } = await import('@fly/sprites');
const client = new SpritesClient(process.env.WISP_TOKEN, { baseURL: process.env.WISP_URL });
const sprite = client.sprite(process.env.WISP_SPRITE);
const runs = Number(process.env.WISP_EXECS || 50);
await sprite.execFile('true');
const samples = [];
for (let i = 0; i < runs; i++) {
  const t = performance.now();
  await sprite.execFile('true');
  samples.push(performance.now() - t);
}
samples.sort((a, b) => a - b);
console.log(JSON.stringify({ median_ms: samples[Math.floor(samples.length / 2)], min_ms: samples[0] }));
