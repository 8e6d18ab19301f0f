//! A sprite's files, for the filesystem API: each call wakes the sprite and
//! runs in its guest through the agent. Reads and writes stream; nothing holds
//! a whole file.

use std::sync::Arc;

use tokio::io::AsyncRead;
use wisp_vm::agent::{AgentError, FileStream, FsEntry, FsOp, WriteOptions};

use crate::machines::Activity;
use crate::{ControlError, Sprites};

/// Makes `path` absolute against `working_dir` (`/` when absent) and drops
/// `.`, `..` and repeated slashes, as the kernel would resolve them without
/// symlinks. Errors name the bad parameter.
pub fn resolve(path: &str, working_dir: Option<&str>) -> Result<String, ControlError> {
    if path.is_empty() {
        return Err(ControlError::BadRequest("give a `path`".into()));
    }
    let base = working_dir.filter(|d| !d.is_empty()).unwrap_or("/");
    if !base.starts_with('/') {
        return Err(ControlError::BadRequest(format!(
            "bad `workingDir` `{base}`: it must be an absolute path"
        )));
    }
    if path.contains('\0') || base.contains('\0') {
        return Err(ControlError::BadRequest("a path has a NUL byte".into()));
    }
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// A file being read out of a sprite: the sprite stays awake while it lives.
pub struct Download {
    pub stream: FileStream,
    pub activity: Activity,
}

fn fs_error<'a>(name: &'a str, path: &'a str) -> impl FnOnce(AgentError) -> ControlError + 'a {
    move |source| match source {
        AgentError::Os { errno, message } => ControlError::Fs {
            errno,
            message,
            path: path.to_string(),
        },
        source => ControlError::Exec {
            name: name.to_string(),
            source,
        },
    }
}

impl Sprites {
    /// Opens `path` in sprite `name` for reading.
    pub async fn read_file(
        self: &Arc<Self>,
        name: &str,
        path: &str,
    ) -> Result<Download, ControlError> {
        let activity = self.activity(name).await?;
        let stream = activity
            .agent()
            .open_read(path)
            .await
            .map_err(fs_error(name, path))?;
        Ok(Download { stream, activity })
    }

    /// Writes `path` in sprite `name` from `reader`; returns the bytes written.
    pub async fn write_file(
        self: &Arc<Self>,
        name: &str,
        path: &str,
        options: WriteOptions,
        reader: impl AsyncRead + Unpin,
    ) -> Result<u64, ControlError> {
        let activity = self.activity(name).await?;
        activity
            .agent()
            .write_file_with(path, options, reader)
            .await
            .map_err(fs_error(name, path))
    }

    /// The entries of folder `path` in sprite `name` (see [`AgentClient::list`]).
    ///
    /// [`AgentClient::list`]: wisp_vm::agent::AgentClient::list
    pub async fn list_files(
        self: &Arc<Self>,
        name: &str,
        path: &str,
        recursive: bool,
        pattern: Option<&str>,
    ) -> Result<Vec<FsEntry>, ControlError> {
        let activity = self.activity(name).await?;
        activity
            .agent()
            .list(path, recursive, pattern)
            .await
            .map_err(fs_error(name, path))
    }

    /// Runs `op` in sprite `name`; `path` names it in errors.
    pub async fn file_op(
        self: &Arc<Self>,
        name: &str,
        path: &str,
        op: FsOp,
    ) -> Result<(), ControlError> {
        let activity = self.activity(name).await?;
        activity.agent().fs(op).await.map_err(fs_error(name, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_working_dir() {
        for (path, dir, want) in [
            ("a.txt", None, "/a.txt"),
            ("a.txt", Some("/app"), "/app/a.txt"),
            ("/etc/hosts", Some("/app"), "/etc/hosts"),
            ("../x//y/./z", Some("/app/src"), "/app/x/y/z"),
            ("../../..", Some("/a"), "/"),
        ] {
            assert_eq!(resolve(path, dir).unwrap(), want, "{path} in {dir:?}");
        }
        for (path, dir, names) in [
            ("", None, "give a `path`"),
            ("x", Some("rel"), "bad `workingDir` `rel`"),
        ] {
            let err = resolve(path, dir).unwrap_err().to_string();
            assert!(err.contains(names), "{err}");
        }
    }
}
