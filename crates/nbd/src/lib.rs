//! An NBD (network block device) server: the newstyle fixed handshake and the
//! transmission phase, serving any [`BlockDevice`] over unix sockets or TCP.
//!
//! The server knows nothing about volumes or object stores; the volume engine
//! implements [`BlockDevice`] and QEMU, fio, nbdinfo and qemu-io connect here.

use std::io;

use async_trait::async_trait;
use bytes::Bytes;

mod error;
mod file_device;
mod handshake;
mod listen;
pub mod protocol;
mod server;
mod transmission;

pub use error::NbdError;
pub use file_device::FileDevice;
pub use listen::Listen;
pub use server::{BoundServer, Server};

/// A block device the NBD server exports. Offsets and lengths are in bytes and
/// are checked against [`BlockDevice::size`] by the server before any call.
///
/// Errors are `std::io::Error`s; the server maps their kind to NBD error codes
/// (`InvalidInput` -> EINVAL, `StorageFull` -> ENOSPC, `PermissionDenied` ->
/// EPERM, anything else -> EIO).
#[async_trait]
pub trait BlockDevice: Send + Sync + 'static {
    /// Size of the device in bytes.
    fn size(&self) -> u64;
    /// Preferred I/O granularity in bytes (a power of two, at most 64 KiB).
    fn block_size(&self) -> u32 {
        4096
    }
    /// Whether the device refuses writes.
    fn read_only(&self) -> bool {
        false
    }
    /// Smallest unit the device accepts (a power of two, at most 64 KiB). The
    /// server advertises it and refuses requests not aligned to it with EINVAL;
    /// the default, 1, means any byte range works.
    fn min_block_size(&self) -> u32 {
        1
    }
    /// Whether a flush on one connection also makes writes completed on other
    /// connections durable (advertised as `NBD_FLAG_CAN_MULTI_CONN`).
    fn can_multi_conn(&self) -> bool {
        false
    }
    /// Reads `len` bytes at `offset`.
    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes>;
    /// Writes `data` at `offset`; with `fua` the data is durable when this returns.
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> io::Result<()>;
    /// Makes every write that completed before this call durable.
    async fn flush(&self) -> io::Result<()>;
    /// Tells the device the range is no longer needed; later reads return zeros.
    async fn trim(&self, offset: u64, len: u32) -> io::Result<()>;
    /// Writes zeros over the range; with `fua` durable when this returns.
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> io::Result<()>;
}
