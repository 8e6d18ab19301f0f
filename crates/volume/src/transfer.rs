//! Streaming a raw image file into a volume and a volume (or one of its
//! checkpoints) out to a raw file, with a progress callback.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;

use crate::error::VolumeError;
use crate::store::Store;
use crate::volume::Volume;

/// Progress callback: `(bytes done, bytes total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Dirty data allowed to pile up during an import before it is uploaded.
const IMPORT_SYNC_EVERY: u64 = 256 << 20;

impl Volume {
    /// Copies the raw image `path` into the volume from offset 0. All-zero
    /// chunks of the file are skipped where the volume has no data, so they
    /// stay unmapped. Uploads as it goes; ends with a sync.
    pub async fn import_file(
        &self,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, VolumeError> {
        let ioerr = |e| VolumeError::io(path.display(), e);
        let mut file = File::open(path).map_err(ioerr)?;
        let len = file.metadata().map_err(ioerr)?.len();
        let info = self.info();
        if len > info.size {
            return Err(VolumeError::io(
                path.display(),
                std::io::Error::other(format!(
                    "file is {len} bytes, larger than volume `{}` ({} bytes)",
                    info.name, info.size
                )),
            ));
        }
        let chunk = info.chunk_size;
        let mut buf = vec![0u8; chunk as usize];
        let mut offset = 0u64;
        let mut since_sync = 0u64;
        while offset < len {
            let n = (len - offset).min(chunk) as usize;
            file.read_exact(&mut buf[..n]).map_err(ioerr)?;
            let zero = buf[..n].iter().all(|b| *b == 0);
            if !zero || self.has_data(offset / chunk) {
                self.write_at(offset, Bytes::copy_from_slice(&buf[..n]))
                    .await?;
                since_sync += n as u64;
            }
            offset += n as u64;
            if since_sync >= IMPORT_SYNC_EVERY {
                self.sync().await?;
                since_sync = 0;
            }
            progress(offset, len);
        }
        self.sync().await?;
        Ok(len)
    }

    /// Copies the whole volume to the raw file `path` (sparse where zero).
    pub async fn export_file(
        &self,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, VolumeError> {
        let info = self.info();
        let out = create_out(path, info.size)?;
        let chunk = info.chunk_size;
        let mut offset = 0;
        while offset < info.size {
            let n = (info.size - offset).min(chunk);
            if self.has_data(offset / chunk) {
                let data = self.read_at(offset, n as usize).await?;
                write_nonzero(&out, path, offset, &data)?;
            }
            offset += n;
            progress(offset, info.size);
        }
        out.sync_all()
            .map_err(|e| VolumeError::io(path.display(), e))?;
        Ok(info.size)
    }
}

fn create_out(path: &Path, size: u64) -> Result<File, VolumeError> {
    let ioerr = |e| VolumeError::io(path.display(), e);
    let out = File::create(path).map_err(ioerr)?;
    out.set_len(size).map_err(ioerr)?;
    Ok(out)
}

fn write_nonzero(out: &File, path: &Path, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
    if data.iter().all(|b| *b == 0) {
        return Ok(());
    }
    out.write_all_at(data, offset)
        .map_err(|e| VolumeError::io(path.display(), e))
}

impl Store {
    /// Copies checkpoint `checkpoint` of volume `name` to the raw file
    /// `path`, reading straight from the bucket (no lease needed: a
    /// checkpoint never changes).
    pub async fn export_checkpoint(
        &self,
        name: &str,
        checkpoint: &str,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, VolumeError> {
        let (info, map) = self.checkpoint_map(name, checkpoint).await?;
        let out = create_out(path, info.size)?;
        let mut chunks: Vec<_> = map
            .into_iter()
            .filter(|(_, e)| e.flags & crate::meta::FLAG_ZERO == 0)
            .collect();
        chunks.sort_by_key(|(c, _)| *c);
        let total = chunks.len() as u64;
        let mut done = 0;
        let mut fetches = futures::stream::iter(
            chunks
                .into_iter()
                .map(|(c, ext)| async move { self.fetch_extent(&ext).await.map(|d| (c, d)) }),
        )
        .buffer_unordered(16);
        while let Some(res) = fetches.next().await {
            let (c, data) = res?;
            write_nonzero(&out, path, c * info.chunk_size, &data)?;
            done += 1;
            progress(done, total);
        }
        out.sync_all()
            .map_err(|e| VolumeError::io(path.display(), e))?;
        Ok(info.size)
    }
}
