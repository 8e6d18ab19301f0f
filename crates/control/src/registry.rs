//! The registry: which sprites exist, what volume holds each one's disk, and
//! their settings. One SQLite file, `$WISP_HOME/registry.db`, on the embedded
//! defaults (a shared PostgreSQL registry for many hosts is a later stage;
//! this module is the seam it will plug into).
//!
//! The registry holds names and settings only. A sprite's data and its
//! checkpoints live in its volume in the object store, so losing the
//! registry loses names, never disks (`wisp volume list` still shows them).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

/// What the registry reports when it cannot do its job.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot open the registry `{path}`")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the registry `{path}` has schema version {found}, newer than this wisp knows ({known}); \
         run a newer wisp"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("sprite `{0}` already exists")]
    AlreadyExists(String),
    #[error("registry query failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the registry row of sprite `{name}` is corrupt: {what}")]
    Corrupt { name: String, what: String },
}

/// Who may reach a sprite's URL: its organisation's token holders
/// (`sprite`, the default) or anyone (`public`). Names as in Sprites.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UrlAuth {
    Sprite,
    Public,
}

impl UrlAuth {
    fn as_str(self) -> &'static str {
        match self {
            UrlAuth::Sprite => "sprite",
            UrlAuth::Public => "public",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "sprite" => Some(UrlAuth::Sprite),
            "public" => Some(UrlAuth::Public),
            _ => None,
        }
    }
}

impl std::str::FromStr for UrlAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        UrlAuth::parse(s).ok_or_else(|| format!("bad url auth `{s}`: use `sprite` or `public`"))
    }
}

impl std::fmt::Display for UrlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: tables align it with `{:<8}`.
        f.pad(self.as_str())
    }
}

/// One registered sprite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpriteRecord {
    /// Stable identifier (a UUID); never reused, unlike a name.
    pub id: String,
    /// Unique name, the sprite's handle in the API and its URL.
    pub name: String,
    /// The volume that holds the sprite's root disk.
    pub volume: String,
    pub url_auth: UrlAuth,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// What the API's create and update calls set besides the URL auth.
    pub settings: SpriteSettings,
}

/// A sprite's settings as Sprites names them (stored as one JSON column).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpriteSettings {
    /// Free-form tags, kept in the order given, without repeats; `GET
    /// /v1/sprites?label=x` filters by them.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub config: SpriteConfig,
    /// Variables every command in the sprite gets (exec, services), under the
    /// ones a request gives.
    #[serde(default)]
    pub environment: std::collections::BTreeMap<String, String>,
    /// `default` or `dev` in Sprites; recorded.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Sprites' `url_settings.private_access` (`admins`, `org_users`): recorded;
    /// a wisp host has one token, so both mean its holders.
    #[serde(default)]
    pub private_access: Option<String>,
    /// The guest port the sprite's URL reaches (a service's `http_port`); 8080
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_port: Option<u16>,
    /// The service that set `url_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_service: Option<String>,
    /// Seconds without a request before the sprite goes to sleep (warm); `0`
    /// never; unset: the server's `--idle-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    /// Seconds a warm sprite stays warm before it goes cold; `0` never (unless
    /// the host's warm-state budget needs the room); unset: the server's
    /// `--cold-after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_after: Option<u64>,
    /// Going cold keeps the machine state in the bucket (any host resumes it
    /// warm) instead of dropping it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_memory: bool,
    /// Set while the sprite's machine state is in the bucket (not a setting:
    /// kept here so every host sees it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_in_bucket: bool,
    /// The sprite and checkpoint this sprite was forked from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SpriteSource>,
    /// The image its disk was first made from (a fork inherits its source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Where a forked sprite's disk came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SpriteSource {
    pub sprite: String,
    /// The checkpoint forked (`v3`); a fork of a sprite's current state forks a
    /// checkpoint taken for it.
    pub checkpoint: String,
}

/// The machine a sprite gets (`config` on create). Absent fields take the
/// host's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpriteConfig {
    /// Virtual CPUs of the sprite's VM.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory of the sprite's VM, in MiB.
    #[serde(default)]
    pub ram_mb: Option<u64>,
    /// Root disk size in GB (10^9 bytes) the sprite asked for: its disk is made this
    /// large at create when that is larger than its image's.
    #[serde(default)]
    pub storage_gb: Option<u64>,
    /// Recorded: a wisp host is one place.
    #[serde(default)]
    pub region: Option<String>,
}

/// One page of [`Registry::list`].
#[derive(Debug)]
pub struct Page {
    pub sprites: Vec<SpriteRecord>,
    /// The name to continue after, when more sprites match.
    pub next_after: Option<String>,
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts how
/// many ran. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: sprites.
    "CREATE TABLE sprites (
         name       TEXT PRIMARY KEY,
         id         TEXT NOT NULL UNIQUE,
         volume     TEXT NOT NULL UNIQUE,
         url_auth   TEXT NOT NULL CHECK (url_auth IN ('sprite', 'public')),
         created_at TEXT NOT NULL,
         updated_at TEXT NOT NULL
     ) STRICT;",
    // 2: labels, config, environment, runtime, private access (JSON).
    "ALTER TABLE sprites ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';",
];

/// The SQLite registry. Calls are short single statements; one connection
/// behind a mutex serialises them, which SQLite would do anyway.
pub struct Registry {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Registry {
    /// Opens (creating if needed) the registry at `path` and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let open_err = |source| RegistryError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // WAL: readers never wait for the writer. FULL: a sprite the API
        // answered 201 for is still registered after a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(RegistryError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(open_err)?;
            tx.execute_batch(sql).map_err(open_err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        Ok(Registry {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Where the registry file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> i64 {
        MIGRATIONS.len() as i64
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new sprite; [`RegistryError::AlreadyExists`] if the name
    /// is taken.
    pub fn insert(&self, sprite: &SpriteRecord) -> Result<(), RegistryError> {
        let result = self.conn().execute(
            "INSERT INTO sprites (name, id, volume, url_auth, created_at, updated_at, settings)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                sprite.name,
                sprite.id,
                sprite.volume,
                sprite.url_auth.as_str(),
                sprite.created_at,
                sprite.updated_at,
                settings_json(&sprite.settings),
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(RegistryError::AlreadyExists(sprite.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The name of the sprite whose disk is volume `volume`, if any.
    pub fn name_of_volume(&self, volume: &str) -> Result<Option<String>, RegistryError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name FROM sprites WHERE volume = ?1",
                params![volume],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The sprite named `name`, if registered.
    pub fn get(&self, name: &str) -> Result<Option<SpriteRecord>, RegistryError> {
        let row = self
            .conn()
            .query_row(
                "SELECT name, id, volume, url_auth, created_at, updated_at, settings
                 FROM sprites WHERE name = ?1",
                params![name],
                raw_row,
            )
            .optional()?;
        row.map(RawRow::into_record).transpose()
    }

    /// Up to `limit` sprites whose names start with `prefix` and that carry
    /// every label in `labels`, in name order, after the name `after`
    /// (exclusive) when given.
    pub fn list(
        &self,
        prefix: &str,
        labels: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT name, id, volume, url_auth, created_at, updated_at, settings
             FROM sprites
             WHERE substr(name, 1, length(?1)) = ?1 AND name > ?2
               AND NOT EXISTS (
                   SELECT 1 FROM json_each(?4) AS wanted
                   WHERE wanted.value NOT IN (
                       SELECT value FROM json_each(sprites.settings, '$.labels')))
             ORDER BY name LIMIT ?3",
        )?;
        let wanted = serde_json::to_string(labels).unwrap_or_else(|_| "[]".into());
        // One more than asked tells whether another page exists.
        let rows = stmt.query_map(
            params![
                prefix,
                after.unwrap_or(""),
                (limit as i64).saturating_add(1),
                wanted
            ],
            raw_row,
        )?;
        let mut sprites = Vec::new();
        for row in rows {
            sprites.push(row?.into_record()?);
        }
        let next_after = if sprites.len() > limit {
            sprites.truncate(limit);
            sprites.last().map(|s| s.name.clone())
        } else {
            None
        };
        Ok(Page {
            sprites,
            next_after,
        })
    }

    /// Changes who may reach sprite `name`'s URL; the updated record, or
    /// `None` if no such sprite.
    pub fn set_url_auth(
        &self,
        name: &str,
        url_auth: UrlAuth,
        now: &str,
    ) -> Result<Option<SpriteRecord>, RegistryError> {
        self.update(name, now, |record| record.url_auth = url_auth)
    }

    /// Changes sprite `name`'s URL auth and settings with `change`, in one
    /// transaction; the updated record, or `None` if no such sprite. The
    /// name, id, volume and creation time stay as they are.
    pub fn update(
        &self,
        name: &str,
        now: &str,
        change: impl FnOnce(&mut SpriteRecord),
    ) -> Result<Option<SpriteRecord>, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row = tx
            .query_row(
                "SELECT name, id, volume, url_auth, created_at, updated_at, settings
                 FROM sprites WHERE name = ?1",
                params![name],
                raw_row,
            )
            .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut record = row.into_record()?;
        change(&mut record);
        record.updated_at = now.to_string();
        tx.execute(
            "UPDATE sprites SET url_auth = ?2, settings = ?3, updated_at = ?4 WHERE name = ?1",
            params![
                name,
                record.url_auth.as_str(),
                settings_json(&record.settings),
                now
            ],
        )?;
        tx.commit()?;
        Ok(Some(record))
    }

    /// Removes sprite `name`; false if it was not registered.
    pub fn remove(&self, name: &str) -> Result<bool, RegistryError> {
        let changed = self
            .conn()
            .execute("DELETE FROM sprites WHERE name = ?1", params![name])?;
        Ok(changed > 0)
    }

    /// How many sprites are registered.
    pub fn count(&self) -> Result<u64, RegistryError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM sprites", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// How many sprites have their machine state in the bucket.
    pub fn count_memory_in_bucket(&self) -> Result<u64, RegistryError> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM sprites WHERE json_extract(settings, '$.memory_in_bucket') = 1",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

/// A row as stored; checked into a [`SpriteRecord`] outside the SQLite
/// callback so a bad value gets an error naming the sprite.
struct RawRow {
    name: String,
    id: String,
    volume: String,
    url_auth: String,
    created_at: String,
    updated_at: String,
    settings: String,
}

/// The `settings` column: JSON of [`SpriteSettings`].
fn settings_json(settings: &SpriteSettings) -> String {
    // A struct of strings, numbers and lists always serialises.
    serde_json::to_string(settings).unwrap_or_else(|_| "{}".into())
}

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        name: row.get(0)?,
        id: row.get(1)?,
        volume: row.get(2)?,
        url_auth: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
        settings: row.get(6)?,
    })
}

impl RawRow {
    fn into_record(self) -> Result<SpriteRecord, RegistryError> {
        let url_auth = UrlAuth::parse(&self.url_auth).ok_or_else(|| RegistryError::Corrupt {
            name: self.name.clone(),
            what: format!("url_auth `{}`", self.url_auth),
        })?;
        let settings =
            serde_json::from_str(&self.settings).map_err(|e| RegistryError::Corrupt {
                name: self.name.clone(),
                what: format!("settings `{}`: {e}", self.settings),
            })?;
        Ok(SpriteRecord {
            id: self.id,
            name: self.name,
            volume: self.volume,
            url_auth,
            created_at: self.created_at,
            updated_at: self.updated_at,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> SpriteRecord {
        SpriteRecord {
            id: format!("id-{name}"),
            name: name.to_string(),
            volume: format!("sprite-{name}"),
            url_auth: UrlAuth::Sprite,
            created_at: "2026-11-29T00:00:00Z".into(),
            updated_at: "2026-11-29T00:00:00Z".into(),
            settings: SpriteSettings::default(),
        }
    }

    #[test]
    fn records_survive_reopen_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        {
            let registry = Registry::open(&path).unwrap();
            registry.insert(&record("a")).unwrap();
            let err = registry.insert(&record("a")).unwrap_err();
            assert_eq!(err.to_string(), "sprite `a` already exists");
        }
        let registry = Registry::open(&path).unwrap();
        assert_eq!(registry.get("a").unwrap(), Some(record("a")));
        assert_eq!(registry.get("b").unwrap(), None);
        assert_eq!(registry.count().unwrap(), 1);
    }

    #[test]
    fn list_pages_by_name_and_filters_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("r.db")).unwrap();
        for name in ["web-2", "db", "web-1", "web-3", "web_x"] {
            registry.insert(&record(name)).unwrap();
        }
        let names = |p: &Page| p.sprites.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let first = registry.list("web-", &[], None, 2).unwrap();
        assert_eq!(names(&first), ["web-1", "web-2"]);
        assert_eq!(first.next_after.as_deref(), Some("web-2"));
        let second = registry.list("web-", &[], Some("web-2"), 2).unwrap();
        assert_eq!(names(&second), ["web-3"]);
        assert_eq!(second.next_after, None);
        // `_` and `%` are not wildcards in a prefix.
        assert_eq!(
            names(&registry.list("web_", &[], None, 50).unwrap()),
            ["web_x"]
        );
        assert_eq!(registry.list("", &[], None, 50).unwrap().sprites.len(), 5);
    }

    #[test]
    fn labels_are_kept_and_filter_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("r.db")).unwrap();
        for (name, labels) in [("a", &["web", "prod"][..]), ("b", &["web"]), ("c", &[])] {
            let mut r = record(name);
            r.settings.labels = labels.iter().map(|l| l.to_string()).collect();
            registry.insert(&r).unwrap();
        }
        let names = |labels: &[&str]| {
            let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
            let page = registry.list("", &labels, None, 50).unwrap();
            page.sprites.into_iter().map(|s| s.name).collect::<Vec<_>>()
        };
        assert_eq!(names(&[]), ["a", "b", "c"]);
        assert_eq!(names(&["web"]), ["a", "b"]);
        assert_eq!(names(&["web", "prod"]), ["a"]);
        assert_eq!(names(&["nope"]), Vec::<String>::new());
        let updated = registry
            .update("b", "2026-12-01T00:00:00Z", |r| {
                r.settings.labels = vec!["prod".into()]
            })
            .unwrap()
            .unwrap();
        assert_eq!(updated.settings.labels, ["prod"]);
        assert_eq!(names(&["prod"]), ["a", "b"]);
        assert_eq!(registry.get("b").unwrap().unwrap(), updated);
    }

    #[test]
    fn a_registry_of_schema_1_gets_empty_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO sprites VALUES ('old', 'id-old', 'sprite-old', 'public', 't0', 't1')",
                [],
            )
            .unwrap();
        }
        let registry = Registry::open(&path).unwrap();
        let old = registry.get("old").unwrap().unwrap();
        assert_eq!(old.url_auth, UrlAuth::Public);
        assert_eq!(old.settings, SpriteSettings::default());
    }

    #[test]
    fn url_auth_updates_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("r.db")).unwrap();
        registry.insert(&record("a")).unwrap();
        let updated = registry
            .set_url_auth("a", UrlAuth::Public, "2026-11-30T00:00:00Z")
            .unwrap()
            .unwrap();
        assert_eq!(updated.url_auth, UrlAuth::Public);
        assert_eq!(updated.updated_at, "2026-11-30T00:00:00Z");
        assert_eq!(
            registry.set_url_auth("nope", UrlAuth::Public, "x").unwrap(),
            None
        );
        assert!(registry.remove("a").unwrap());
        assert!(!registry.remove("a").unwrap());
    }

    #[test]
    fn a_registry_from_a_newer_wisp_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Registry::open(&path).err().unwrap();
        assert!(
            err.to_string().contains("schema version 99"),
            "{err}: names the version"
        );
    }

    #[test]
    fn a_corrupt_row_is_an_error_naming_the_sprite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let registry = Registry::open(&path).unwrap();
        registry.insert(&record("a")).unwrap();
        // The CHECK constraint guards writes through SQL; a file damaged
        // outside it is still read without a panic.
        registry
            .conn()
            .execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE sprites SET url_auth = 'bogus' WHERE name = 'a';",
            )
            .unwrap();
        let err = registry.get("a").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the registry row of sprite `a` is corrupt: url_auth `bogus`"
        );
    }
}
