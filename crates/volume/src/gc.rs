//! Garbage collection and compaction (`docs/STORAGE.md`): what no live volume,
//! checkpoint or fork references is deleted after a grace period; sparse
//! segments of volumes nobody has open are rewritten.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use crate::config::{GcOptions, GcReport};
use crate::error::VolumeError;
use crate::lease;
use crate::store::{remove_db, Store};

impl Store {
    /// Deletes objects no live volume, checkpoint or fork references (older
    /// than `options.grace`), purges deleted volumes nothing depends on, and
    /// compacts sparse segments of volumes nobody has open.
    pub async fn gc(&self, options: GcOptions) -> Result<GcReport, VolumeError> {
        self.gc_with_progress(options, &|_, _| {}).await
    }

    /// Runs [`Store::gc`] every `every` (the first run one period after the
    /// start) until the future is dropped, logging what each run freed; a
    /// failed run is logged and the next one tries again.
    pub async fn run_maintenance(&self, every: std::time::Duration, options: GcOptions) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.gc(options.clone()).await {
                Ok(r) => tracing::info!(
                    objects_deleted = r.objects_deleted,
                    bytes_freed = r.bytes_freed,
                    segments_compacted = r.segments_compacted,
                    volumes_purged = r.volumes_purged,
                    segments_held = r.segments_held,
                    volumes_skipped = ?r.volumes_skipped,
                    "background gc and compaction done"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "background gc failed; the next run tries again")
                }
            }
        }
    }

    /// [`Store::gc`] reporting `(step, steps)` as it goes.
    pub async fn gc_with_progress(
        &self,
        options: GcOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<GcReport, VolumeError> {
        let blobs = &self.inner.blobs;
        let scratch = self.scratch()?;
        let mut report = GcReport::default();
        // Live volumes: those with a name.
        let mut live: HashMap<String, String> = HashMap::new();
        for obj in blobs.list("names").await? {
            let Some(name) = obj.location.filename() else {
                continue;
            };
            if let Ok(id) = self.volume_id(name).await {
                live.insert(id, name.to_string());
            }
        }
        let all_objects = blobs.list("volumes").await?;
        let mut all_ids: HashSet<String> = HashSet::new();
        for obj in &all_objects {
            let mut parts = obj.location.parts();
            parts.next();
            if let Some(id) = parts.next() {
                all_ids.insert(id.as_ref().to_string());
            }
        }
        // Compaction first, so the segments it retires are collected below.
        // Volumes others fork from are compacted too: a fork reads their
        // frozen layers from the bucket, so one opened later sees the new
        // segment; forks running now keep the old ones (see the sweep).
        if options.compact_below > 0.0 {
            for (id, name) in &live {
                // Never under a writer, this process's own volumes included.
                if self.is_running(id).await? {
                    report.volumes_skipped.push(name.clone());
                    continue;
                }
                match self.open_volume(name).await {
                    Ok(vol) => {
                        let n = vol.compact(options.compact_below).await;
                        let closed = vol.close().await;
                        report.segments_compacted += n?;
                        closed?;
                    }
                    Err(VolumeError::InUse { .. }) => report.volumes_skipped.push(name.clone()),
                    Err(e) => return Err(e),
                }
            }
        }
        // Needed volumes: live ones and every volume their layer chains reach.
        let mut needed: HashSet<String> = HashSet::new();
        let mut parents_of: HashMap<String, Vec<String>> = HashMap::new();
        let mut referenced: HashSet<String> = HashSet::new();
        let mut queue: Vec<String> = live.keys().cloned().collect();
        let total = all_ids.len() as u64 + 1;
        let mut step = 0;
        while let Some(id) = queue.pop() {
            if !needed.insert(id.clone()) {
                continue;
            }
            step += 1;
            progress(step.min(total), total);
            let meta = match self.load_readonly(&id, &scratch).await {
                Ok(m) => m,
                Err(VolumeError::BadMetadata { .. }) => continue,
                Err(e) => return Err(e),
            };
            let keys: HashMap<i64, String> = meta
                .segments()?
                .into_iter()
                .map(|(sid, key, _, _)| (sid, key))
                .collect();
            for (sid, _) in meta.live_bytes()? {
                if let Some(k) = keys.get(&sid) {
                    referenced.insert(k.clone());
                }
            }
            let parents: Vec<String> = {
                let mut st = meta
                    .conn
                    .prepare(
                        "SELECT DISTINCT parent_volume FROM layers WHERE parent_volume IS NOT NULL",
                    )
                    .map_err(|e| VolumeError::Db {
                        path: meta.path.display().to_string(),
                        source: e,
                    })?;
                let rows = st
                    .query_map([], |r| r.get::<_, String>(0))
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| VolumeError::Db {
                        path: meta.path.display().to_string(),
                        source: e,
                    })?;
                rows
            };
            queue.extend(parents.iter().cloned());
            parents_of.insert(id, parents);
            remove_db(meta);
        }
        // A running fork materialised its map when it opened: compaction of
        // an ancestor since then left it naming the old segments. So the
        // unreferenced segments of every ancestor of a running volume stay
        // until nothing that could still read them runs.
        let mut held_volumes: HashSet<String> = HashSet::new();
        for id in &needed {
            if !self.is_running(id).await? {
                continue;
            }
            let mut stack: Vec<String> = parents_of.get(id).cloned().unwrap_or_default();
            while let Some(p) = stack.pop() {
                if held_volumes.insert(p.clone()) {
                    stack.extend(parents_of.get(&p).cloned().unwrap_or_default());
                }
            }
        }
        let cutoff = SystemTime::now() - options.grace;
        for obj in &all_objects {
            let parts: Vec<String> = obj
                .location
                .parts()
                .map(|p| p.as_ref().to_string())
                .collect();
            let (Some(id), Some(kind)) = (parts.get(1), parts.get(2)) else {
                continue;
            };
            let old = SystemTime::from(obj.last_modified) <= cutoff;
            let unreferenced_segment =
                kind == "segments" && old && !referenced.contains(obj.location.as_ref());
            let delete = if !needed.contains(id) {
                // Purge a volume nothing needs; an unnamed, undeleted one may
                // be being created right now, so it waits for the grace period.
                old
            } else if unreferenced_segment && held_volumes.contains(id) {
                report.segments_held += 1;
                false
            } else {
                unreferenced_segment
            };
            if delete {
                blobs.delete(obj.location.as_ref()).await?;
                report.objects_deleted += 1;
                report.bytes_freed += obj.size;
            }
        }
        report.volumes_purged = all_ids.iter().filter(|id| !needed.contains(*id)).count() as u64;
        progress(total, total);
        Ok(report)
    }

    /// Whether a writer holds volume `id`'s lease (this process included).
    async fn is_running(&self, id: &str) -> Result<bool, VolumeError> {
        Ok(lease::read_lease(&self.inner.blobs, id)
            .await?
            .is_some_and(|l| l.is_live(&self.inner.host)))
    }
}
