//! The crate's error type: what can go wrong binding, accepting and serving.

use std::io;
use std::path::PathBuf;

/// Errors from the NBD server. Per-connection protocol errors close only that
/// connection; the server logs them and keeps serving others.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// A listen address string could not be parsed.
    #[error("invalid listen address `{input}`: {reason}")]
    ListenAddress { input: String, reason: &'static str },
    /// Binding the listener failed.
    #[error("cannot listen on `{addr}`")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// A live server already answers on this unix socket.
    #[error("unix socket `{}` is already in use by a running server", path.display())]
    SocketInUse { path: PathBuf },
    /// The client sent a message with the wrong magic: the stream is out of sync.
    #[error("client sent bad magic {magic:#x}")]
    BadMagic { magic: u64 },
    /// The client sent handshake flags the server does not know.
    #[error("client sent unknown handshake flags {flags:#x}")]
    ClientFlags { flags: u32 },
    /// An option's payload is larger than the server accepts.
    #[error("client option {option} carries {length} bytes, more than the limit {limit}")]
    OptionTooLarge {
        option: u32,
        length: u32,
        limit: u32,
    },
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist (the spec
    /// leaves closing the connection as the only answer).
    #[error("client asked for unknown export `{name}`")]
    UnknownExport { name: String },
    /// A write request's payload is larger than the server accepts; it cannot
    /// be skipped cheaply, so the connection is closed.
    #[error("client sent a write of {length} bytes, more than the limit {limit}")]
    RequestTooLarge { length: u32, limit: u32 },
    /// The handshake did not finish in time.
    #[error("client did not finish the handshake within {secs} s")]
    HandshakeTimeout { secs: u64 },
    /// Reading from or writing to the connection failed.
    #[error("connection i/o failed")]
    Io(#[from] io::Error),
}
