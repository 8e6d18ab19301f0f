//! Seeded pseudo-random input against a live server (handshake and
//! transmission phase), and graceful shutdown with requests in flight.

mod common;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::{RawClient, TestServer, Transport, XorShift};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use wisp_nbd::protocol as p;
use wisp_nbd::{BlockDevice, FileDevice};

const MIB: u64 = 1024 * 1024;

/// Sends `bytes` then half-closes, and waits for the server to close its side.
async fn throw(srv: &TestServer, prefix: &[u8], bytes: &[u8], enter_transmission: bool) {
    let mut c = if enter_transmission {
        RawClient::open(&srv.listen, "disk").await.0
    } else {
        srv.connect().await
    };
    // The server may close early (bad magic), so write errors are expected.
    let _ = c.s.write_all(prefix).await;
    let _ = c.s.write_all(bytes).await;
    let _ = c.s.shutdown().await;
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_never_break_the_server() {
    let srv = TestServer::start(Transport::Unix, 4 * MIB).await;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..300u32 {
        let len = rng.below(300) as usize;
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk);
        match round % 3 {
            // Raw junk at the greeting stage.
            0 => throw(&srv, &[], &junk, false).await,
            // A valid greeting then a plausible option header with junk after.
            1 => {
                let mut pre = (rng.below(4) as u32).to_be_bytes().to_vec();
                pre.extend_from_slice(&p::IHAVEOPT.to_be_bytes());
                pre.extend_from_slice(&(rng.below(12) as u32).to_be_bytes());
                pre.extend_from_slice(&(rng.below(64) as u32).to_be_bytes());
                let mut c = srv.connect().await;
                let mut greeting = [0u8; 18];
                tokio::io::AsyncReadExt::read_exact(&mut c.s, &mut greeting)
                    .await
                    .unwrap();
                let _ = c.s.write_all(&pre).await;
                let _ = c.s.write_all(&junk).await;
                let _ = c.s.shutdown().await;
                c.expect_closed().await;
            }
            // Transmission: request headers with the right magic and random
            // fields (bounded lengths so writes stay small), then junk.
            _ => {
                let mut pre = Vec::new();
                for _ in 0..rng.below(8) {
                    let kind = rng.below(9) as u16;
                    let h = p::RequestHeader {
                        flags: rng.below(1 << 6) as u16,
                        kind,
                        cookie: rng.next(),
                        offset: if rng.below(2) == 0 {
                            rng.below(5 * MIB)
                        } else {
                            rng.next()
                        },
                        length: rng.below(70_000) as u32,
                    };
                    pre.extend_from_slice(&h.encode());
                    if kind == p::CMD_WRITE {
                        pre.extend(std::iter::repeat_n(0x5a, h.length as usize));
                    }
                }
                throw(&srv, &pre, &junk, true).await;
            }
        }
    }
    // Still serving, and still correct.
    let (mut c, size, _) = RawClient::open(&srv.listen, "disk").await;
    assert_eq!(size, 4 * MIB);
    c.request(p::CMD_WRITE, 0, 1, 8192, 4, b"live").await;
    assert_eq!(c.reply().await, (0, 1));
    c.request(p::CMD_READ, 0, 2, 8192, 4, &[]).await;
    assert_eq!(c.reply().await, (0, 2));
    assert_eq!(c.read_data(4).await, b"live");
    assert!(!srv.task.is_finished());
    srv.stop().await;
}

/// A FileDevice whose writes wait for a permit, so a test can hold requests
/// in flight; it also counts flushes.
struct GatedDevice {
    inner: FileDevice,
    gate: Arc<Semaphore>,
    started: mpsc::UnboundedSender<u64>,
    flushes: Arc<AtomicUsize>,
}

#[async_trait]
impl BlockDevice for GatedDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> io::Result<()> {
        let _ = self.started.send(offset);
        let _permit = self.gate.acquire().await.map_err(io::Error::other)?;
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush().await
    }
    async fn trim(&self, offset: u64, len: u32) -> io::Result<()> {
        self.inner.trim(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        self.inner.write_zeroes(offset, len, fua).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let gate = Arc::new(Semaphore::new(0));
    let flushes = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let dev = GatedDevice {
        inner: FileDevice::create(&image, MIB).unwrap(),
        gate: gate.clone(),
        started: started_tx,
        flushes: flushes.clone(),
    };
    let srv = TestServer::start_with(
        dir,
        image.clone(),
        Transport::Unix,
        vec![("disk", Arc::new(dev))],
    )
    .await;
    let sock = match &srv.listen {
        wisp_nbd::Listen::Unix(p) => p.clone(),
        other => panic!("unexpected {other}"),
    };
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    c.request(p::CMD_WRITE, 0, 1, 0, 5, b"hello").await;
    c.request(p::CMD_WRITE, 0, 2, 512, 5, b"world").await;
    // Both writes reached the device and are blocked there.
    assert_eq!(started.recv().await.unwrap() % 512, 0);
    assert_eq!(started.recv().await.unwrap() % 512, 0);

    let stopping = tokio::spawn(srv.stop());
    // New connections are refused once the listener is gone.
    while sock.exists() {
        tokio::task::yield_now().await;
    }
    gate.add_permits(2);
    let mut cookies = vec![c.reply().await, c.reply().await];
    cookies.sort();
    assert_eq!(cookies, [(0, 1), (0, 2)]);
    c.expect_closed().await;
    let _dir = stopping.await.unwrap();
    assert!(
        flushes.load(Ordering::SeqCst) >= 1,
        "exports are flushed at shutdown"
    );
    let data = std::fs::read(&image).unwrap();
    assert_eq!(&data[0..5], b"hello");
    assert_eq!(&data[512..517], b"world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stream_works_on_an_in_memory_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::create(&dir.path().join("d.img"), MIB).unwrap();
    let mut server = wisp_nbd::Server::new();
    server.add_export("d", Arc::new(dev));
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move { server.serve_stream(server_side).await });
    let mut c = RawClient {
        s: Box::new(client),
    };
    c.greet(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES)
        .await;
    assert_eq!(c.go("").await.0, MIB);
    c.request(p::CMD_WRITE, p::CMD_FLAG_FUA, 1, 100, 3, b"abc")
        .await;
    assert_eq!(c.reply().await, (0, 1));
    c.request(p::CMD_READ, 0, 2, 99, 5, &[]).await;
    assert_eq!(c.reply().await, (0, 2));
    assert_eq!(c.read_data(5).await, b"\0abc\0");
    c.request(p::CMD_DISC, 0, 3, 0, 0, &[]).await;
    c.expect_closed().await;
    task.await.unwrap().unwrap();
}

/// A FileDevice that calls a hook before each read: to observe reads, or to
/// play a buggy device.
struct ReadHookDevice<F> {
    inner: FileDevice,
    on_read: F,
}

#[async_trait]
impl<F: Fn(u64) + Send + Sync + 'static> BlockDevice for ReadHookDevice<F> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        (self.on_read)(offset);
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> io::Result<()> {
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> io::Result<()> {
        self.inner.flush().await
    }
    async fn trim(&self, offset: u64, len: u32) -> io::Result<()> {
        self.inner.trim(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        self.inner.write_zeroes(offset, len, fua).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_client_that_stops_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (reads_tx, mut reads) = mpsc::unbounded_channel();
    let dev = ReadHookDevice {
        inner: FileDevice::create(&dir.path().join("d.img"), 64 * MIB).unwrap(),
        on_read: move |offset| {
            let _ = reads_tx.send(offset);
        },
    };
    let mut server = wisp_nbd::Server::new();
    server.add_export("d", Arc::new(dev));
    server.set_drain_timeout(std::time::Duration::from_millis(200));
    let listen = wisp_nbd::Listen::Unix(dir.path().join("s.sock"));
    let bound = server.bind(&listen).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async move {
        let _ = rx.await;
    }));
    let (mut c, _, _) = RawClient::open(&listen, "d").await;
    // 64 MiB of replies that are never read: far more than a socket buffer
    // holds, so the reply writer blocks with requests still holding slots.
    for i in 0..64u64 {
        c.request(p::CMD_READ, 0, i, i * MIB, MIB as u32, &[]).await;
    }
    for _ in 0..64 {
        reads.recv().await.unwrap();
    }
    let _ = tx.send(());
    // Generous guard: without the drain timeout this would wait forever.
    tokio::time::timeout(std::time::Duration::from_secs(60), task)
        .await
        .expect("shutdown waited for a client that never reads")
        .unwrap()
        .unwrap();
    // The server closed the connection after at most the replies that fit.
    drop(c.s.shutdown().await);
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut c.s, &mut sink).await;
    assert!(sink.len() < 64 * MIB as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_device_answers_eio_and_the_connection_survives() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    // A buggy device: it panics when asked to read offset 0.
    let dev = ReadHookDevice {
        inner: FileDevice::create(&image, MIB).unwrap(),
        on_read: |offset| assert_ne!(offset, 0, "deliberate device bug"),
    };
    let srv =
        TestServer::start_with(dir, image, Transport::Unix, vec![("disk", Arc::new(dev))]).await;
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    c.request(p::CMD_READ, 0, 1, 0, 512, &[]).await;
    assert_eq!(c.reply().await, (p::EIO, 1));
    c.request(p::CMD_READ, 0, 2, 512, 512, &[]).await;
    assert_eq!(c.reply().await, (0, 2));
    assert_eq!(c.read_data(512).await, vec![0; 512]);
    srv.stop().await;
}

/// A server that stops after another one bound the same unix socket path (a
/// machine started again at once, its old socket file already removed) leaves
/// the new server's socket file alone.
#[tokio::test]
async fn a_stopping_server_leaves_a_successors_socket_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let listen = wisp_nbd::Listen::Unix(dir.path().join("s.sock"));
    let serve = |name: &str| {
        let mut server = wisp_nbd::Server::new();
        let dev = FileDevice::create(&dir.path().join(name), MIB).unwrap();
        server.add_export("d", Arc::new(dev));
        server
    };
    let first = serve("a.img").bind(&listen).await.unwrap();
    let (stop_first, rx) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(first.serve(async move {
        let _ = rx.await;
    }));
    let wisp_nbd::Listen::Unix(path) = &listen else {
        unreachable!()
    };
    std::fs::remove_file(path).unwrap();
    let second = serve("b.img").bind(&listen).await.unwrap();
    let (_stop_second, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(second.serve(async move {
        let _ = rx.await;
    }));
    let _ = stop_first.send(());
    first.await.unwrap().unwrap();
    assert!(path.exists(), "the successor's socket file was removed");
    let (_c, _, _) = RawClient::open(&listen, "d").await;
}
