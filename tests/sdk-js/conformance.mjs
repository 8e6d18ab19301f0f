// Runs the public Sprites JavaScript SDK (@fly/sprites, pinned in package.json) against
// a wisp server: every public method of SpritesClient and Sprite that wisp serves, each
// checked for the right answer. Prints one line per check and a JSON summary last;
// exits 1 when any check failed.
//
// Environment: WISP_URL (the API), WISP_TOKEN (the host token), WISP_SPRITE (a name
// this run may create and delete).
//
// Run by crates/cli/tests/sdk_js.rs; by hand:
//   WISP_URL=http://127.0.0.1:7070 WISP_TOKEN=$(cat .wisp/token) WISP_SPRITE=sdk \
//     node --experimental-websocket tests/sdk-js/conformance.mjs

import { createHash, randomBytes } from 'node:crypto';

// The SDK needs a global WebSocket that takes headers: Node 22+ has one, Node 20 with
// --experimental-websocket; on older ones the `ws` package stands in.
if (typeof globalThis.WebSocket === 'undefined') {
  const { WebSocket } = await import('ws');
  globalThis.WebSocket = WebSocket;
}

const { SpritesClient, ExecError, APIError } = await import('@fly/sprites');

const url = process.env.WISP_URL;
const token = process.env.WISP_TOKEN;
const name = process.env.WISP_SPRITE || 'sdk';
if (!url || !token) {
  console.error('set WISP_URL and WISP_TOKEN');
  process.exit(2);
}

const client = new SpritesClient(token, { baseURL: url, timeout: 120000 });
const results = [];

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

function equal(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}

async function check(label, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ check: label, ok: true, ms: Date.now() - started });
    console.log(`ok   ${label}`);
  } catch (e) {
    results.push({ check: label, ok: false, error: String(e?.stack || e) });
    console.log(`FAIL ${label}: ${e?.stack || e}`);
  }
}

/** A rejection of `promise`, or a failure when it resolves. */
async function rejection(promise, what) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error(`${what} should have failed`);
}

/** Collects a spawned command's output and exit code (and text messages). */
function collect(cmd) {
  return new Promise((resolve, reject) => {
    const out = { stdout: '', stderr: '', messages: [] };
    cmd.stdout.on('data', (d) => { out.stdout += d.toString(); });
    cmd.stderr.on('data', (d) => { out.stderr += d.toString(); });
    cmd.on('message', (m) => out.messages.push(m));
    cmd.on('error', reject);
    cmd.on('exit', (code) => { out.code = code; resolve(out); });
  });
}

const sha = (buf) => createHash('sha256').update(buf).digest('hex');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let sprite;

// ---- sprite management (SpritesClient) ----
await check('createSprite with config and labels', async () => {
  sprite = await client.createSprite(name, {
    config: { cpus: 1, ramMB: 512, storageGB: 250 },
    labels: ['sdk', 'js'],
    environment: { SPRITE_VAR: 'from-sprite' },
  });
  equal(sprite.name, name, 'name');
  equal(sprite.labels, ['sdk', 'js'], 'labels');
  equal(sprite.config.cpus, 1, 'config.cpus');
  equal(sprite.config.ramMB, 512, 'config.ramMB');
  equal(sprite.config.storageGB, 250, 'config.storageGB');
  assert(sprite.createdAt instanceof Date && !isNaN(sprite.createdAt), 'createdAt is a date');
});

await check('createSprite of a taken name is an APIError 409', async () => {
  const e = await rejection(client.createSprite(name), 'a second create');
  assert(e instanceof APIError, `APIError, got ${e}`);
  equal(e.statusCode, 409, 'status');
  equal(e.errorCode, 'conflict', 'error code');
});

await check('getSprite', async () => {
  const s = await client.getSprite(name);
  equal(s.name, name, 'name');
  assert(['cold', 'warm', 'running'].includes(s.status), `status ${s.status}`);
  equal(s.environment, { SPRITE_VAR: 'from-sprite' }, 'environment');
});

await check('getSprite of a missing sprite is an APIError 404', async () => {
  const e = await rejection(client.getSprite('no-such-sprite'), 'get of a missing sprite');
  assert(e instanceof APIError, `APIError, got ${e}`);
  equal(e.statusCode, 404, 'status');
  equal(e.errorCode, 'not_found', 'error code');
});

await check('listSprites with maxResults 100 and a prefix', async () => {
  const page = await client.listSprites({ maxResults: 100, prefix: name });
  assert(page.sprites.some((s) => s.name === name), 'lists the sprite');
  equal(page.hasMore, false, 'hasMore');
});

await check('listSprites with bulkLoad', async () => {
  const page = await client.listSprites({ bulkLoad: true });
  assert(page.sprites.some((s) => s.name === name), 'lists the sprite');
});

await check('listAllSprites', async () => {
  const all = await client.listAllSprites();
  assert(all.some((s) => s.name === name), 'lists the sprite');
});

await check('updateSprite labels, then updateURLSettings', async () => {
  const updated = await client.updateSprite(name, { labels: ['sdk', 'updated'] });
  equal(updated.labels, ['sdk', 'updated'], 'labels');
  await client.updateURLSettings(name, { auth: 'public' });
  const s = await client.getSprite(name);
  equal(s.urlSettings.auth, 'public', 'url auth');
  equal(s.labels, ['sdk', 'updated'], 'labels kept');
  await sprite.updateURLSettings({ auth: 'sprite' });
  const back = await sprite.update({ labels: ['sdk'] });
  equal(back.urlSettings.auth, 'sprite', 'url auth back');
  equal(back.labels, ['sdk'], 'labels back');
});

// ---- exec ----
await check('execFile (wakes the sprite)', async () => {
  const r = await sprite.execFile('echo', ['hello', 'sdk']);
  equal(r.stdout, 'hello sdk\n', 'stdout');
  equal(r.exitCode, 0, 'exit code');
});

await check('config applies to the VM: CPUs, memory, disk size', async () => {
  const r = await sprite.execFile('sh', ['-c', 'grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo; cat /sys/block/vda/size']);
  const [cpus, mem, sectors] = r.stdout.trim().split('\n');
  equal(cpus, '1', 'CPUs');
  const kib = Number(mem.split(/\s+/)[1]);
  assert(kib > 400 * 1024 && kib <= 512 * 1024, `memory ${mem}`);
  assert(Number(sectors) * 512 >= 250e9, `disk of ${sectors} sectors`);
});

await check('exec splits its command', async () => {
  const r = await sprite.exec('echo one two');
  equal(r.stdout, 'one two\n', 'stdout');
});

await check('execFile exit code, stdout and stderr of a failing command', async () => {
  const e = await rejection(sprite.execFile('sh', ['-c', 'echo out; echo err >&2; exit 7']), 'exit 7');
  assert(e instanceof ExecError, `ExecError, got ${e}`);
  equal(e.exitCode, 7, 'exit code');
  equal(e.stdout, 'out\n', 'stdout');
  equal(e.stderr, 'err\n', 'stderr');
});

await check('exit codes 0..255 and 128+N for a signal', async () => {
  for (const code of [1, 2, 127, 128, 200, 255]) {
    const e = await rejection(sprite.execFile('sh', ['-c', `exit ${code}`]), `exit ${code}`);
    equal(e.exitCode, code, `exit ${code}`);
  }
  const e = await rejection(sprite.execFile('sh', ['-c', 'kill -9 $$']), 'kill -9');
  equal(e.exitCode, 137, 'killed by SIGKILL');
});

await check('env replaces the environment, cwd sets the folder', async () => {
  const r = await sprite.execFile('sh', ['-c', 'echo "$FOO|$SPRITE_VAR"; pwd'], {
    env: { FOO: 'bar' },
    cwd: '/tmp',
  });
  equal(r.stdout, 'bar|\n/tmp\n', 'stdout');
  const d = await sprite.execFile('sh', ['-c', 'echo "$SPRITE_VAR|$HOME"']);
  equal(d.stdout, 'from-sprite|/root\n', 'default environment with the sprite\'s');
});

await check('spawn with stdin', async () => {
  const cmd = sprite.spawn('tr', ['a-z', 'A-Z']);
  const done = collect(cmd);
  await new Promise((resolve) => cmd.once('spawn', resolve));
  cmd.stdin.write('shout ');
  cmd.stdin.end('quietly\n');
  const out = await done;
  equal(out.stdout, 'SHOUT QUIETLY\n', 'stdout');
  equal(out.code, 0, 'exit code');
});

await check('kill delivers the signal (SIGTERM: 143)', async () => {
  const cmd = sprite.spawn('sh', ['-c', 'echo ready; exec sleep 60']);
  const done = collect(cmd);
  await new Promise((resolve) => cmd.stdout.once('data', resolve));
  cmd.kill('SIGTERM');
  const out = await done;
  equal(out.code, 143, 'exit code');
});

await check('signal by name without SIG (INT: 130)', async () => {
  const cmd = sprite.spawn('sh', ['-c', 'echo ready; exec sleep 60']);
  const done = collect(cmd);
  await new Promise((resolve) => cmd.stdout.once('data', resolve));
  cmd.signal('INT');
  equal((await done).code, 130, 'exit code');
});

await check('TTY: exit 0 is 0, a failure is non-zero, the exit message has the code', async () => {
  const ok = await collect(sprite.spawn('sh', ['-c', 'tty >/dev/null && exit 0'], { tty: true }));
  equal(ok.code, 0, 'exit 0');
  const bad = await collect(sprite.spawn('sh', ['-c', 'exit 3'], { tty: true }));
  // The JS SDK reads a terminal's exit code from the close code: 1 for any failure.
  equal(bad.code, 1, 'a failing terminal command');
  const exit = bad.messages.find((m) => m && m.type === 'exit');
  equal(exit && exit.exit_code, 3, 'the exit message');
  const info = bad.messages.find((m) => m && m.type === 'session_info');
  assert(info && info.tty === true && typeof info.session_id === 'string', 'session_info first');
});

await check('TTY resize', async () => {
  const cmd = sprite.spawn('sh', ['-c', 'sleep 2; stty size'], { tty: true, rows: 24, cols: 80 });
  const done = collect(cmd);
  await new Promise((resolve) => cmd.once('spawn', resolve));
  cmd.resize(100, 40);
  const out = await done;
  assert(out.stdout.includes('40 100'), `stty size after resize: ${JSON.stringify(out.stdout)}`);
});

await check('execFileHTTP with input', async () => {
  const r = await sprite.execFileHTTP('sh', ['-c', 'cat; echo done'], { input: 'piped\n' });
  equal(r.stdout, 'piped\ndone\n', 'stdout');
  const e = await rejection(
    sprite.execFileHTTP('sh', ['-c', 'echo err >&2; exit 4']),
    'HTTP exec of exit 4',
  );
  equal(e.exitCode, 4, 'exit code');
  equal(e.stderr, 'err\n', 'stderr');
});

await check('16 MiB through exec stdout, byte-exact', async () => {
  const r = await sprite.execFile('sh', ['-c', 'head -c 16777216 /dev/urandom | tee /tmp/big | wc -c >&2; cat /tmp/big'], {
    encoding: 'buffer',
    maxBuffer: 64 << 20,
  });
  equal(r.stdout.length, 16 << 20, 'bytes');
  const want = await sprite.execFile('sh', ['-c', 'sha256sum /tmp/big']);
  equal(sha(r.stdout), want.stdout.split(' ')[0], 'sha256');
});

await check('sessions: createSession, listSessions, attachSession replays, killSession', async () => {
  const first = sprite.createSession('sh', ['-c', 'echo first-output; sleep 1; echo second-output; exec sleep 600']);
  const info = await new Promise((resolve, reject) => {
    first.on('message', (m) => { if (m && m.type === 'session_info') resolve(m); });
    first.on('error', reject);
  });
  let seen = '';
  await new Promise((resolve) => first.stdout.on('data', (d) => {
    seen += d.toString();
    if (seen.includes('second-output')) resolve();
  }));
  first.wsCmd.close();
  await sleep(500);
  const sessions = await sprite.listSessions();
  const mine = sessions.find((s) => s.id === info.session_id);
  assert(mine && mine.isActive && mine.tty, `listed and running after the client left: ${JSON.stringify(sessions)}`);
  assert(mine.created instanceof Date && !isNaN(mine.created), 'created');
  const again = sprite.attachSession(info.session_id);
  let replay = '';
  const replayed = new Promise((resolve) => again.stdout.on('data', (d) => {
    replay += d.toString();
    if (replay.includes('first-output') && replay.includes('second-output')) resolve();
  }));
  const againDone = collect(again);
  await replayed;
  const kill = await sprite.killSession(info.session_id, 'SIGTERM', '5s');
  const events = [];
  for (let e = await kill.next(); e; e = await kill.next()) events.push(e);
  equal(events.map((e) => e.type), ['signal', 'exited', 'complete'], 'kill events');
  equal(events[1].exitCode, 143, 'exit code after SIGTERM');
  equal((await againDone).code, 1, 'the attached client sees the end (a failed terminal command)');
  const after = await sprite.listSessions();
  assert(after.some((s) => s.id === info.session_id && !s.isActive), 'listed as ended');
});

await check('64 MiB through exec stdin and stdout, byte-exact', async () => {
  const data = randomBytes(64 << 20);
  const cmd = sprite.spawn('sh', ['-c', 'cat > /tmp/in.bin; sha256sum /tmp/in.bin; cat /tmp/in.bin >&2']);
  const chunks = [];
  cmd.stderr.on('data', (d) => chunks.push(d));
  const out = collect(cmd);
  await new Promise((resolve) => cmd.once('spawn', resolve));
  for (let i = 0; i < data.length; i += 1 << 20) cmd.stdin.write(data.subarray(i, i + (1 << 20)));
  cmd.stdin.end();
  const result = await out;
  equal(result.code, 0, 'exit code');
  equal(result.stdout.split(' ')[0], sha(data), 'sha256 of what arrived in the sprite');
  const back = Buffer.concat(chunks);
  equal(back.length, data.length, 'bytes back');
  equal(sha(back), sha(data), 'sha256 of what came back');
});

// ---- filesystem ----
const fs = () => sprite.filesystem('/root');

await check('filesystem writeFile/readFile/stat', async () => {
  await fs().writeFile('dir/a.txt', 'hello', { mode: 0o640 });
  equal(await fs().readFile('dir/a.txt', 'utf8'), 'hello', 'contents');
  const st = await fs().stat('dir/a.txt');
  equal(st.size, 5, 'size');
  equal(st.mode & 0o777, 0o640, 'mode');
  assert(st.isFile() && !st.isDirectory(), 'a file');
  const sh = await sprite.execFile('cat', ['/root/dir/a.txt']);
  equal(sh.stdout, 'hello', 'seen by a command');
});

await check('filesystem exists, and errors with errno codes', async () => {
  equal(await fs().exists('dir/a.txt'), true, 'exists');
  equal(await fs().exists('dir/missing'), false, 'missing');
  const e = await rejection(fs().readFile('dir/missing'), 'read of a missing file');
  equal(e.code, 'ENOENT', 'code');
  const d = await rejection(fs().readFile('dir'), 'read of a folder');
  equal(d.code, 'EISDIR', 'code');
});

await check('filesystem readdir, recursive and with a pattern', async () => {
  await fs().writeFile('dir/sub/b.md', '# b');
  equal(await fs().readdir('dir'), ['a.txt', 'sub'], 'entries');
  equal(await fs().readdir('dir', { recursive: true }), ['a.txt', 'sub', 'sub/b.md'], 'recursive');
  equal(await fs().readdir('dir', { recursive: true, pattern: '*.md' }), ['sub/b.md'], 'pattern');
  const typed = await fs().readdir('dir', { withFileTypes: true });
  equal(typed.map((d) => [d.name, d.isDirectory()]), [['a.txt', false], ['sub', true]], 'dirents');
});

await check('filesystem mkdir (recursive and not), rm', async () => {
  await fs().mkdir('made/deep/er', { recursive: true });
  await fs().mkdir('single');
  const ls = await sprite.execFile('sh', ['-c', 'cd /root && ls -d made/deep/er single && ls -A single | wc -l']);
  equal(ls.stdout, 'made/deep/er\nsingle\n0\n', 'folders made, no .keep left');
  const e = await rejection(fs().rm('made'), 'rm of a non-empty folder');
  equal(e.code, 'ENOTEMPTY', 'code');
  await fs().rm('made', { recursive: true });
  await fs().rm('made', { force: true });
  equal(await fs().exists('made'), false, 'removed');
});

await check('filesystem rename, copyFile (file and folder), chmod, chown', async () => {
  await fs().rename('dir/a.txt', 'dir/b.txt');
  equal(await fs().exists('dir/a.txt'), false, 'old name gone');
  await fs().copyFile('dir/b.txt', 'dir/c.txt');
  equal(await fs().readFile('dir/c.txt', 'utf8'), 'hello', 'copy');
  await fs().copyFile('dir', 'dir2', { recursive: true });
  equal(await fs().readFile('dir2/sub/b.md', 'utf8'), '# b', 'folder copy');
  await fs().chmod('dir/c.txt', 0o755);
  equal((await fs().stat('dir/c.txt')).mode & 0o777, 0o755, 'chmod');
  await fs().chown('dir/c.txt', { uid: 1234, gid: 5678 });
  const owner = await sprite.execFile('stat', ['-c', '%u:%g', '/root/dir/c.txt']);
  equal(owner.stdout, '1234:5678\n', 'chown');
  await fs().chown('dir/c.txt', { uid: 'root', gid: 0 });
  const back = await sprite.execFile('stat', ['-c', '%u:%g', '/root/dir/c.txt']);
  equal(back.stdout, '0:0\n', 'chown by name');
});

await check('filesystem appendFile, writeJSON/readJSON', async () => {
  await fs().appendFile('log.txt', 'one\n');
  await fs().appendFile('log.txt', 'two\n');
  equal(await fs().readFile('log.txt', 'utf8'), 'one\ntwo\n', 'appended');
  await fs().writeJSON('conf.json', { a: [1, 2], b: 'x' });
  equal(await fs().readJSON('conf.json'), { a: [1, 2], b: 'x' }, 'json');
});

await check('filesystem 64 MiB write and read, byte-exact', async () => {
  const data = randomBytes(64 << 20);
  await fs().writeFile('big.bin', data);
  const back = await fs().readFile('big.bin');
  equal(back.length, data.length, 'bytes');
  equal(sha(back), sha(data), 'sha256');
  const inside = await sprite.execFile('sha256sum', ['/root/big.bin']);
  equal(inside.stdout.split(' ')[0], sha(data), 'sha256 inside the sprite');
});

await check('filesystem watch', async () => {
  await fs().mkdir('watched/deeper', { recursive: true });
  const watcher = await fs().watch('watched', { recursive: true });
  const first = await watcher.next();
  equal(first.type, 'subscribed', 'first message');
  await fs().writeFile('watched/deeper/new.txt', 'x');
  let seen;
  for (let e = await watcher.next(); e; e = await watcher.next()) {
    if (e.type === 'event' && e.path === '/root/watched/deeper/new.txt') { seen = e; break; }
  }
  assert(seen && ['create', 'write', 'rename'].includes(seen.event), JSON.stringify(seen));
  await fs().rm('watched', { recursive: true });
  let removed;
  for (let e = await watcher.next(); e; e = await watcher.next()) {
    if (e.type === 'event' && e.event === 'remove') { removed = e; break; }
  }
  assert(removed, 'a remove event');
  watcher.close();
  const bad = await fs().watch('no/such/folder');
  const error = await bad.next();
  equal(error.type, 'error', 'a watch of a missing path');
  assert(error.message.includes('No such file'), error.message);
  bad.close();
});

// ---- checkpoints ----
let checkpointId;
await check('createCheckpoint streams to completion, listCheckpoints, getCheckpoint', async () => {
  await fs().writeFile('state.txt', 'before');
  const stream = await sprite.createCheckpoint('from the sdk');
  const events = [];
  for (let m = await stream.next(); m; m = await stream.next()) events.push(m);
  assert(events.some((m) => m.type === 'complete'), `a complete event: ${JSON.stringify(events)}`);
  const list = await sprite.listCheckpoints();
  const mine = list.find((c) => c.comment === 'from the sdk');
  assert(mine, `listed: ${JSON.stringify(list)}`);
  checkpointId = mine.id;
  const one = await sprite.getCheckpoint(checkpointId);
  equal(one.id, checkpointId, 'id');
  assert(one.createTime instanceof Date && !isNaN(one.createTime), 'createTime');
});

await check('restoreCheckpoint brings the disk back', async () => {
  await fs().writeFile('state.txt', 'after');
  const stream = await sprite.restoreCheckpoint(checkpointId);
  const events = [];
  for (let m = await stream.next(); m; m = await stream.next()) events.push(m);
  assert(events.some((m) => m.type === 'complete'), `a complete event: ${JSON.stringify(events)}`);
  equal(await fs().readFile('state.txt', 'utf8'), 'before', 'restored');
});

// ---- services ----
const drain = async (stream) => {
  const events = [];
  for (let e = await stream.next(); e; e = await stream.next()) events.push(e);
  return events;
};

await check('createService streams its log; getService, listServices', async () => {
  const events = await drain(await sprite.createService('ticker', {
    cmd: 'sh',
    args: ['-c', 'echo tick-$T; exec sleep 600'],
    env: { T: 'one' },
    dir: '/tmp',
  }, '2s'));
  equal(events[0].type, 'started', 'first event');
  equal(events[events.length - 1].type, 'complete', 'last event');
  assert(events.some((e) => e.type === 'stdout' && e.data.includes('tick-one')), JSON.stringify(events));
  assert(Number.isInteger(events[0].timestamp), 'timestamps in ms');
  const svc = await sprite.getService('ticker');
  equal(svc.state.status, 'running', 'status');
  equal(svc.env, { T: 'one' }, 'env');
  equal(svc.dir, '/tmp', 'dir');
  assert(svc.state.startedAt && !isNaN(new Date(svc.state.startedAt)), 'startedAt');
  equal(svc.state.restartCount, 0, 'restartCount');
  const list = await sprite.listServices();
  equal(list.map((s) => s.name), ['ticker'], 'listed');
});

await check('services: needs, stop, start, restart, logs, signal', async () => {
  await drain(await sprite.createService('after', { cmd: 'sleep', args: ['600'], needs: ['ticker'] }, '0s'));
  equal((await sprite.getService('after')).needs, ['ticker'], 'needs');
  const cycle = await rejection(
    sprite.createService('ticker', { cmd: 'true', needs: ['after'] }),
    'a cycle of needs',
  );
  assert(String(cycle).includes('cycle'), String(cycle));
  const stopped = await drain(await sprite.stopService('after'));
  equal(stopped.map((e) => e.type), ['stopping', 'stopped', 'complete'], 'stop events');
  equal((await sprite.getService('after')).state.status, 'stopped', 'stopped');
  await drain(await sprite.startService('after', '0s'));
  equal((await sprite.getService('after')).state.status, 'running', 'started again');
  const restarted = await drain(await sprite.restartService('ticker', '1s'));
  assert(restarted.some((e) => e.type === 'stdout' && e.data.includes('tick-one')), JSON.stringify(restarted));
  const logs = await drain(await sprite.getServiceLogs('ticker', { lines: 1 }));
  equal(logs.filter((e) => e.type === 'stdout').map((e) => e.data), ['tick-one\n'], 'last line');
  await sprite.signalService('after', 'TERM');
  const e = await rejection(sprite.signalService('nope', 'TERM'), 'signal of a missing service');
  assert(String(e).includes('not found'), String(e));
  await sprite.deleteService('after');
  await sprite.deleteService('ticker');
  equal(await sprite.listServices(), [], 'all gone');
});

// ---- ports ----
await check('watchPorts, proxyPort, and port notifications on exec', async () => {
  await fs().writeFile('/root/www/index.html', 'served from the sprite\n');
  const watcher = await sprite.watchPorts();
  const list = await watcher.next();
  equal(list.type, 'port_list', 'first message');
  const server = sprite.spawn('httpd', ['-f', '-p', '3000', '-h', '/root/www']);
  const serverDone = collect(server);
  let opened;
  for (let m = await watcher.next(); m; m = await watcher.next()) {
    if (m.type === 'port_opened' && m.port === 3000) { opened = m; break; }
  }
  assert(opened && typeof opened.pid === 'number', `port_opened 3000 with a pid: ${JSON.stringify(opened)}`);
  const proxy = await sprite.proxyPort(0, 3000);
  const local = proxy.localAddr();
  const page = await (await fetch(`http://${local}/index.html`)).text();
  equal(page, 'served from the sprite\n', 'a page through the proxy');
  proxy.close();
  server.kill('SIGTERM');
  await serverDone;
  for (let m = await watcher.next(); m; m = await watcher.next()) {
    if (m.type === 'port_closed' && m.port === 3000) break;
  }
  watcher.close();
  const tty = await collect(sprite.spawn('sh', ['-c', 'httpd -f -p 3001 -h /root/www & sleep 2; kill $!'], { tty: true }));
  const note = tty.messages.find((m) => m && m.type === 'port_opened' && m.port === 3001);
  assert(note, `a port_opened message during exec: ${JSON.stringify(tty.messages)}`);
});

// ---- the rest of the surface ----
await check('check (awake: healthy), restart, upgrade', async () => {
  await sprite.execFile('true');
  const health = await sprite.check();
  equal(health.status, 'healthy', 'status');
  equal(health.spriteName, name, 'spriteName');
  assert(health.checkedAt instanceof Date && !isNaN(health.checkedAt), 'checkedAt');
  await fs().writeFile('/tmp/gone-after-restart', 'x');
  const restarted = await sprite.restart();
  equal(restarted.spriteName, name, 'spriteName');
  equal(await fs().exists('/root/state.txt'), true, 'the disk survives a restart');
  equal(await fs().exists('/tmp/gone-after-restart'), false, 'a restart is a new boot (tmpfs /tmp)');
  await sprite.upgrade();
});

await check('watchSprites streams the list, then changes', async () => {
  const stream = await client.watchSprites({ prefix: name });
  const first = await stream.next();
  equal(first.name, name, 'first line');
  assert(first.organization && typeof first.organization.running === 'number', 'org counts');
  await client.updateSprite(name, { labels: ['watched'] });
  const change = await stream.next();
  equal(change.name, name, 'a change line');
  stream.close();
});

await check('policy calls fail at once, naming what is missing (501)', async () => {
  const e = await rejection(sprite.getNetworkPolicy(), 'getNetworkPolicy');
  assert(String(e).includes('501') && String(e).includes('not implemented'), String(e));
});

// ---- the end ----
await check('deleteSprite', async () => {
  await sprite.delete();
  const e = await rejection(client.getSprite(name), 'get after delete');
  equal(e.statusCode, 404, 'gone');
});

const failed = results.filter((r) => !r.ok);
console.log(JSON.stringify({ summary: { checks: results.length, failed: failed.map((r) => r.check) } }));
process.exit(failed.length ? 1 : 0);
