//! A real single-node Garage 2.x S3 server in a temporary folder on free loopback ports,
//! configured with one bucket and one read/write key, for tests and benchmarks.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;

/// How long the server may take to answer after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped, see [`Garage::stop`]) single-node Garage server.
///
/// Dropping it kills the server and deletes its folder. Should the test process die
/// without dropping it, the kernel kills the server too (`PR_SET_PDEATHSIG`).
pub struct Garage {
    /// S3 endpoint, `http://127.0.0.1:PORT` (path-style requests, plain HTTP).
    pub endpoint: String,
    /// Region the server signs with; clients must use the same one.
    pub region: String,
    /// The one bucket, readable and writable with the key below.
    pub bucket: String,
    /// Access key id (`GK...`) allowed to read, write and own `bucket`.
    pub access_key_id: String,
    /// Secret of that key.
    pub secret_access_key: String,
    binary: PathBuf,
    config: PathBuf,
    s3_port: u16,
    child: Option<Child>,
    // Last field: dropped after the server is killed in `Drop`.
    dir: tempfile::TempDir,
}

impl Garage {
    /// Starts a fresh server with an empty bucket `wisp` (blocks for about a second).
    ///
    /// Panics, with the failing step's output, if `garage` is missing or any step fails.
    pub fn start() -> Garage {
        let binary = crate::require_tool("garage", "none: cargo install --locked garage@2.5.0");
        let dir = tempfile::Builder::new()
            .prefix("wisp-garage-")
            .tempdir()
            .expect("create a temporary folder for garage");
        let s3_port = crate::free_port();
        let rpc_port = crate::free_port();
        let admin_port = crate::free_port();
        let config = dir.path().join("garage.toml");
        let region = "garage".to_string();
        std::fs::write(
            &config,
            config_text(dir.path(), &region, rpc_port, s3_port, admin_port),
        )
        .expect("write garage.toml");

        let mut garage = Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region,
            bucket: "wisp".to_string(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            binary,
            config,
            s3_port,
            child: None,
            dir,
        };
        garage.spawn_server();

        // `status` needs the RPC port, so it doubles as the "server is up" probe; `node id`
        // alone would answer from the key file before the server listens.
        garage.cli_ok(&["status"]);
        let node_id = garage.cli_ok(&["node", "id", "-q"]);
        // `node id -q` prints `HEXID@ADDR`; layout commands want the id alone.
        let node_id = node_id
            .trim()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            !node_id.is_empty(),
            "garage printed no node id\n{}",
            garage.log_tail()
        );
        garage.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id]);
        garage.cli_ok(&["layout", "apply", "--version", "1"]);
        garage.cli_ok(&["bucket", "create", &garage.bucket.clone()]);
        let key_output = garage.cli_ok(&["key", "create", "wisp-key"]);
        garage.access_key_id = field(&key_output, "Key ID");
        garage.secret_access_key = field(&key_output, "Secret key");
        garage.cli_ok(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &garage.bucket.clone(),
            "--key",
            "wisp-key",
        ]);
        garage.wait_s3_ready();
        garage
    }

    /// One server shared by every test of the calling test binary, started on first use.
    ///
    /// Tests sharing it must use distinct key prefixes (for example [`unique_prefix`]) and
    /// must not need to stop it; use [`Garage::start`] for fault tests.
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| {
            let garage = Garage::start();
            // Statics are never dropped: remove the folder when the process exits.
            let _ = SHARED_DIR.set(garage.dir.path().to_path_buf());
            let _ = SHARED_PID.set(garage.child.as_ref().map_or(0, Child::id));
            // SAFETY: registers a plain `extern "C"` function with no preconditions.
            unsafe { libc::atexit(cleanup_shared) };
            garage
        })
    }

    /// `s3://BUCKET/PREFIX`, the store URL wisp's `--store` flag takes for this server.
    pub fn store_url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_start_matches('/'))
    }

    /// The environment that points `AmazonS3Builder::from_env` (and `wisp --store s3://`)
    /// at this server.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", &self.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_access_key),
            ("AWS_REGION", &self.region),
            ("AWS_DEFAULT_REGION", &self.region),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// An `object_store` S3 builder with every setting this server needs (see the crate
    /// docs); callers add retry or client options and call `build()`.
    pub fn s3_builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
    }

    /// Kills the server (like a crash: SIGKILL); the data folder and ports stay reserved
    /// for [`Garage::restart`]. Requests meanwhile fail with connection errors.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data folder and ports, and waits until the S3
    /// API answers. Data written before [`Garage::stop`] is still there.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_server();
        self.cli_ok(&["status"]);
        self.wait_s3_ready();
    }

    /// Whether the server process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The server's temporary folder (config, metadata, data, `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the server's log, for panic messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(40);
        lines[start..].join("\n")
    }

    fn spawn_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("open garage server.log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log);
        let child = spawn_tied(cmd).unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.binary));
        self.child = Some(child);
    }

    /// Runs `garage -c CONF ARGS...`, retrying while the server is still starting, and
    /// returns its stdout; panics with the full output if it keeps failing.
    fn cli_ok(&mut self, args: &[&str]) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let output = self.cli(args);
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            // Only "no node key yet" and connection errors mean "not up yet"; anything else
            // is a real failure.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let starting = stderr.contains("node key")
                || stderr.contains("connect")
                || stderr.contains("Connection");
            if !starting || Instant::now() > deadline || !self.is_running() {
                panic!(
                    "`garage {}` failed ({})\nstdout:\n{}\nstderr:\n{}\nserver log:\n{}",
                    args.join(" "),
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    stderr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.binary))
    }

    /// Waits until the S3 port answers HTTP (any status: an anonymous request is refused,
    /// which proves the API is serving).
    fn wait_s3_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if http_answers(self.s3_port) {
                return;
            }
            if Instant::now() > deadline || !self.is_running() {
                panic!(
                    "garage S3 API on port {} did not answer within {READY_TIMEOUT:?}\nserver log:\n{}",
                    self.s3_port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Garage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of debug output.
        f.debug_struct("Garage")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// A key prefix no other caller in this process gets, for tests sharing one bucket.
pub fn unique_prefix(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}

fn config_text(dir: &Path, region: &str, rpc_port: u16, s3_port: u16, admin_port: u16) -> String {
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .expect("read /dev/urandom for the rpc secret");
    let secret_hex = secret.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret_hex}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
    )
}

/// The value after `NAME:` on the line of `garage key create` output that starts with NAME.
fn field(output: &str, name: &str) -> String {
    output
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix(name)?
                .trim_start()
                .strip_prefix(':')
        })
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("no `{name}:` line in garage output:\n{output}"))
}

fn http_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it is killed when this process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and test threads
/// exit all the time, so every server is forked from one thread that lives as long as the
/// process.
fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("garage-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the garage spawner thread");
        std::sync::Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("garage spawner thread is alive");
    reply_rx.recv().expect("garage spawner thread replies")
}

static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();
static SHARED_PID: OnceLock<u32> = OnceLock::new();

extern "C" fn cleanup_shared() {
    if let Some(&pid) = SHARED_PID.get() {
        if pid != 0 {
            // SAFETY: sending a signal to our own child process id.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    if let Some(dir) = SHARED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_create_output() {
        let out = "==== ACCESS KEY INFORMATION ====\nKey ID:              GKef94\n\
                   Key name:            wisp-key\nSecret key:          c20fd4\n";
        assert_eq!(field(out, "Key ID"), "GKef94");
        assert_eq!(field(out, "Secret key"), "c20fd4");
    }

    #[test]
    fn config_has_a_64_hex_rpc_secret() {
        let text = config_text(Path::new("/tmp/x"), "garage", 1, 2, 3);
        let secret = text
            .lines()
            .find_map(|l| l.strip_prefix("rpc_secret = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("rpc_secret line");
        assert_eq!(secret.len(), 64);
        assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(text.contains("api_bind_addr = \"127.0.0.1:2\""));
    }

    #[test]
    fn unique_prefixes_differ() {
        assert_ne!(unique_prefix("t"), unique_prefix("t"));
    }
}
