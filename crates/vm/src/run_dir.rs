//! A machine's run folder (`$WISP_HOME/run/<name>/`), and names for the unix
//! sockets in it that fit `sun_path` wherever the folder is.
//!
//! A unix socket's path must fit 107 bytes, and `$WISP_HOME/run/sprite-<uuid>/agent.sock`
//! passes that as soon as `$WISP_HOME` sits a few folders deep (a CI checkout did).
//! So the folder is held open and this process names its sockets through
//! `/proc/self/fd/<fd>/<name>`, which the kernel resolves like the folder itself
//! (conmon does the same for its attach socket); QEMU runs with the folder as its
//! working directory and is given the bare names.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// An open run folder.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Keeps the fd behind [`RunDir::socket`] paths valid.
    handle: File,
}

impl RunDir {
    /// Creates the folder if missing and opens it.
    pub fn create(path: &Path) -> std::io::Result<RunDir> {
        std::fs::create_dir_all(path)?;
        let handle = File::open(path)?;
        Ok(RunDir {
            path: path.to_path_buf(),
            handle,
        })
    }

    /// The folder's real path (for logs, messages and removing files).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the folder by its real path.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// `name` inside the folder as this process can bind or connect to it, however
    /// long the folder's path: valid while this `RunDir` lives.
    pub fn socket(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.handle.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_bind_and_connect_in_a_folder_deeper_than_sun_path() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(120)).join("sprite-folder");
        let run = RunDir::create(&deep).unwrap();
        assert!(run.join("agent.sock").as_os_str().len() > 107);
        // Binding by the real path is what failed.
        assert!(std::os::unix::net::UnixListener::bind(run.join("agent.sock")).is_err());

        let listener = std::os::unix::net::UnixListener::bind(run.socket("agent.sock")).unwrap();
        assert!(
            deep.join("agent.sock").exists(),
            "the socket is in the folder"
        );
        let _client = std::os::unix::net::UnixStream::connect(run.socket("agent.sock")).unwrap();
        listener.accept().unwrap();
    }
}
