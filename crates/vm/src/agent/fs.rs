//! The agent client's filesystem calls (capability `fs`): streamed reads and
//! writes with options, listings, and the one-answer operations of [`FsOp`].

use tokio::io::AsyncRead;
use wisp_proto::{Control, FsEntry, FsOp};

use super::{expect_ok, remote, unexpected, AgentClient, AgentError, Event};

/// Largest listing the client accepts, in bytes of JSON (about 200,000 entries).
pub const MAX_LISTING: u64 = 64 << 20;

/// How [`AgentClient::write_file_with`] writes.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Permission bits of a new file.
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Create missing parent folders; without, only a missing immediate parent is made.
    pub mkdir_parents: bool,
    /// An existing file keeps its mode and owner.
    pub keep_existing: bool,
}

/// A file being read from the guest, chunk by chunk ([`AgentClient::open_read`]).
pub struct FileStream {
    session: super::Session,
    /// The file's size when it was opened, in bytes.
    pub size: u64,
    /// Its permission bits.
    pub mode: u32,
    got: u64,
    done: bool,
}

impl FileStream {
    /// The next chunk, or `None` at the end (after the agent confirmed the byte count).
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.session.next().await? {
                Event::Data(d) => {
                    self.got += d.len() as u64;
                    self.session.inner.grant(self.session.id, d.len()).await;
                    return Ok(Some(d));
                }
                Event::Eof => {}
                Event::Control(Control::Done { bytes }) => {
                    self.done = true;
                    self.session.finished = true;
                    if bytes != self.got {
                        return Err(AgentError::Protocol(format!(
                            "agent reported `{bytes}` bytes but sent `{}`",
                            self.got
                        )));
                    }
                    return Ok(None);
                }
                Event::Control(Control::Error { message, errno }) => {
                    self.session.finished = true;
                    return Err(remote(message, errno));
                }
                Event::Control(other) => return Err(unexpected(&other)),
                Event::Stderr(_) => {
                    return Err(AgentError::Protocol("stderr frame in a file read".into()))
                }
                Event::Closed(e) => return Err(e),
            }
        }
    }
}

impl AgentClient {
    /// Opens `path` in the guest for reading: returns once the agent has it open
    /// (a missing file is an [`AgentError::Os`] `ENOENT` now), then streams it.
    pub async fn open_read(&self, path: &str) -> Result<FileStream, AgentError> {
        self.open_stream(&Control::FileRead {
            path: path.to_string(),
        })
        .await
    }

    pub(super) async fn open_stream(&self, request: &Control) -> Result<FileStream, AgentError> {
        let mut session = self.open();
        self.inner.send_control(session.id, request).await?;
        match session.next_control().await? {
            Control::FileInfo { size, mode } => Ok(FileStream {
                session,
                size,
                mode,
                got: 0,
                done: false,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes a file of any size from `reader`, streamed, as `options` say; replaces
    /// `path` atomically when complete. Returns the number of bytes written.
    pub async fn write_file_with<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        options: WriteOptions,
        reader: R,
    ) -> Result<u64, AgentError> {
        self.write_stream(
            Control::FileWrite {
                path: path.to_string(),
                mode: options.mode,
                uid: options.uid,
                gid: options.gid,
                mkdir_parents: options.mkdir_parents,
                keep_existing: options.keep_existing,
            },
            reader,
        )
        .await
    }

    /// The entries of folder `path` (everything below it with `recursive`), or the one
    /// entry of a file; `pattern` is a shell glob on entry names.
    pub async fn list(
        &self,
        path: &str,
        recursive: bool,
        pattern: Option<&str>,
    ) -> Result<Vec<FsEntry>, AgentError> {
        let mut stream = self
            .open_stream(&Control::Fs(FsOp::List {
                path: path.to_string(),
                recursive,
                pattern: pattern.map(str::to_string),
            }))
            .await?;
        if stream.size > MAX_LISTING {
            return Err(AgentError::Remote(format!(
                "the listing of `{path}` is {} bytes, more than the {MAX_LISTING} a listing may be; \
                 list a folder further down",
                stream.size
            )));
        }
        let mut json = Vec::with_capacity(stream.size as usize);
        while let Some(chunk) = stream.chunk().await? {
            json.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&json)
            .map_err(|e| AgentError::Protocol(format!("bad listing of `{path}`: {e}")))
    }

    /// Runs a filesystem operation that answers `ok` (delete, rename, copy, chmod,
    /// chown; a `list` goes through [`AgentClient::list`]).
    pub async fn fs(&self, op: FsOp) -> Result<(), AgentError> {
        expect_ok(self.request(&Control::Fs(op)).await?)
    }
}

/// Changes to watched files ([`AgentClient::watch_files`]); dropping it stops the watch.
pub struct FileWatch {
    session: super::Session,
}

impl FileWatch {
    /// The next batch of changes.
    pub async fn next(&mut self) -> Result<Vec<wisp_proto::FileEvent>, AgentError> {
        match self.session.next_control().await? {
            Control::FileEvents { events } => Ok(events),
            other => Err(unexpected(&other)),
        }
    }
}

impl AgentClient {
    /// Watches `paths` (absolute; everything below them with `recursive`); returns
    /// once they are all watched (a missing one is [`AgentError::Os`] `ENOENT`).
    pub async fn watch_files(
        &self,
        paths: Vec<String>,
        recursive: bool,
    ) -> Result<FileWatch, AgentError> {
        let mut session = self.open();
        self.inner
            .send_control(session.id, &Control::WatchFiles { paths, recursive })
            .await?;
        expect_ok(session.next_control().await?)?;
        Ok(FileWatch { session })
    }
}
