//! One writer per volume: an flock on a local lock file (same host) plus a
//! lease object in the bucket naming the holder (other hosts). Without
//! conditional writes the lease object is a guard against mistakes, not a
//! consensus protocol: across hosts the control plane's registry decides who
//! runs a volume (see docs/STORAGE.md).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::VolumeError;
use crate::meta::now;
use crate::retrying_store::Blobs;

/// How long a lease lasts without renewal; renewed every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub host: String,
    pub pid: u32,
    pub token: String,
    /// Seconds since the Unix epoch.
    pub expires: u64,
}

pub fn lease_key(volume_id: &str) -> String {
    format!("volumes/{volume_id}/lease")
}

/// This host's name (used in leases and errors).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it on success.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// RFC 3339 form of seconds since the Unix epoch.
pub fn format_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

impl Lease {
    /// Whether this lease still keeps others out.
    pub fn blocks(&self, me: &str) -> bool {
        if self.expires <= now() {
            return false;
        }
        if self.host == me && !pid_alive(self.pid) {
            // A crashed process on this host: its flock is gone too.
            return false;
        }
        !(self.host == me && self.pid == std::process::id())
    }

    /// Whether a writer (any process, this one included) still holds it.
    pub fn is_live(&self, me: &str) -> bool {
        // A crashed process on this host holds nothing (its flock is gone too).
        self.expires > now() && (self.host != me || pid_alive(self.pid))
    }

    pub fn in_use_error(&self, name: &str) -> VolumeError {
        VolumeError::InUse {
            name: name.to_string(),
            host: self.host.clone(),
            pid: self.pid,
            until: format_time(self.expires),
        }
    }
}

pub async fn read_lease(blobs: &Blobs, volume_id: &str) -> Result<Option<Lease>, VolumeError> {
    let Some(bytes) = blobs.get_opt(&lease_key(volume_id)).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&bytes).ok())
}

pub async fn write_lease(
    blobs: &Blobs,
    volume_id: &str,
    host: &str,
    token: &str,
) -> Result<(), VolumeError> {
    let lease = Lease {
        host: host.to_string(),
        pid: std::process::id(),
        token: token.to_string(),
        expires: now() + LEASE_TTL.as_secs(),
    };
    let body = serde_json::to_vec(&lease).unwrap_or_default();
    blobs.put(&lease_key(volume_id), body.into()).await
}

/// Takes the local flock of a volume's cache folder; `Ok(None)` if another
/// process holds it.
pub fn try_lock(path: &Path) -> Result<Option<File>, VolumeError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| VolumeError::io(path.display(), e))?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(Some(file))
    } else {
        Ok(None)
    }
}
