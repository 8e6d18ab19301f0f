//! Deleting a checkpoint: the frozen layer is merged into the layers that stand
//! on it, so every other checkpoint and the head read exactly what they read
//! before, and gc then frees the data only the deleted checkpoint held.

use std::fmt;

use crate::error::VolumeError;
use crate::meta::{Op, Parent};
use crate::store::Store;
use crate::volume::{lock, Volume};

/// What still stands on a checkpoint, so that it cannot be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependant {
    /// The volume's own current state: the checkpoint is its last one, or the
    /// one it was last restored to (the head layer's parent).
    Head,
    /// Volume `name` was forked from the checkpoint. `deleted` when its name is
    /// gone but its objects are kept because volumes forked from it need them.
    Fork { name: String, deleted: bool },
}

impl fmt::Display for Dependant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependant::Head => f.write_str(
                "the volume's current state stands on it (its newest checkpoint, or the one last restored)",
            ),
            Dependant::Fork {
                name,
                deleted: false,
            } => write!(f, "volume `{name}` was forked from it"),
            Dependant::Fork {
                name,
                deleted: true,
            } => write!(
                f,
                "deleted volume `{name}` was forked from it and is kept for its own forks"
            ),
        }
    }
}

impl Store {
    /// Volumes forked from `name`@`checkpoint` whose data is still needed:
    /// every named volume whose origin is that checkpoint, and every deleted one
    /// (not yet purged by gc) that something else was forked from in turn.
    /// Cost: one delimited LIST of `volumes/` and two GETs per volume.
    ///
    /// Origins are recorded by name (`VolumeInfo::origin`), so a fork of an
    /// earlier volume that had the same name also counts: the check errs on the
    /// side of keeping data.
    pub async fn forks_of(
        &self,
        name: &str,
        checkpoint: &str,
    ) -> Result<Vec<Dependant>, VolumeError> {
        let blobs = self.blobs();
        let origin = format!("{name}@{checkpoint}");
        let mut infos = Vec::new();
        for id in blobs.list_dirs("volumes").await? {
            let info = match self.info_by_id(&id).await {
                Ok(info) => info,
                // A volume being created (no volume.json yet) or purged.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let deleted = blobs
                .get_opt(&format!("volumes/{id}/deleted"))
                .await?
                .is_some();
            infos.push((info, deleted));
        }
        let mut out = Vec::new();
        for (info, deleted) in &infos {
            if info.origin.as_deref() != Some(origin.as_str()) {
                continue;
            }
            let prefix = format!("{}@", info.name);
            let needed = !deleted
                || infos
                    .iter()
                    .any(|(o, _)| o.origin.as_deref().is_some_and(|x| x.starts_with(&prefix)));
            if needed {
                out.push(Dependant::Fork {
                    name: info.name.clone(),
                    deleted: *deleted,
                });
            }
        }
        out.sort_by_key(|d| d.to_string());
        Ok(out)
    }
}

impl Volume {
    /// Deletes `checkpoint` (`"vN"`). Refused with
    /// [`VolumeError::CheckpointInUse`] while the volume's head stands on it or
    /// a fork was made from it ([`Store::forks_of`]); otherwise its layer's rows
    /// are merged into the layers that stand on it (later checkpoints, one op in
    /// the metadata log, shipped before this returns) and the layer is dropped.
    /// Nothing any other checkpoint, fork or the head reads changes; segments
    /// only the deleted checkpoint referenced are freed by the next gc.
    ///
    /// Errors: [`VolumeError::CheckpointNotFound`], `CheckpointInUse`, store and
    /// metadata errors.
    pub async fn delete_checkpoint(&self, checkpoint: &str) -> Result<(), VolumeError> {
        let inner = &self.inner;
        inner.check_open()?;
        let layer = self.checkpoint_layer(checkpoint)?;
        let num: i64 = checkpoint[1..].parse().unwrap_or_default();
        let in_use = |dependant| VolumeError::CheckpointInUse {
            volume: inner.info.name.clone(),
            checkpoint: checkpoint.to_string(),
            dependant,
        };
        let _gate = inner.gate.write().await;
        let _up = inner.upload.lock().await;
        {
            let meta = lock(&inner.meta)?;
            let head = meta.head()?;
            if meta.parent(head)?
                == Some(Parent {
                    volume: None,
                    layer,
                })
            {
                return Err(in_use(Dependant::Head));
            }
        }
        if let Some(fork) = inner
            .store
            .forks_of(&inner.info.name, checkpoint)
            .await?
            .into_iter()
            .next()
        {
            return Err(in_use(fork));
        }
        lock(&inner.meta)?.commit(&[Op::DeleteCheckpoint { num, layer }])?;
        crate::ship::ship_log(&inner.store.blobs(), &inner.info.id, &inner.meta)
            .await
            .map(|_| ())
    }
}
