//! Drives the `wisp` binary under test: one `$WISP_HOME` (a "host") and one store per
//! instance, so a fresh instance on the same store is a host with an empty cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::engine::{self, LocalServe};
use crate::procs::{self, Server};

/// How long `wisp volume serve` may take to listen.
const SERVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The `wisp` CLI with its own home folder and store.
#[derive(Debug, Clone)]
pub struct Wisp {
    pub bin: PathBuf,
    pub home: PathBuf,
    /// `--store` URL; `None` uses the local folder store under `home`.
    pub store: Option<String>,
    /// Extra environment (the `AWS_*` variables of an S3 store).
    pub env: Vec<(String, String)>,
    /// Whether the binary has `wisp volume serve`; without it volumes are created and
    /// served by the engine inside the benchmark (same library code, no CLI process).
    pub cli: bool,
}

/// A served volume: a `wisp volume serve` process or an in-process server.
pub enum Served {
    Process(Server),
    InProcess(LocalServe),
}

impl Served {
    /// Stops serving the clean way (SIGTERM, or closing the volume), which flushes and
    /// uploads; returns how long that took.
    pub fn terminate(self, timeout: Duration) -> Result<Duration> {
        match self {
            Served::Process(server) => server.terminate(timeout),
            Served::InProcess(local) => local.stop(timeout),
        }
    }
}

impl Wisp {
    pub fn new(bin: &Path, home: &Path) -> Result<Wisp> {
        std::fs::create_dir_all(home)?;
        let mut wisp = Wisp {
            bin: bin.to_path_buf(),
            home: home.to_path_buf(),
            store: None,
            env: Vec::new(),
            cli: false,
        };
        wisp.cli = bin.exists() && wisp.run(&["volume", "serve", "--help"]).is_ok();
        Ok(wisp)
    }

    /// How volumes are served, for report notes.
    pub fn mode(&self) -> &'static str {
        if self.cli {
            "`wisp volume serve`"
        } else {
            "in-process engine (no `wisp volume serve` in this build)"
        }
    }

    /// The store URL in force (the CLI's default is the folder store under the home).
    pub fn store_url(&self) -> Result<String> {
        match &self.store {
            Some(url) => Ok(url.clone()),
            None => {
                let dir = self.home.join("store");
                std::fs::create_dir_all(&dir)?;
                Ok(format!("file://{}", dir.canonicalize()?.display()))
            }
        }
    }

    /// The cache folder the in-process engine uses (`$WISP_HOME/cache`, like the CLI).
    pub fn cache_dir(&self) -> PathBuf {
        self.home.join("cache")
    }

    /// `wisp ARGS...` with this instance's environment.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("WISP_HOME", &self.home)
            .env_remove("WISP_STORE")
            .env_remove("WISP_CACHE_DIR")
            .env("RUST_LOG", "warn");
        if let Some(store) = &self.store {
            cmd.env("WISP_STORE", store);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts `wisp server` on a free loopback port with the `tiny` image, no background
    /// gc and `extra` flags, logging to `dir/server.log`; returns it once it answers,
    /// with a client of its API.
    pub fn server(
        &self,
        dir: &Path,
        extra: &[&str],
    ) -> Result<(Server, wisp_control::client::Client)> {
        let listen = format!("127.0.0.1:{}", wisp_testkit::free_port());
        let mut cmd = self.cmd(["server", "--listen", &listen, "--image", "tiny"]);
        cmd.args(["--gc-interval", "0"]).args(extra);
        let server = Server::spawn("wisp server", cmd, &dir.join("server.log"))?
            .owning_machines_of(&self.home);
        let client = engine::runtime().block_on(async {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                // The API wants the host token, written once the server is bound.
                let token = std::fs::read_to_string(self.home.join("token"))
                    .ok()
                    .map(|t| t.trim().to_string());
                let client = wisp_control::client::Client::new(&format!("http://{listen}"))
                    .with_token(token);
                if client.list("").await.is_ok() {
                    return anyhow::Ok(client);
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "wisp server did not answer on {listen} within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })?;
        Ok((server, client))
    }

    /// Runs `wisp ARGS...`, failing unless it exits 0; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        procs::run(&mut self.cmd(args))
    }

    /// Runs `wisp ARGS...` and returns how long the whole process took.
    pub fn timed(&self, args: &[&str]) -> Result<Duration> {
        Ok(procs::timed(&mut self.cmd(args))?.0)
    }

    /// Creates volume `name` of `size` bytes.
    pub fn create(&self, name: &str, size: u64) -> Result<()> {
        if self.cli {
            self.run(&["volume", "create", name, "--size", &crate::size_arg(size)])?;
            return Ok(());
        }
        let (url, cache) = (self.store_url()?, self.cache_dir());
        engine::runtime().block_on(async {
            let store = engine::open_store(&url, &cache, &self.env).await?;
            store.create_volume(name, size).await?;
            anyhow::Ok(())
        })
    }

    /// Serves `name` on a unix socket and waits until it listens: `wisp volume serve NAME
    /// --nbd unix:SOCKET`, or the engine in this process when the CLI has no `serve`.
    pub fn serve(&self, name: &str, socket: &Path) -> Result<Served> {
        let _ = std::fs::remove_file(socket);
        if !self.cli {
            let local = LocalServe::start(
                &self.store_url()?,
                &self.cache_dir(),
                &self.env,
                name,
                socket,
            )?;
            return Ok(Served::InProcess(local));
        }
        let log = self.home.join(format!("serve-{name}.log"));
        let listen = format!("unix:{}", socket.display());
        let mut server = Server::spawn(
            &format!("wisp volume serve {name}"),
            self.cmd(["volume", "serve", name, "--nbd", &listen]),
            &log,
        )?;
        server.wait_for_socket(socket, SERVE_TIMEOUT)?;
        Ok(Served::Process(server))
    }
}

/// The `wisp` binary next to this one (`target/release/wisp` for `make bench`); it may
/// not exist, in which case volume sections use the in-process engine.
pub fn default_binary() -> Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("wisp"))
}
