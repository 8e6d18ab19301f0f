//! Forks: a new sprite whose disk is a copy-on-write fork of a checkpoint of another
//! sprite (metadata only: milliseconds whatever the disk holds). The fork gets its own
//! id, URL and checkpoint history (`v0` is the fork point), a copy of the source's
//! settings (labels, config, environment; its services are on the disk), and records
//! where it came from. Deleting the source later keeps the fork whole: the volume
//! engine frees shared data only once no volume stands on it.

use wisp_volume::VolumeError;

use crate::registry::{RegistryError, SpriteRecord, SpriteSource, UrlAuth};
use crate::sprites::{now, validate_name};
use crate::{ControlError, Sprites};

impl Sprites {
    /// Creates sprite `name` as a fork of sprite `source` at `checkpoint`, or at its
    /// current state (a live checkpoint taken now: a running source keeps running).
    pub async fn fork(
        &self,
        name: &str,
        source: &str,
        checkpoint: Option<&str>,
        url_auth: UrlAuth,
    ) -> Result<SpriteRecord, ControlError> {
        validate_name(name)?;
        if self.registry.get(name)?.is_some() {
            return Err(RegistryError::AlreadyExists(name.to_string()).into());
        }
        let from = self.get(source)?;
        let checkpoint = match checkpoint {
            Some(c) => c.to_string(),
            None => {
                self.checkpoint(source, Some(format!("fork point of `{name}`")))
                    .await?
                    .id
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        let volume = format!("sprite-{id}");
        // The fork point is the fork's own first checkpoint, written with the rest of
        // the new volume's metadata.
        self.store()
            .fork_with_checkpoint(
                &from.volume,
                &checkpoint,
                &volume,
                format!("fork of `{source}`@{checkpoint}"),
            )
            .await
            .map_err(|source_err| match source_err {
                VolumeError::CheckpointNotFound { .. } => ControlError::NotFound(format!(
                    "sprite `{source}` has no checkpoint `{checkpoint}`"
                )),
                e => ControlError::Volume {
                    context: format!("cannot fork sprite `{source}`@{checkpoint} into `{name}`"),
                    source: e,
                },
            })?;
        let mut settings = from.settings.clone();
        settings.memory_in_bucket = false;
        settings.source = Some(SpriteSource {
            sprite: source.to_string(),
            checkpoint: checkpoint.clone(),
        });
        let at = now();
        let record = SpriteRecord {
            id,
            name: name.to_string(),
            volume: volume.clone(),
            url_auth,
            created_at: at.clone(),
            updated_at: at,
            settings,
        };
        if let Err(e) = self.registry.insert(&record).map_err(ControlError::from) {
            if let Err(cleanup) = self.store().delete_volume(&volume).await {
                tracing::warn!(volume = %volume, error = %cleanup, "cannot delete the fork of a sprite that was not registered");
            }
            return Err(e);
        }
        tracing::info!(sprite = %name, source = %source, checkpoint = %checkpoint, "sprite forked");
        self.machines.changed(name);
        Ok(record)
    }
}
