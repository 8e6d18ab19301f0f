//! What changed in a sprite's files between two checkpoints, or a checkpoint and
//! now: the volume's block diff says whether anything did, and
//! `wisp_vm::fsdiff` reads both filesystems on the host (no VM is booted or
//! woken).

use wisp_vm::fsdiff::{self, checkpoint_source, volume_source};

use crate::model::{ChangeView, DiffView};
use crate::sprites::IfAwake;
use crate::{ControlError, Sprites};

impl Sprites {
    /// The files added, changed and deleted in sprite `name` from checkpoint
    /// `from` to checkpoint `to`, or to its current state when `to` is `None`
    /// (an awake sprite's guest syncs first, as for a live checkpoint; a
    /// sleeping one is not woken). Errors: unknown sprite or checkpoint (404),
    /// a disk that is not ext4 (500 naming it).
    pub async fn diff(
        &self,
        name: &str,
        from: &str,
        to: Option<&str>,
    ) -> Result<DiffView, ControlError> {
        let store = self.store().clone();
        let found = self
            .with_volume(name, "diff", IfAwake::SyncThenUse, async |v| {
                // Each checkpoint's block map is read once: the readers' maps give
                // the block diff too.
                let volume = v.info().name;
                let a = store.checkpoint_reader(&volume, from).await?;
                let (ranges, b) = match to {
                    Some(to) => {
                        let b = store.checkpoint_reader(&volume, to).await?;
                        (b.changed_since(&a), checkpoint_source(b))
                    }
                    None => (v.changed_since(&a)?, volume_source(v.clone())),
                };
                Ok(fsdiff::diff_blocking(checkpoint_source(a), b, ranges).await)
            })
            .await?;
        let changes = found
            .map_err(|source| ControlError::Diff {
                name: name.to_string(),
                source,
            })?
            .into_iter()
            .map(|c| ChangeView {
                path: c.path,
                kind: match c.kind {
                    fsdiff::ChangeKind::Added => "added",
                    fsdiff::ChangeKind::Changed => "changed",
                    fsdiff::ChangeKind::Deleted => "deleted",
                }
                .to_string(),
                file_type: c.file_type,
            })
            .collect();
        Ok(DiffView {
            from: from.to_string(),
            to: to.map(str::to_string),
            changes,
        })
    }
}
