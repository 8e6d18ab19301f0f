//! A disk slot that shows one checkpoint of a volume to the guest, switchable
//! while the machine runs (`/.sprite/checkpoints/v<N>`, see
//! `docs/AGENT.md`). Reads come from the checkpoint (a
//! [`wisp_volume::CheckpointReader`], or zeros when the slot is empty). Writes
//! are kept in memory and dropped when the slot is switched: the guest mounts
//! the filesystem read-only, and ext4 writes only to replay the journal of a
//! checkpoint taken while the sprite ran.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use wisp_nbd::BlockDevice;
use wisp_volume::CheckpointReader;

/// Bytes of guest writes one slot keeps before answering ENOSPC: a journal
/// replay rewrites the blocks the journal holds (a few MiB after the `sync` a
/// live checkpoint starts with).
pub const OVERLAY_LIMIT: usize = 64 << 20;
const BLOCK: u64 = 4096;

/// One switchable checkpoint disk of `size` bytes.
pub struct CheckpointDisk {
    size: u64,
    state: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    checkpoint: Option<String>,
    source: Option<Arc<CheckpointReader>>,
    /// 4 KiB blocks the guest wrote, by block number.
    overlay: HashMap<u64, Bytes>,
}

impl CheckpointDisk {
    /// An empty slot (reads zeros) of `size` bytes: the sprite's disk size.
    pub fn new(size: u64) -> Arc<CheckpointDisk> {
        Arc::new(CheckpointDisk {
            size,
            state: Mutex::new(Slot::default()),
        })
    }

    /// Which checkpoint the slot shows (`v3`), if any.
    pub fn checkpoint(&self) -> Option<String> {
        self.lock().checkpoint.clone()
    }

    /// Shows `checkpoint` read through `source` (or nothing), dropping what
    /// the guest wrote. The guest must have unmounted the slot first.
    pub fn set(&self, shown: Option<(String, CheckpointReader)>) {
        let mut slot = self.lock();
        slot.overlay.clear();
        match shown {
            Some((name, reader)) => {
                slot.checkpoint = Some(name);
                slot.source = Some(Arc::new(reader));
            }
            None => {
                slot.checkpoint = None;
                slot.source = None;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl BlockDevice for CheckpointDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn min_block_size(&self) -> u32 {
        BLOCK as u32
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        let (source, overlay) = {
            let slot = self.lock();
            let first = offset / BLOCK;
            let last = (offset + len as u64).div_ceil(BLOCK);
            let written: Vec<(u64, Bytes)> = (first..last)
                .filter_map(|b| slot.overlay.get(&b).map(|d| (b, d.clone())))
                .collect();
            (slot.source.clone(), written)
        };
        let mut out = BytesMut::zeroed(len as usize);
        if let Some(source) = source {
            let end = (offset + len as u64).min(source.size());
            if end > offset {
                source
                    .read_at(offset, &mut out[..(end - offset) as usize])
                    .await
                    .map_err(io::Error::other)?;
            }
        }
        for (b, data) in overlay {
            let at = (b * BLOCK - offset) as usize;
            out[at..at + BLOCK as usize].copy_from_slice(&data);
        }
        Ok(out.freeze())
    }

    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> io::Result<()> {
        let mut slot = self.lock();
        let added = data.len() / BLOCK as usize;
        if (slot.overlay.len() + added) * BLOCK as usize > OVERLAY_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "a checkpoint disk keeps at most 64 MiB of writes",
            ));
        }
        for (i, piece) in data.chunks(BLOCK as usize).enumerate() {
            slot.overlay
                .insert(offset / BLOCK + i as u64, Bytes::copy_from_slice(piece));
        }
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    async fn trim(&self, _offset: u64, _len: u32) -> io::Result<()> {
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        self.write(offset, Bytes::from(vec![0u8; len as usize]), fua)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_slot_reads_zeros_and_keeps_writes_until_switched() {
        let disk = CheckpointDisk::new(1 << 20);
        assert!(disk.read(0, 8192).await.unwrap().iter().all(|b| *b == 0));
        disk.write(4096, Bytes::from(vec![7u8; 4096]), false)
            .await
            .unwrap();
        let got = disk.read(0, 12288).await.unwrap();
        assert!(got[..4096].iter().all(|b| *b == 0));
        assert!(got[4096..8192].iter().all(|b| *b == 7));
        disk.set(None);
        assert!(disk.read(4096, 4096).await.unwrap().iter().all(|b| *b == 0));
        let big = Bytes::from(vec![1u8; OVERLAY_LIMIT + 4096]);
        let err = disk.write(0, big, false).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }
}
