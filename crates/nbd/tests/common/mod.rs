//! Shared test helpers: a FileDevice server on a unix socket or TCP port in a
//! temporary folder, running external tools, and a hand-written raw client.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wisp_nbd::protocol as p;
use wisp_nbd::{BlockDevice, FileDevice, Listen, NbdError, Server};

/// Which listener a test server uses.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Unix,
    Tcp,
}

/// A running server exporting `disk` (also the default export) backed by a
/// sparse file, plus a read-only export `ro` of the same size.
pub struct TestServer {
    pub dir: TempDir,
    pub image: PathBuf,
    pub listen: Listen,
    pub size: u64,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), NbdError>>,
}

impl TestServer {
    pub async fn start(transport: Transport, size: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let dev = FileDevice::create(&image, size).unwrap();
        let ro_path = dir.path().join("ro.img");
        FileDevice::create(&ro_path, size).unwrap();
        let ro = FileDevice::open(&ro_path, true).unwrap();
        Self::start_with(
            dir,
            image,
            transport,
            vec![
                ("disk", Arc::new(dev) as Arc<dyn BlockDevice>),
                ("ro", Arc::new(ro)),
            ],
        )
        .await
    }

    pub async fn start_with(
        dir: TempDir,
        image: PathBuf,
        transport: Transport,
        exports: Vec<(&str, Arc<dyn BlockDevice>)>,
    ) -> Self {
        let size = exports[0].1.size();
        let mut server = Server::new();
        for (name, dev) in exports {
            server.add_export(name, dev);
        }
        let listen = match transport {
            Transport::Unix => Listen::Unix(dir.path().join("nbd.sock")),
            Transport::Tcp => Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        };
        let bound = server.bind(&listen).await.unwrap();
        let listen = bound.local_addr().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        Self {
            dir,
            image,
            listen,
            size,
            shutdown: Some(tx),
            task,
        }
    }

    pub fn uri(&self, export: &str) -> String {
        self.listen.export_uri(export)
    }

    /// Asks the server to shut down and waits for it to finish; returns the
    /// temporary folder so a test can still inspect the image.
    pub async fn stop(mut self) -> TempDir {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
        self.dir
    }

    pub async fn connect(&self) -> RawClient {
        RawClient::connect(&self.listen).await
    }
}

/// Runs a tool, failing with the Debian package to install when it is missing.
pub async fn run(tool: &str, package: &str, args: &[&str]) -> Output {
    match tokio::process::Command::new(tool).args(args).output().await {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{tool}` is not installed: install the Debian package `{package}` (apt-get install {package})"
        ),
        Err(e) => panic!("cannot run `{tool}`: {e}"),
    }
}

/// Runs a tool and asserts it succeeded, showing its output when it did not.
pub async fn run_ok(tool: &str, package: &str, args: &[&str]) -> String {
    let out = run(tool, package, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{tool} {}` failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A stream to the server, boxed so one client type covers unix and TCP.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A minimal NBD client speaking raw bytes, to provoke protocol errors.
pub struct RawClient {
    pub s: Box<dyn Stream>,
}

impl RawClient {
    pub async fn connect(listen: &Listen) -> Self {
        let s: Box<dyn Stream> = match listen {
            Listen::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.unwrap()),
            Listen::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await.unwrap()),
        };
        Self { s }
    }

    /// Reads the greeting and sends client flags.
    pub async fn greet(&mut self, client_flags: u32) {
        let mut g = [0u8; 18];
        self.s.read_exact(&mut g).await.unwrap();
        assert_eq!(
            u64::from_be_bytes(g[0..8].try_into().unwrap()),
            p::NBD_MAGIC
        );
        assert_eq!(
            u64::from_be_bytes(g[8..16].try_into().unwrap()),
            p::IHAVEOPT
        );
        let hflags = u16::from_be_bytes([g[16], g[17]]);
        assert_ne!(hflags & p::FLAG_FIXED_NEWSTYLE, 0);
        self.s.write_all(&client_flags.to_be_bytes()).await.unwrap();
    }

    pub async fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut v = Vec::new();
        v.extend_from_slice(&p::IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        self.s.write_all(&v).await.unwrap();
    }

    /// Reads one option reply: (option, reply type, data).
    pub async fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await.unwrap();
        assert_eq!(
            u64::from_be_bytes(h[0..8].try_into().unwrap()),
            p::OPTION_REPLY_MAGIC
        );
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let rep = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await.unwrap();
        (opt, rep, data)
    }

    /// Negotiates `name` with NBD_OPT_GO; returns (size, transmission flags).
    pub async fn go(&mut self, name: &str) -> (u64, u16) {
        let req = p::GoRequest {
            name: name.into(),
            info_requests: vec![p::INFO_BLOCK_SIZE],
        };
        self.send_option(p::OPT_GO, &req.encode()).await;
        let mut export = None;
        loop {
            let (opt, rep, data) = self.option_reply().await;
            assert_eq!(opt, p::OPT_GO);
            match rep {
                p::REP_INFO => {
                    let kind = u16::from_be_bytes([data[0], data[1]]);
                    if kind == p::INFO_EXPORT {
                        export = Some((
                            u64::from_be_bytes(data[2..10].try_into().unwrap()),
                            u16::from_be_bytes([data[10], data[11]]),
                        ));
                    }
                }
                p::REP_ACK => return export.expect("NBD_INFO_EXPORT before ACK"),
                other => panic!(
                    "unexpected reply {other:#x} to GO: {:?}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
    }

    /// Greets and enters transmission on `name`.
    pub async fn open(listen: &Listen, name: &str) -> (Self, u64, u16) {
        let mut c = Self::connect(listen).await;
        c.greet(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES)
            .await;
        let (size, flags) = c.go(name).await;
        (c, size, flags)
    }

    pub async fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let h = p::RequestHeader {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        let mut v = h.encode().to_vec();
        v.extend_from_slice(payload);
        self.s.write_all(&v).await.unwrap();
    }

    /// Reads a simple reply header: (error, cookie).
    pub async fn reply(&mut self) -> (u32, u64) {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r).await.unwrap();
        assert_eq!(
            u32::from_be_bytes(r[0..4].try_into().unwrap()),
            p::SIMPLE_REPLY_MAGIC
        );
        (
            u32::from_be_bytes(r[4..8].try_into().unwrap()),
            u64::from_be_bytes(r[8..16].try_into().unwrap()),
        )
    }

    pub async fn read_data(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.s.read_exact(&mut v).await.unwrap();
        v
    }

    /// Reads until the server closes; returns how many bytes came first.
    /// Guarded by a generous timeout so a server that hangs fails the test
    /// instead of hanging it.
    pub async fn expect_closed(&mut self) -> usize {
        let mut sink = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            self.s.read_to_end(&mut sink),
        )
        .await
        .expect("server did not close the connection")
        .map(|_| sink.len())
        .unwrap_or(sink.len())
    }
}
