//! The server: exports by name, listeners (unix socket, TCP), one task per
//! connection, and graceful shutdown that drains requests and flushes exports.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::handshake::{negotiate, Exports, Outcome};
use crate::{transmission, BlockDevice, Listen, NbdError};

const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An NBD server configuration: the exports it offers.
#[derive(Clone)]
pub struct Server {
    exports: Exports,
    handshake_timeout: Duration,
    drain_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with no exports.
    pub fn new() -> Self {
        Self {
            exports: Exports::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// Adds (or replaces) an export. The first export added is also served to
    /// clients asking for the empty name `""` (the default export), unless an
    /// export is explicitly named `""`.
    pub fn add_export(&mut self, name: &str, dev: Arc<dyn BlockDevice>) {
        self.exports.insert(name, dev);
    }

    /// How long a client may take to finish the handshake (default 30 s); a
    /// client that connects and says nothing must not hold a task forever.
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// How long shutdown waits for connections to finish their in-flight
    /// requests (default 30 s) before closing them anyway: a client that stops
    /// reading its replies must not hold shutdown forever.
    pub fn set_drain_timeout(&mut self, timeout: Duration) {
        self.drain_timeout = timeout;
    }

    /// Binds the listener. A unix socket path left behind by a dead server is
    /// replaced; one a live server answers on is an error.
    pub async fn bind(self, listen: &Listen) -> Result<BoundServer, NbdError> {
        let bind_err = |source| NbdError::Bind {
            addr: listen.to_string(),
            source,
        };
        let (listener, local) = match listen {
            Listen::Unix(path) => {
                remove_stale_socket(path).await?;
                let l = UnixListener::bind(path).map_err(bind_err)?;
                let file = file_id(path);
                (Listener::Unix(l, path.clone(), file), listen.clone())
            }
            Listen::Tcp(addr) => {
                let l = TcpListener::bind(addr).await.map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                (Listener::Tcp(l), Listen::Tcp(local))
            }
        };
        info!(listen = %local, "nbd server listening");
        Ok(BoundServer {
            server: self,
            listener,
            local,
        })
    }

    /// Serves one already-connected stream (handshake, then transmission) until
    /// the client disconnects.
    pub async fn serve_stream<S>(&self, stream: S) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        self.serve_split(r, w, CancellationToken::new()).await
    }

    async fn serve_split<R, W>(
        &self,
        mut r: R,
        mut w: W,
        cancel: CancellationToken,
    ) -> Result<(), NbdError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let outcome = tokio::select! {
            o = tokio::time::timeout(self.handshake_timeout, negotiate(&mut r, &mut w, &self.exports)) => {
                o.map_err(|_| NbdError::HandshakeTimeout { secs: self.handshake_timeout.as_secs() })??
            }
            _ = cancel.cancelled() => return Ok(()),
        };
        match outcome {
            Outcome::Closed => Ok(()),
            Outcome::Export { name, dev } => {
                debug!(export = %name, "nbd client entered transmission");
                transmission::serve(r, w, dev, cancel).await
            }
        }
    }

    async fn flush_exports(&self) {
        for (name, dev) in self.exports.devices() {
            if dev.read_only() {
                continue;
            }
            if let Err(e) = dev.flush().await {
                warn!(export = %name, error = %e, "nbd export flush at shutdown failed");
            }
        }
    }
}

enum Listener {
    /// The listener, its path and the socket file's `(device, inode)` as bound.
    Unix(UnixListener, PathBuf, Option<(u64, u64)>),
    Tcp(TcpListener),
}

/// `(device, inode)` of the file at `path`, if any.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A server bound to its listener, ready to serve.
pub struct BoundServer {
    server: Server,
    listener: Listener,
    local: Listen,
}

impl BoundServer {
    /// The address clients connect to (for TCP port 0, the port picked).
    pub fn local_addr(&self) -> &Listen {
        &self.local
    }

    /// Accepts and serves clients until `shutdown` completes; then stops
    /// accepting, lets every connection finish its in-flight requests, flushes
    /// each export, and removes the unix socket file (if it is still the one it
    /// bound).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), NbdError> {
        let server = Arc::new(self.server);
        let cancel = CancellationToken::new();
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = done {
                        warn!(error = %e, "nbd connection task panicked");
                    }
                }
                accepted = accept(&self.listener) => match accepted {
                    Ok((conn, peer)) => {
                        let server = server.clone();
                        let cancel = cancel.clone();
                        conns.spawn(async move {
                            let result = match conn {
                                Conn::Unix(s) => {
                                    set_send_buffer(&s);
                                    let (r, w) = s.into_split();
                                    server.serve_split(r, w, cancel).await
                                }
                                Conn::Tcp(s) => {
                                    // Replies are already batched; Nagle only adds latency.
                                    let _ = s.set_nodelay(true);
                                    set_send_buffer(&s);
                                    let (r, w) = s.into_split();
                                    server.serve_split(r, w, cancel).await
                                }
                            };
                            match result {
                                Ok(()) => debug!(%peer, "nbd client disconnected"),
                                Err(e) => warn!(%peer, error = %e, "nbd connection closed"),
                            }
                        });
                    }
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        warn!(error = %e, "nbd accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        // Only the socket file this server bound: a successor may already have
        // bound a new one at the same path (a machine started again at once).
        if let Listener::Unix(_, path, bound) = &self.listener {
            if bound.is_some() && file_id(path) == *bound {
                let _ = std::fs::remove_file(path);
            }
        }
        drop(self.listener);
        cancel.cancel();
        let drain = async {
            while let Some(done) = conns.join_next().await {
                if let Err(e) = done {
                    warn!(error = %e, "nbd connection task panicked");
                }
            }
        };
        if tokio::time::timeout(server.drain_timeout, drain)
            .await
            .is_err()
        {
            warn!(
                connections = conns.len(),
                "nbd clients did not finish in time at shutdown; closing them"
            );
            conns.shutdown().await;
        }
        server.flush_exports().await;
        info!(listen = %self.local, "nbd server stopped");
        Ok(())
    }
}

/// Asks for a send buffer that holds a whole large read reply, so a 1 MiB
/// reply goes out in one write instead of several partial writes each waiting
/// for the client to drain the socket. The kernel caps it (`wmem_max`).
fn set_send_buffer(s: &impl std::os::fd::AsRawFd) {
    let size: libc::c_int = 4 << 20;
    // SAFETY: a plain setsockopt on a socket fd we own, with a pointer to a
    // c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        debug!(error = %std::io::Error::last_os_error(), "cannot enlarge the socket send buffer");
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Conn, String)> {
    match l {
        Listener::Unix(l, path, _) => {
            let (s, _) = l.accept().await?;
            Ok((Conn::Unix(s), path.display().to_string()))
        }
        Listener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            Ok((Conn::Tcp(s), a.to_string()))
        }
    }
}

/// Removes a socket file no server answers on, so a crashed server's leftover
/// does not block a restart.
async fn remove_stale_socket(path: &Path) -> Result<(), NbdError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        // Binding fails with a clear "address in use"; never delete other files.
        return Ok(());
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(NbdError::SocketInUse {
            path: path.to_owned(),
        });
    }
    std::fs::remove_file(path).map_err(|source| NbdError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    })
}
