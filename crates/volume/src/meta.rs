//! A volume's metadata: the SQLite schema (layers, checkpoints, segments,
//! extents), the logical operations that change it, and shipping it to the
//! bucket Litestream-style (numbered log objects plus periodic snapshots).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::VolumeError;

/// Extent flag: the chunk reads as zeros (trimmed), no data stored.
pub const FLAG_ZERO: u8 = 1;
/// Extent flag: the stored bytes are zstd-compressed.
pub const FLAG_ZSTD: u8 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layers (
    id INTEGER PRIMARY KEY,
    parent_volume TEXT,            -- NULL: the parent layer is in this volume
    parent_layer INTEGER,          -- NULL: root layer
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    num INTEGER PRIMARY KEY,       -- checkpoint `v<num>`
    layer INTEGER NOT NULL,
    created INTEGER NOT NULL,
    comment TEXT
);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,             -- object key relative to the store root
    size INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS extents (
    layer INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    PRIMARY KEY (layer, chunk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS extents_segment ON extents (segment);
-- Local only, never shipped: chunks whose newest data is only in the cache file.
CREATE TABLE IF NOT EXISTS dirty (chunk INTEGER PRIMARY KEY);
-- Local only: operations committed but not yet shipped to the bucket.
CREATE TABLE IF NOT EXISTS oplog (seq INTEGER PRIMARY KEY, op TEXT NOT NULL);
";

/// One extent row: where a chunk's data of one layer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub chunk: u64,
    pub segment: i64,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub crc: u32,
    pub flags: u8,
}

impl Row {
    /// Reads the columns `chunk, segment, offset, stored_len, raw_len, crc,
    /// flags` starting at column `at` of a query row.
    fn from_sql(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
        Ok(Row {
            chunk: r.get::<_, i64>(at)? as u64,
            segment: r.get(at + 1)?,
            offset: r.get::<_, i64>(at + 2)? as u64,
            stored_len: r.get(at + 3)?,
            raw_len: r.get(at + 4)?,
            crc: r.get::<_, i64>(at + 5)? as u32,
            flags: r.get(at + 6)?,
        })
    }

    /// The row as shipped in logs.
    pub fn tuple(&self) -> RowTuple {
        (
            self.chunk,
            self.segment,
            self.offset,
            self.stored_len,
            self.raw_len,
            self.crc,
            self.flags,
        )
    }
}

/// A logical change to the metadata. Logs are JSON lines of these; applying
/// one twice is harmless (every op is an upsert or a delete).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    SetInfo {
        key: String,
        value: String,
    },
    AddLayer {
        id: i64,
        parent_volume: Option<String>,
        parent_layer: Option<i64>,
        created: u64,
    },
    Checkpoint {
        num: i64,
        layer: i64,
        created: u64,
        comment: Option<String>,
    },
    AddSegment {
        id: i64,
        key: String,
        size: u64,
        created: u64,
    },
    /// Rows as `[chunk, segment, offset, stored_len, raw_len, crc, flags]`.
    Extents {
        layer: i64,
        rows: Vec<RowTuple>,
    },
    DropLayer {
        layer: i64,
    },
    DropSegment {
        id: i64,
    },
    /// Deletes checkpoint `v<num>` and its frozen `layer`: every layer of this
    /// volume whose parent is `layer` first takes the rows of `layer` it does not
    /// override, and `layer`'s parent, so what each of them reads is unchanged.
    /// Replaying it is harmless: once `layer` is gone nothing has it as parent.
    DeleteCheckpoint {
        num: i64,
        layer: i64,
    },
}

/// A row as shipped in logs: `[chunk, segment, offset, stored_len, raw_len, crc, flags]`.
pub type RowTuple = (u64, i64, u64, u32, u32, u32, u8);
/// `(num, layer, created, comment)` of one checkpoint.
pub type CheckpointRow = (i64, i64, u64, Option<String>);

/// A layer's parent: in this volume (`volume == None`) or in another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub volume: Option<String>,
    pub layer: i64,
}

/// An open metadata database.
pub struct Meta {
    pub conn: Connection,
    pub path: PathBuf,
}

pub(crate) fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> VolumeError + '_ {
    move |source| VolumeError::Db {
        path: path.display().to_string(),
        source,
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Meta {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Meta, VolumeError> {
        let conn = Connection::open(path).map_err(db_err(path))?;
        // WAL + synchronous=FULL: a committed transaction survives a crash of
        // the process and of the host; FLUSH relies on it.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        )
        .map_err(db_err(path))?;
        conn.execute_batch(SCHEMA).map_err(db_err(path))?;
        Ok(Meta {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> VolumeError + '_ {
        db_err(&self.path)
    }

    pub fn get(&self, key: &str) -> Result<Option<String>, VolumeError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    pub fn get_i64(&self, key: &str) -> Result<i64, VolumeError> {
        Ok(self.get(key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    pub(crate) fn set_local(tx: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    /// Highest operation sequence number applied to this database.
    pub fn applied_seq(&self) -> Result<i64, VolumeError> {
        self.get_i64("applied_seq")
    }

    /// Applies `ops` in one transaction and queues them for shipping.
    pub fn commit(&mut self, ops: &[Op]) -> Result<(), VolumeError> {
        let path = self.path.clone();
        let err = db_err(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        let mut seq: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'applied_seq'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(&err)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for op in ops {
            seq += 1;
            apply(&tx, op).map_err(&err)?;
            let text = serde_json::to_string(op).unwrap_or_default();
            tx.execute(
                "INSERT INTO oplog (seq, op) VALUES (?1, ?2)",
                params![seq, text],
            )
            .map_err(&err)?;
        }
        Self::set_local(&tx, "applied_seq", &seq.to_string()).map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Replaces the local dirty-chunk set: adds `add`, removes `remove`.
    pub fn update_dirty(&mut self, add: &[u64], remove: &[u64]) -> Result<(), VolumeError> {
        let path = self.path.clone();
        let err = db_err(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut ins = tx
                .prepare_cached("INSERT OR IGNORE INTO dirty (chunk) VALUES (?1)")
                .map_err(&err)?;
            for c in add {
                ins.execute([*c as i64]).map_err(&err)?;
            }
            let mut del = tx
                .prepare_cached("DELETE FROM dirty WHERE chunk = ?1")
                .map_err(&err)?;
            for c in remove {
                del.execute([*c as i64]).map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    pub fn dirty_chunks(&self) -> Result<Vec<u64>, VolumeError> {
        let mut st = self
            .conn
            .prepare("SELECT chunk FROM dirty")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows.into_iter().map(|c| c as u64).collect())
    }

    pub fn head(&self) -> Result<i64, VolumeError> {
        self.get_i64("head")
    }

    pub fn parent(&self, layer: i64) -> Result<Option<Parent>, VolumeError> {
        let row: Option<(Option<String>, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT parent_volume, parent_layer FROM layers WHERE id = ?1",
                [layer],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        match row {
            None => Err(VolumeError::BadMetadata {
                key: self.path.display().to_string(),
                reason: format!("layer {layer} is missing"),
            }),
            Some((volume, Some(layer))) => Ok(Some(Parent { volume, layer })),
            Some((_, None)) => Ok(None),
        }
    }

    /// `(num, layer, created, comment)` of every checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointRow>, VolumeError> {
        let mut st = self
            .conn
            .prepare("SELECT num, layer, created, comment FROM checkpoints ORDER BY num")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    /// Layer of checkpoint `v<num>` given as `"vN"`.
    pub fn checkpoint_layer(&self, id: &str) -> Result<Option<i64>, VolumeError> {
        let Some(num) = id.strip_prefix('v').and_then(|n| n.parse::<i64>().ok()) else {
            return Ok(None);
        };
        self.conn
            .query_row("SELECT layer FROM checkpoints WHERE num = ?1", [num], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())
    }

    /// Every extent of `layer`, with its segment key.
    pub fn layer_rows(&self, layer: i64) -> Result<Vec<(Row, String)>, VolumeError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT e.chunk, e.segment, e.offset, e.stored_len, e.raw_len, e.crc, e.flags,
                        COALESCE(s.key, '')
                 FROM extents e LEFT JOIN segments s ON s.id = e.segment WHERE e.layer = ?1",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([layer], |r| {
                Ok((Row::from_sql(r, 0)?, r.get::<_, String>(7)?))
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    /// `(layer, row)` of every extent that has data (zero rows excluded).
    pub fn data_rows(&self) -> Result<Vec<(i64, Row)>, VolumeError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT chunk, segment, offset, stored_len, raw_len, crc, flags, layer
                 FROM extents WHERE flags & 1 = 0",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, i64>(7)?, Row::from_sql(r, 0)?)))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    /// `(id, key, size, created)` of every segment.
    pub fn segments(&self) -> Result<Vec<(i64, String, u64, u64)>, VolumeError> {
        let mut st = self
            .conn
            .prepare("SELECT id, key, size, created FROM segments")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    /// Live stored bytes per segment (sum over all extents of all layers).
    pub fn live_bytes(&self) -> Result<Vec<(i64, u64)>, VolumeError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT segment, SUM(stored_len) FROM extents WHERE flags & 1 = 0 GROUP BY segment",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    pub fn next_id(&self, table: &str) -> Result<i64, VolumeError> {
        let col = if table == "checkpoints" { "num" } else { "id" };
        let sql = format!("SELECT COALESCE(MAX({col}), -1) + 1 FROM {table}");
        let next: i64 = self
            .conn
            .query_row(&sql, [], |r| r.get(0))
            .map_err(self.err())?;
        if table == "checkpoints" {
            // Past every deleted checkpoint too (see `Op::DeleteCheckpoint`).
            return Ok(next.max(self.get_i64("checkpoint_floor")?));
        }
        Ok(next)
    }

    /// Operations not yet shipped, oldest first.
    pub fn pending(&self) -> Result<Vec<(i64, String)>, VolumeError> {
        let mut st = self
            .conn
            .prepare("SELECT seq, op FROM oplog ORDER BY seq")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    pub fn mark_shipped(&self, upto: i64) -> Result<(), VolumeError> {
        self.conn
            .execute("DELETE FROM oplog WHERE seq <= ?1", [upto])
            .map_err(self.err())?;
        Ok(())
    }

    /// A consistent copy of the database at `dest` (without local-only rows).
    pub fn snapshot_to(&self, dest: &Path) -> Result<i64, VolumeError> {
        let _ = std::fs::remove_file(dest);
        let seq = self.applied_seq()?;
        self.conn
            .execute("VACUUM INTO ?1", [dest.display().to_string()])
            .map_err(self.err())?;
        let copy = Connection::open(dest).map_err(db_err(dest))?;
        copy.execute_batch(
            "DELETE FROM dirty; DELETE FROM oplog; PRAGMA journal_mode=DELETE; VACUUM;",
        )
        .map_err(db_err(dest))?;
        // The snapshot's own applied_seq must be the one read with the copy.
        let in_copy: i64 = copy
            .query_row("SELECT value FROM meta WHERE key='applied_seq'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(db_err(dest))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(in_copy.max(seq.min(in_copy)))
    }
}

pub(crate) fn apply(tx: &Connection, op: &Op) -> rusqlite::Result<()> {
    match op {
        Op::SetInfo { key, value } => Meta::set_local(tx, key, value),
        Op::AddLayer {
            id,
            parent_volume,
            parent_layer,
            created,
        } => {
            tx.execute(
                "INSERT OR REPLACE INTO layers (id, parent_volume, parent_layer, created) VALUES (?1, ?2, ?3, ?4)",
                params![id, parent_volume, parent_layer, *created as i64],
            )?;
            Ok(())
        }
        Op::Checkpoint {
            num,
            layer,
            created,
            comment,
        } => {
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints (num, layer, created, comment) VALUES (?1, ?2, ?3, ?4)",
                params![num, layer, *created as i64, comment],
            )?;
            Ok(())
        }
        Op::AddSegment {
            id,
            key,
            size,
            created,
        } => {
            tx.execute(
                "INSERT OR REPLACE INTO segments (id, key, size, created) VALUES (?1, ?2, ?3, ?4)",
                params![id, key, *size as i64, *created as i64],
            )?;
            Ok(())
        }
        Op::Extents { layer, rows } => {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO extents (layer, chunk, segment, offset, stored_len, raw_len, crc, flags)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (chunk, seg, off, stored, raw, crc, flags) in rows {
                st.execute(params![
                    layer,
                    *chunk as i64,
                    seg,
                    *off as i64,
                    stored,
                    raw,
                    *crc as i64,
                    flags
                ])?;
            }
            Ok(())
        }
        Op::DropLayer { layer } => {
            tx.execute("DELETE FROM extents WHERE layer = ?1", [layer])?;
            tx.execute("DELETE FROM layers WHERE id = ?1", [layer])?;
            Ok(())
        }
        Op::DropSegment { id } => {
            tx.execute("DELETE FROM segments WHERE id = ?1", [id])?;
            Ok(())
        }
        Op::DeleteCheckpoint { num, layer } => {
            let parent: Option<(Option<String>, Option<i64>)> = tx
                .query_row(
                    "SELECT parent_volume, parent_layer FROM layers WHERE id = ?1",
                    [layer],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((parent_volume, parent_layer)) = parent {
                let children: Vec<i64> = tx
                    .prepare(
                        "SELECT id FROM layers WHERE parent_volume IS NULL AND parent_layer = ?1 AND id != ?1",
                    )?
                    .query_map([layer], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for child in children {
                    tx.execute(
                        "INSERT OR IGNORE INTO extents (layer, chunk, segment, offset, stored_len, raw_len, crc, flags)
                         SELECT ?2, chunk, segment, offset, stored_len, raw_len, crc, flags
                         FROM extents WHERE layer = ?1",
                        params![layer, child],
                    )?;
                    tx.execute(
                        "UPDATE layers SET parent_volume = ?2, parent_layer = ?3 WHERE id = ?1",
                        params![child, parent_volume, parent_layer],
                    )?;
                }
                tx.execute("DELETE FROM extents WHERE layer = ?1", [layer])?;
                tx.execute("DELETE FROM layers WHERE id = ?1", [layer])?;
            }
            tx.execute("DELETE FROM checkpoints WHERE num = ?1", [num])?;
            // Numbers are never reused: the next checkpoint stays past this one.
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('checkpoint_floor', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), ?1)",
                [num + 1],
            )?;
            Ok(())
        }
    }
}

pub fn poisoned() -> VolumeError {
    VolumeError::BadMetadata {
        key: "in-memory state".into(),
        reason: "a previous operation panicked".into(),
    }
}
