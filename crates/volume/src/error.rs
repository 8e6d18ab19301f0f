//! The volume engine's error type: one enum, lowercase messages naming the thing.

use std::time::Duration;

/// Everything that can go wrong in the volume engine.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The store URL could not be parsed or is of an unknown kind.
    #[error("invalid store url `{url}`: {reason}")]
    InvalidStoreUrl { url: String, reason: String },
    /// A volume name is empty or contains characters other than `[A-Za-z0-9._-]`.
    #[error("invalid volume name `{0}`: use 1-64 characters from A-Z a-z 0-9 . _ -")]
    InvalidName(String),
    /// A size is zero, too large, or not a multiple of 4096.
    #[error("invalid volume size {0}: must be a non-zero multiple of 4096 bytes, at most 16 TiB")]
    InvalidSize(u64),
    #[error("volume `{0}` does not exist")]
    NotFound(String),
    #[error("volume `{0}` already exists")]
    AlreadyExists(String),
    #[error("volume `{name}` is in use by host `{host}` (pid {pid}) until {until}")]
    InUse {
        name: String,
        host: String,
        pid: u32,
        until: String,
    },
    #[error("checkpoint `{checkpoint}` of volume `{volume}` does not exist")]
    CheckpointNotFound { volume: String, checkpoint: String },
    #[error("volume `{name}` cannot be deleted: {reason}")]
    DeleteRefused { name: String, reason: String },
    /// [`crate::Volume::delete_checkpoint`] of a checkpoint something still
    /// stands on.
    #[error("checkpoint `{checkpoint}` of volume `{volume}` is still needed: {dependant}")]
    CheckpointInUse {
        volume: String,
        checkpoint: String,
        dependant: crate::Dependant,
    },
    /// The object store failed for longer than the configured timeout.
    #[error("object store unavailable for {after:?} while {action} `{key}`: {source}")]
    StoreUnavailable {
        action: &'static str,
        key: String,
        after: Duration,
        #[source]
        source: Box<object_store::Error>,
    },
    /// The object store refused a request in a way retrying cannot fix.
    #[error("object store error while {action} `{key}`: {source}")]
    Store {
        action: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("corrupt extent in object `{key}` at offset {offset}: {reason}")]
    Corrupt {
        key: String,
        offset: u64,
        reason: String,
    },
    #[error("bad metadata in `{key}`: {reason}")]
    BadMetadata { key: String, reason: String },
    /// A volume's metadata changed under every attempt to read it: its writer
    /// replaced what was listed (shipped a snapshot, deleted the logs) before
    /// the reader had read it, again and again.
    #[error(
        "metadata under `{prefix}` kept changing while being read ({attempts} attempts): {reason}"
    )]
    MetadataUnsettled {
        prefix: String,
        attempts: u32,
        reason: String,
    },
    #[error("unsupported store format version {found} in `format.json` (this build reads version {supported})")]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("metadata database `{path}`: {source}")]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("local i/o on `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("volume `{0}` is closed")]
    Closed(String),
    #[error("write buffer of volume `{volume}` is full ({dirty} bytes not yet uploaded, limit {limit}) and no upload finished for {waited:?}")]
    WriteBufferFull {
        volume: String,
        dirty: u64,
        limit: u64,
        waited: std::time::Duration,
    },
}

impl VolumeError {
    /// Whether this is the store saying the object does not exist.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, VolumeError::Store { source, .. }
            if matches!(**source, object_store::Error::NotFound { .. }))
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        VolumeError::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// Converts an engine error into the `io::Error` the NBD layer wants, keeping
/// the message (which names the object or file at fault) and, for local i/o
/// errors, the kind (so `ENOSPC` stays `ENOSPC`).
pub(crate) fn to_io(err: VolumeError) -> std::io::Error {
    let kind = match &err {
        VolumeError::Io { source, .. } => source.kind(),
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, err.to_string())
}
