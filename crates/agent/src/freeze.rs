//! Filesystem freeze around the host's snapshots (`freeze` / `thaw`): what a live
//! checkpoint, a fork of a running sprite or a warm sleep captures of the disk is
//! a state the guest's filesystems could have been in, with every write that a
//! program finished before it. `FIFREEZE` writes each filesystem's dirty pages and
//! its journal, then holds new writes until `FITHAW`, as QEMU's guest agent does
//! for `guest-fsfreeze-freeze`.
//!
//! A freeze the host never ends (it died mid-checkpoint) ends by itself after the
//! timeout the host gave, counted in the guest's running time, so a machine saved
//! frozen and resumed is thawed at the latest that long after the resume.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `_IOWR('X', 119, int)`: freeze a filesystem (see `ioctl_fsfreeze`).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
/// `_IOWR('X', 120, int)`: thaw it.
const FITHAW: libc::c_ulong = 0xC004_5878;
/// Filesystems that take `FIFREEZE` and live on a disk the host snapshots.
const FREEZABLE: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs", "f2fs"];

/// The frozen filesystems, thawed in the reverse order.
#[derive(Default)]
pub struct Freezer {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    frozen: Vec<(String, File)>,
    /// Counts freezes, so a timer thaws only the freeze that started it.
    generation: u64,
}

impl Freezer {
    /// Freezes every writable disk filesystem (only as PID 1: in channel mode the
    /// agent runs on a host whose filesystems are not the sprite's). Returns the
    /// mount points frozen. A filesystem already frozen by someone else is left out.
    /// `timeout`: when the freeze ends by itself if [`Freezer::thaw`] has not come.
    pub fn freeze(self: &Arc<Self>, timeout: Duration) -> io::Result<Vec<String>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.frozen.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the filesystems are frozen already (a freeze is in progress)",
            ));
        }
        if std::process::id() != 1 {
            return Ok(Vec::new());
        }
        let mut seen = Vec::new();
        for mount_point in freezable_mounts()? {
            let Ok(dir) = File::open(&mount_point) else {
                continue;
            };
            let Ok(meta) = dir.metadata() else { continue };
            if seen.contains(&meta.dev()) {
                continue;
            }
            seen.push(meta.dev());
            // SAFETY: FIFREEZE takes no argument memory; `dir` is an open descriptor.
            if unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE, 0) } != 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // Frozen by someone else, or a filesystem without freeze support.
                    Some(libc::EBUSY) | Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) => continue,
                    _ => {
                        thaw_all(&mut state.frozen);
                        return Err(io::Error::new(
                            e.kind(),
                            format!("cannot freeze `{mount_point}`: {e}"),
                        ));
                    }
                }
            }
            state.frozen.push((mount_point, dir));
        }
        state.generation += 1;
        let generation = state.generation;
        let names = state.frozen.iter().map(|(m, _)| m.clone()).collect();
        drop(state);
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("thaw-timer".into())
            .spawn(move || {
                std::thread::sleep(timeout);
                let mut state = me.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.generation == generation && !state.frozen.is_empty() {
                    thaw_all(&mut state.frozen);
                    crate::init::log("the host did not end a filesystem freeze in time: thawed");
                }
            });
        Ok(names)
    }

    /// Thaws what [`Freezer::freeze`] froze; whether nothing was frozen any more
    /// (the timeout had thawed it, or no freeze came).
    pub fn thaw(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let early = state.frozen.is_empty();
        thaw_all(&mut state.frozen);
        early
    }
}

fn thaw_all(frozen: &mut Vec<(String, File)>) {
    while let Some((mount_point, dir)) = frozen.pop() {
        // SAFETY: as for FIFREEZE.
        if unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW, 0) } != 0 {
            let e = io::Error::last_os_error();
            crate::init::log(&format!("cannot thaw `{mount_point}`: {e}"));
        }
    }
}

/// Mount points of writable filesystems of a [`FREEZABLE`] type, in mount order.
fn freezable_mounts() -> io::Result<Vec<String>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    Ok(parse_mounts(&mounts))
}

fn parse_mounts(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, mount_point, fstype, options) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            let writable = options.split(',').any(|o| o == "rw");
            (writable && FREEZABLE.contains(&fstype)).then(|| unescape(mount_point))
        })
        .collect()
}

/// `/proc/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writable_disk_filesystems_are_frozen() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\n\
            proc /proc proc rw,nosuid 0 0\n\
            tmpfs /.sprite/checkpoints tmpfs rw,nosuid 0 0\n\
            /dev/vdb /.sprite/checkpoints/v3 ext4 ro,relatime 0 0\n\
            /dev/vdc /mnt/my\\040data xfs rw 0 0\n";
        assert_eq!(parse_mounts(mounts), ["/", "/mnt/my data"]);
    }

    #[test]
    fn a_trailing_backslash_is_kept() {
        assert_eq!(unescape("a\\"), "a\\");
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("\\134x"), "\\x");
    }
}
