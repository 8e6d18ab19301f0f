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

/// The error of a filesystem call in sprite `name` about `path`: a failed
/// system call in the guest is [`ControlError::Fs`] with its errno (so its
/// status is the errno's), anything else the agent's failure. The agent names
/// the errno of most failures; one it reports only in words (a write that
/// failed half-way: `writing file: No space left on device (os error 28)`) is
/// named from the number in them.
pub(crate) fn fs_error<'a>(
    name: &'a str,
    path: &'a str,
) -> impl FnOnce(AgentError) -> ControlError + 'a {
    move |source| {
        let (errno, message) = match source {
            AgentError::Os { errno, message } => (errno, message),
            AgentError::Remote(message) => match os_errno(&message) {
                Some(errno) => (errno.to_string(), message),
                None => {
                    return ControlError::Exec {
                        name: name.to_string(),
                        source: AgentError::Remote(message),
                    }
                }
            },
            source => {
                return ControlError::Exec {
                    name: name.to_string(),
                    source,
                }
            }
        };
        ControlError::Fs {
            errno,
            message,
            path: path.to_string(),
        }
    }
}

/// The errno name of the `(os error N)` a Rust I/O error's text ends with, for
/// the errnos the API names (Linux numbers: the guest's).
fn os_errno(message: &str) -> Option<&'static str> {
    let number: i32 = message
        .rsplit_once("(os error ")?
        .1
        .strip_suffix(')')?
        .parse()
        .ok()?;
    Some(match number {
        1 => "EPERM",
        2 => "ENOENT",
        5 => "EIO",
        13 => "EACCES",
        16 => "EBUSY",
        17 => "EEXIST",
        18 => "EXDEV",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        28 => "ENOSPC",
        30 => "EROFS",
        36 => "ENAMETOOLONG",
        39 => "ENOTEMPTY",
        40 => "ELOOP",
        122 => "EDQUOT",
        _ => return None,
    })
}

/// A call that makes folders on its way (a write making missing parents, a
/// folder copied) answers `EEXIST` where one of them is a file: a path
/// component that is not a folder, which is `ENOTDIR` (what the kernel answers
/// when it walks such a path itself).
fn not_a_folder(error: ControlError, what: String) -> ControlError {
    match error {
        ControlError::Fs { errno, path, .. } if errno == "EEXIST" => ControlError::Fs {
            errno: "ENOTDIR".into(),
            message: format!("{what}: a component of the path is a file, not a folder"),
            path,
        },
        other => other,
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
            .map_err(|e| not_a_folder(e, format!("cannot write `{path}`")))
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
        let copy = match &op {
            FsOp::Copy { from, to, .. } => Some(format!("cannot copy `{from}` to `{to}`")),
            _ => None,
        };
        let activity = self.activity(name).await?;
        let done = activity.agent().fs(op).await.map_err(fs_error(name, path));
        match copy {
            Some(what) => done.map_err(|e| not_a_folder(e, what)),
            None => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_told_only_in_words_are_named() {
        let error =
            |message: &str| fs_error("box", "/root/x")(AgentError::Remote(message.to_string()));
        let full = error("writing file: No space left on device (os error 28)");
        assert!(
            matches!(&full, ControlError::Fs { errno, path, message }
                if errno == "ENOSPC" && path == "/root/x" && message.contains("No space left")),
            "{full:?}"
        );
        for (message, errno) in [
            ("x: Not a directory (os error 20)", "ENOTDIR"),
            ("x: Disk quota exceeded (os error 122)", "EDQUOT"),
        ] {
            assert!(
                matches!(error(message), ControlError::Fs { errno: e, .. } if e == errno),
                "{message}"
            );
        }
        for message in ["bad task name", "x (os error 9999)", "x (os error 28"] {
            assert!(
                matches!(error(message), ControlError::Exec { .. }),
                "{message}"
            );
        }
    }

    #[test]
    fn eexist_on_the_way_is_enotdir() {
        let fs = |errno: &str| ControlError::Fs {
            errno: errno.into(),
            message: "open `/root/f/c` for writing: File exists (os error 17)".into(),
            path: "/root/f/c".into(),
        };
        let turned = not_a_folder(fs("EEXIST"), "cannot write `/root/f/c`".into());
        assert!(
            matches!(&turned, ControlError::Fs { errno, path, message }
                if errno == "ENOTDIR" && path == "/root/f/c" && message.contains("not a folder")),
            "{turned:?}"
        );
        let kept = not_a_folder(fs("ENOSPC"), String::new());
        assert!(matches!(kept, ControlError::Fs { errno, .. } if errno == "ENOSPC"));
    }

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
