//! Drives the `wisp` binary under test: one `$WISP_HOME` (a "host") and one store per
//! instance, so a fresh instance on the same store is a host with an empty cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

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
}

impl Wisp {
    pub fn new(bin: &Path, home: &Path) -> Result<Wisp> {
        std::fs::create_dir_all(home)?;
        Ok(Wisp {
            bin: bin.to_path_buf(),
            home: home.to_path_buf(),
            store: None,
            env: Vec::new(),
        })
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
            .env("RUST_LOG", "warn");
        if let Some(store) = &self.store {
            cmd.env("WISP_STORE", store);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `wisp ARGS...`, failing unless it exits 0; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        procs::run(&mut self.cmd(args))
    }

    /// Runs `wisp ARGS...` and returns how long the whole process took.
    pub fn timed(&self, args: &[&str]) -> Result<Duration> {
        Ok(procs::timed(&mut self.cmd(args))?.0)
    }

    pub fn create(&self, name: &str, size: &str) -> Result<()> {
        self.run(&["volume", "create", name, "--size", size])?;
        Ok(())
    }

    /// Starts `wisp volume serve NAME --nbd unix:SOCKET` and waits until it listens.
    pub fn serve(&self, name: &str, socket: &Path) -> Result<Server> {
        let _ = std::fs::remove_file(socket);
        let log = self.home.join(format!("serve-{name}.log"));
        let listen = format!("unix:{}", socket.display());
        let mut server = Server::spawn(
            &format!("wisp volume serve {name}"),
            self.cmd(["volume", "serve", name, "--nbd", &listen]),
            &log,
        )?;
        server.wait_for_socket(socket, SERVE_TIMEOUT)?;
        Ok(server)
    }
}

/// The `wisp` binary next to this one (`target/release/wisp` for `make bench`).
pub fn default_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let candidate = me.with_file_name("wisp");
    if !candidate.exists() {
        bail!(
            "no wisp binary at `{}`; build it with `cargo build --release -p wisp-cli` or pass --wisp",
            candidate.display()
        );
    }
    Ok(candidate)
}
