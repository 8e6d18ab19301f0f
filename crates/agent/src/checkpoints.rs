//! `/.sprite/checkpoints/v<N>`: the host attaches copies of the sprite's latest
//! checkpoints as extra virtio disks (each named by its serial, `wisp-cpK`) and
//! asks the agent to mount them read-only there. The folder is a tmpfs the agent
//! mounts at boot, so the mount points never touch the sprite's own disk.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::sys::{cstring, cvt, mount as mount_fs};

/// Where checkpoints are mounted in the guest.
pub const ROOT: &str = "/.sprite/checkpoints";

/// `_IO(0x12, 97)`: drop the block device's cached pages, so a disk the host
/// switched to another checkpoint is read afresh.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Mounts a tmpfs at [`ROOT`] (at boot; a failure is logged, not fatal).
pub fn prepare() {
    let run = || -> io::Result<()> {
        std::fs::create_dir_all(ROOT)?;
        mount_fs(
            "tmpfs",
            ROOT,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        )
    };
    if let Err(e) = run() {
        crate::init::log(&format!("cannot mount a tmpfs on {ROOT}: {e}"));
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn target(name: &str) -> io::Result<PathBuf> {
    let ok = name.len() > 1
        && name.len() <= 21
        && name.starts_with('v')
        && name[1..].bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(invalid(format!("bad checkpoint name `{name}`")));
    }
    Ok(Path::new(ROOT).join(name))
}

/// `/dev/vdX` whose `/sys/block/vdX/serial` is `serial`.
fn device_with_serial(serial: &str) -> io::Result<PathBuf> {
    if serial.is_empty()
        || !serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(invalid(format!("bad disk serial `{serial}`")));
    }
    for entry in std::fs::read_dir("/sys/block")?.flatten() {
        let found = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim() == serial {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no disk with serial `{serial}`"),
    ))
}

/// Runs `op` (a mount or an unmount) on a thread of its own and answers
/// session `session` with `ok` or the error.
pub fn start(
    agent: &std::sync::Arc<crate::server::Agent>,
    session: u32,
    op: impl FnOnce() -> Result<(), (String, io::Error)> + Send + 'static,
) -> io::Result<()> {
    let agent = agent.clone();
    std::thread::Builder::new()
        .name(format!("checkpoint-{session}"))
        .spawn(move || match op() {
            Ok(()) => agent.out.control(session, &wisp_proto::Control::Ok),
            Err((context, e)) => agent.out.error_io(session, &context, &e),
        })?;
    Ok(())
}

/// Mounts the disk with `serial` read-only at `ROOT/name`.
pub fn mount(serial: &str, name: &str) -> io::Result<()> {
    let target = target(name)?;
    let dev = device_with_serial(serial)?;
    if std::fs::read_to_string("/proc/self/mounts")?
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(target.to_str().unwrap_or_default()))
    {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    {
        let f = std::fs::File::open(&dev)?;
        // SAFETY: BLKFLSBUF takes no argument beyond the descriptor.
        cvt(unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _, 0) })?;
    }
    std::fs::create_dir_all(&target)?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // The disk is writable (the host keeps writes in memory) so that ext4 can
    // replay the journal of a checkpoint taken while the sprite ran.
    let mounted = mount_fs(
        dev.to_str().unwrap_or_default(),
        target.to_str().unwrap_or_default(),
        "ext4",
        flags,
        "",
    );
    if mounted.is_err() {
        let _ = std::fs::remove_dir(&target);
    }
    mounted
}

/// Unmounts `ROOT/name` (EBUSY while in use) and removes the mount point.
pub fn unmount(name: &str) -> io::Result<()> {
    let target = target(name)?;
    let t = cstring(target.to_str().unwrap_or_default())?;
    // SAFETY: `t` is a valid C string.
    cvt(unsafe { libc::umount2(t.as_ptr(), 0) })?;
    let _ = std::fs::remove_dir(&target);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_serials_are_checked() {
        assert_eq!(
            target("v12").unwrap(),
            Path::new("/.sprite/checkpoints/v12")
        );
        for bad in ["", "v", "x1", "v1/..", "v-1", "../v1"] {
            assert!(target(bad).is_err(), "{bad}");
        }
        assert!(device_with_serial("a/b").is_err());
        assert!(device_with_serial("").is_err());
    }
}
