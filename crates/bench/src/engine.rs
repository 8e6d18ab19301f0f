//! The volume engine in this process (`wisp-volume` + `wisp-nbd`): for figures the CLI
//! cannot give (checkpoint and fork latency without process start-up), and to serve a
//! volume over NBD when the `wisp` binary has no `volume serve` yet.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::runtime::Runtime;
use wisp_nbd::BlockDevice;
use wisp_volume::{Store, StoreConfig, Volume};

/// The benchmark's one tokio runtime (engine tasks run on its workers while the main
/// thread waits for fio).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("start the tokio runtime")
    })
}

/// Opens a store; `env` (the `AWS_*` variables of an S3 store) is applied to this process
/// first because the engine reads S3 settings from the environment.
pub async fn open_store(url: &str, cache_dir: &Path, env: &[(String, String)]) -> Result<Store> {
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    Store::open(StoreConfig::new(url, cache_dir))
        .await
        .with_context(|| format!("open store `{url}`"))
}

/// Writes `bytes` from offset 0 in 1 MiB writes, 16 in flight, with incompressible data
/// (each 4 KiB block stamped with its offset, so no two blocks are equal).
pub async fn fill(volume: &Volume, bytes: u64) -> Result<()> {
    const WRITE: u64 = 1 << 20;
    let base = pseudo_random(WRITE as usize, 0x9e37_79b9_7f4a_7c15);
    futures::stream::iter((0..bytes.div_ceil(WRITE)).map(|i| i * WRITE))
        .map(|offset| {
            let mut data = base.clone();
            for (n, block) in data.chunks_mut(4096).enumerate() {
                block[..8].copy_from_slice(&(offset + n as u64 * 4096).to_le_bytes());
            }
            let len = WRITE.min(bytes - offset) as usize;
            data.truncate(len);
            async move { volume.write(offset, Bytes::from(data), false).await }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
        .context("write to the volume")
}

/// Writes `bytes` from offset 0 like [`fill`], with data that compresses to almost
/// nothing (each 4 KiB block holds its offset, then zeros) but is no zero chunk: a
/// block-map row per chunk, as with real data, at little disk cost.
pub async fn fill_compressible(volume: &Volume, bytes: u64) -> Result<()> {
    const WRITE: u64 = 1 << 20;
    futures::stream::iter((0..bytes.div_ceil(WRITE)).map(|i| i * WRITE))
        .map(|offset| {
            let len = WRITE.min(bytes - offset) as usize;
            let mut data = vec![0u8; len];
            for (n, block) in data.chunks_mut(4096).enumerate() {
                block[..8].copy_from_slice(&(offset + n as u64 * 4096 + 1).to_le_bytes());
            }
            async move { volume.write(offset, Bytes::from(data), false).await }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
        .context("write to the volume")
}

/// xorshift64* bytes: fast, deterministic, incompressible.
pub(crate) fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A volume served over NBD on a unix socket by a task of this process.
pub struct LocalServe {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl LocalServe {
    /// Opens `name` and serves it on `socket` (waits until it listens).
    pub fn start(
        url: &str,
        cache_dir: &Path,
        env: &[(String, String)],
        name: &str,
        socket: &Path,
    ) -> Result<LocalServe> {
        let (url, cache_dir, env, name) = (
            url.to_string(),
            cache_dir.to_path_buf(),
            env.to_vec(),
            name.to_string(),
        );
        let socket: PathBuf = socket.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        // `Store::open_volume`'s future is not `Send`, so it cannot be a spawned task: a
        // thread of its own drives it (the volume's background tasks still run on the
        // runtime's workers).
        let serve = move || async move {
            let opened = async {
                let store = open_store(&url, &cache_dir, &env).await?;
                let volume = Arc::new(store.open_volume(&name).await?);
                let mut server = wisp_nbd::Server::new();
                server.add_export(&name, volume.clone());
                let bound = server.bind(&wisp_nbd::Listen::Unix(socket.clone())).await?;
                anyhow::Ok((volume, bound))
            }
            .await;
            let (volume, bound) = match opened {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            bound
                .serve(async {
                    let _ = shutdown_rx.await;
                })
                .await?;
            // The server and its connections are gone: this is the last handle.
            let volume = Arc::try_unwrap(volume)
                .map_err(|_| anyhow!("the NBD server still holds the volume after shutdown"))?;
            volume.close().await.context("close the volume")
        };
        let thread = std::thread::Builder::new()
            .name("wisp-serve".into())
            .spawn(move || runtime().block_on(serve()))
            .context("start the serve thread")?;
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .context("in-process serve did not start")??;
        Ok(LocalServe {
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// Stops serving and closes the volume (flush, upload, ship metadata); returns how
    /// long that took.
    pub fn stop(mut self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let thread = self.thread.take().context("already stopped")?;
        while !thread.is_finished() {
            if start.elapsed() > timeout {
                return Err(anyhow!("in-process serve did not stop within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        thread
            .join()
            .map_err(|_| anyhow!("the serve thread panicked"))??;
        Ok(start.elapsed())
    }
}

impl Drop for LocalServe {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_deterministic_and_varied() {
        let a = pseudo_random(4096, 1);
        assert_eq!(a, pseudo_random(4096, 1));
        assert_ne!(a, pseudo_random(4096, 2));
        assert!(a.iter().filter(|b| **b == 0).count() < 100);
    }
}
