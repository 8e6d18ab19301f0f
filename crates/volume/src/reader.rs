//! Reading a checkpoint's bytes without opening its volume (no lease: a
//! checkpoint never changes), for tools that look inside a disk on the host
//! (`wisp sprite diff`).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use crate::error::VolumeError;
use crate::meta::FLAG_ZERO;
use crate::store::{Extent, Store};

/// Chunks kept in memory by one reader (256 KiB each: 16 MiB).
const CACHED_CHUNKS: usize = 64;

/// Random-access reads of one checkpoint of a volume, fetched from the bucket
/// (each extent's checksum verified) with a small in-memory cache of recently
/// read chunks. Made by [`Store::checkpoint_reader`].
pub struct CheckpointReader {
    store: Store,
    map: HashMap<u64, Extent>,
    size: u64,
    chunk: u64,
    cache: Mutex<VecDeque<(u64, Bytes)>>,
}

impl Store {
    /// A reader of `name`@`checkpoint`. Errors: unknown volume or checkpoint,
    /// store and metadata errors.
    pub async fn checkpoint_reader(
        &self,
        name: &str,
        checkpoint: &str,
    ) -> Result<CheckpointReader, VolumeError> {
        let (info, map) = self.checkpoint_map(name, checkpoint).await?;
        Ok(CheckpointReader {
            store: self.clone(),
            map,
            size: info.size,
            chunk: info.chunk_size,
            cache: Mutex::new(VecDeque::new()),
        })
    }
}

impl CheckpointReader {
    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Byte ranges (chunk granularity, merged) that differ between checkpoint
    /// `older` (of the same volume) and this one: what [`crate::Volume::diff`]
    /// answers, from the maps both readers already hold.
    pub fn changed_since(&self, older: &CheckpointReader) -> Vec<Range<u64>> {
        crate::store::diff_maps(&older.map, &self.map, &[], self.chunk, self.size)
    }

    pub(crate) fn map(&self) -> &HashMap<u64, Extent> {
        &self.map
    }

    /// Fills `buf` with the bytes at `offset`. Errors: a range past the end,
    /// corrupt or missing data (naming the object), store errors.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                VolumeError::io(
                    "checkpoint reader",
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "read of {} bytes at {offset} is past the end ({} bytes)",
                            buf.len(),
                            self.size
                        ),
                    ),
                )
            })?;
        let mut pos = offset;
        while pos < end {
            let c = pos / self.chunk;
            let within = (pos % self.chunk) as usize;
            let n = ((self.chunk - within as u64).min(end - pos)) as usize;
            let out = &mut buf[(pos - offset) as usize..][..n];
            let data = self.chunk_data(c).await?;
            match data {
                Some(d) => {
                    let have = d.len().saturating_sub(within).min(n);
                    out[..have].copy_from_slice(&d[within..within + have]);
                    out[have..].fill(0);
                }
                None => out.fill(0),
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Chunk `c`'s bytes, `None` for a chunk that reads as zeros.
    async fn chunk_data(&self, c: u64) -> Result<Option<Bytes>, VolumeError> {
        let Some(ext) = self.map.get(&c).filter(|e| e.flags & FLAG_ZERO == 0) else {
            return Ok(None);
        };
        if let Some((_, d)) = self.lock()?.iter().find(|(k, _)| *k == c) {
            return Ok(Some(d.clone()));
        }
        let data = self.store.fetch_extent(ext).await?;
        let mut cache = self.lock()?;
        if cache.len() >= CACHED_CHUNKS {
            cache.pop_front();
        }
        cache.push_back((c, data.clone()));
        Ok(Some(data))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, VecDeque<(u64, Bytes)>>, VolumeError> {
        self.cache.lock().map_err(|_| crate::meta::poisoned())
    }
}
