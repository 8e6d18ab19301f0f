//! The sprite lifecycle as far as the registry and the disks go: create (a
//! copy-on-write fork of the standard image), look up, change settings,
//! delete (the registry row and the volume). Running sprites (boot, sleep,
//! wake) build on this.

use std::path::PathBuf;
use std::time::SystemTime;

use wisp_vm::image::{self, ImageKind};
use wisp_volume::{Store, VolumeError};

use crate::registry::{Page, Registry, RegistryError, SpriteRecord, UrlAuth};
use crate::ControlError;

/// Sprite names are DNS labels: they become the first label of the
/// sprite's URL.
pub fn validate_name(name: &str) -> Result<(), ControlError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "bad sprite name `{name}`: use 1 to 63 lowercase letters, digits and hyphens, \
             starting and ending with a letter or digit"
        )))
    }
}

/// Now, as the registry stores times: RFC 3339, UTC, whole seconds.
fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The sprites of this host: the registry plus the volume store their disks
/// live in.
pub struct Sprites {
    registry: Registry,
    store: Store,
    home: PathBuf,
    image: ImageKind,
}

impl Sprites {
    /// `image` is the standard image new sprites fork; it is looked up in
    /// `home` at each create, so building it after the daemon started works.
    pub fn new(registry: Registry, store: Store, home: PathBuf, image: ImageKind) -> Self {
        Sprites {
            registry,
            store,
            home,
            image,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates sprite `name`: its disk is a fork of the standard image's
    /// checkpoint (metadata only, milliseconds), then the name is registered.
    ///
    /// Fork first, register second: a crash in between leaves an unnamed
    /// volume (a few KiB of metadata), never a name without a disk.
    pub async fn create(
        &self,
        name: &str,
        url_auth: UrlAuth,
    ) -> Result<SpriteRecord, ControlError> {
        validate_name(name)?;
        if self.registry.get(name)?.is_some() {
            return Err(RegistryError::AlreadyExists(name.to_string()).into());
        }
        let base = image::find(&self.home, self.image)?.ok_or_else(|| {
            ControlError::Unavailable(format!(
                "image `{0}` is not built, so no sprite can be created; run `wisp image build {0}`",
                self.image
            ))
        })?;
        let id = uuid::Uuid::new_v4().to_string();
        let volume = format!("sprite-{id}");
        self.store
            .fork(&base.volume, &base.checkpoint, &volume)
            .await
            .map_err(|source| ControlError::Volume {
                context: format!(
                    "cannot fork image `{}` (volume `{}`@{}) for sprite `{name}`",
                    self.image, base.volume, base.checkpoint
                ),
                source,
            })?;
        let at = now();
        let record = SpriteRecord {
            id,
            name: name.to_string(),
            volume,
            url_auth,
            created_at: at.clone(),
            updated_at: at,
        };
        if let Err(e) = self.registry.insert(&record) {
            // Lost a race for the name (or the registry failed): the fork
            // is nobody's disk.
            if let Err(cleanup) = self.store.delete_volume(&record.volume).await {
                tracing::warn!(volume = %record.volume, error = %cleanup, "cannot delete the fork of a sprite that was not registered");
            }
            return Err(e.into());
        }
        tracing::info!(sprite = %name, volume = %record.volume, "sprite created");
        Ok(record)
    }

    /// Sprite `name`, or [`ControlError::NotFound`].
    pub fn get(&self, name: &str) -> Result<SpriteRecord, ControlError> {
        self.registry.get(name)?.ok_or_else(|| not_found(name))
    }

    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, ControlError> {
        Ok(self.registry.list(prefix, after, limit)?)
    }

    pub fn set_url_auth(
        &self,
        name: &str,
        url_auth: UrlAuth,
    ) -> Result<SpriteRecord, ControlError> {
        self.registry
            .set_url_auth(name, url_auth, &now())?
            .ok_or_else(|| not_found(name))
    }

    /// Deletes sprite `name`: its volume (data, metadata and checkpoints),
    /// then its registry row. A volume already gone is not an error, so a
    /// delete interrupted between the two steps can be repeated.
    pub async fn delete(&self, name: &str) -> Result<(), ControlError> {
        let record = self.get(name)?;
        match self.store.delete_volume(&record.volume).await {
            Ok(()) | Err(VolumeError::NotFound(_)) => {}
            Err(source) => {
                return Err(ControlError::Volume {
                    context: format!("cannot delete sprite `{name}`'s volume `{}`", record.volume),
                    source,
                })
            }
        }
        self.registry.remove(name)?;
        tracing::info!(sprite = %name, "sprite deleted");
        Ok(())
    }
}

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!("sprite `{name}` does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "my-sprite", "web2", &"x".repeat(63)] {
            validate_name(good).unwrap();
        }
        for bad in ["", "-a", "a-", "My", "a_b", "a.b", "ü", &"x".repeat(64)] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
