//! When sprites sleep: idle running sprites go warm, warm ones go cold after a
//! while or when the host's warm states take too much disk, and a restarted
//! daemon takes over the machines its predecessor left running. The mechanics of
//! each step are in [`crate::machines`] and [`crate::warm`].

use std::time::Duration;

use crate::machines::{unix_now, SleepMode};
use crate::registry::SpriteRecord;
use crate::warm::WarmStates;
use crate::{ControlError, Sprites};

/// The server's sleep settings (each sprite may override the two durations).
#[derive(Debug, Clone)]
pub struct SleepPolicy {
    /// A running sprite with no request for this long goes warm; zero: never.
    pub idle_timeout: Duration,
    /// A warm sprite goes cold after this long; zero: never (the budget aside).
    pub cold_after: Duration,
    /// Bytes of warm states this host keeps on its disk; past it, the longest
    /// sleeping warm sprites go cold first.
    pub warm_budget: u64,
    /// Whether QEMU processes outlive the daemon for the next one to adopt.
    pub outlive_daemon: bool,
    /// How idle sprites (and every running sprite when the daemon stops) sleep:
    /// warm (the default) or straight to cold (a host short of disk).
    pub mode: SleepMode,
}

impl Default for SleepPolicy {
    fn default() -> Self {
        SleepPolicy {
            idle_timeout: Duration::from_secs(30),
            cold_after: Duration::from_secs(600),
            warm_budget: 20 << 30,
            outlive_daemon: false,
            mode: SleepMode::Warm,
        }
    }
}

/// A per-sprite number of seconds (`0`: never) or the server's default.
fn seconds_or(setting: Option<u64>, default: Duration) -> Option<Duration> {
    let d = setting.map(Duration::from_secs).unwrap_or(default);
    (!d.is_zero()).then_some(d)
}

impl Sprites {
    /// `running`, `warm` or `cold`, as the Sprites API names a sprite's state.
    pub fn status(&self, record: &SpriteRecord) -> &'static str {
        if self.machines.get(&record.name).is_some() {
            "running"
        } else if record.settings.memory_in_bucket
            || self.machines.warm().get(&record.volume).is_some()
        {
            "warm"
        } else {
            "cold"
        }
    }

    /// How many sprites are warm on this host or in the bucket.
    pub fn warm_count(&self) -> u64 {
        let local = self.machines.warm().list().len() as u64;
        let in_bucket = self.registry.count_memory_in_bucket().unwrap_or(0);
        local + in_bucket
    }

    /// Where a sleeping sprite's memory is: `local`, `bucket`, or `None`.
    pub fn memory_place(&self, record: &SpriteRecord) -> Option<&'static str> {
        if self.machines.warm().get(&record.volume).is_some() {
            Some("local")
        } else if record.settings.memory_in_bucket {
            Some("bucket")
        } else {
            None
        }
    }

    /// Sprite `record`'s idle timeout, `None` for never.
    pub fn idle_timeout(&self, record: &SpriteRecord) -> Option<Duration> {
        seconds_or(record.settings.idle_timeout, self.policy.idle_timeout)
    }

    /// Sprite `record`'s time from warm to cold, `None` for never.
    pub fn cold_after(&self, record: &SpriteRecord) -> Option<Duration> {
        seconds_or(record.settings.cold_after, self.policy.cold_after)
    }

    /// Puts sprite `name` to sleep now: an awake sprite goes `mode`; a warm one
    /// asked to go cold does. Cold with `keep_memory` saves the machine's state and
    /// moves it to the bucket.
    pub async fn sleep(&self, name: &str, mode: SleepMode) -> Result<(), ControlError> {
        let _turn = self.turn(name).await;
        let record = self.get(name)?;
        if self.machines.get(name).is_some() {
            // Cold with `keep_memory` keeps the memory, in the bucket: saved first.
            let stop = if record.settings.keep_memory {
                SleepMode::Warm
            } else {
                mode
            };
            self.machines.sleep(name, stop).await?;
        }
        if mode == SleepMode::Cold {
            self.make_cold(&record).await?;
        }
        Ok(())
    }

    /// One round of the sleeper (every second): idle sprites go warm, warm
    /// sprites past `cold_after` or over the budget go cold.
    pub async fn sleep_idle(&self) {
        for name in self.machines.names() {
            if !self.is_idle(&name).await {
                continue;
            }
            let _turn = self.turn(&name).await;
            // A request may have woken it up again while this waited.
            if self.is_idle(&name).await {
                if let Err(e) = self.machines.sleep(&name, self.policy.mode).await {
                    tracing::warn!(sprite = %name, error = %e.chain(), "putting an idle sprite to sleep failed");
                }
            }
        }
        let warm = self.machines.warm().list();
        let mut total: u64 = warm.iter().map(|(_, s)| s.bytes).sum();
        let now = unix_now();
        for (volume, state) in warm {
            let record = match self.registry.get(&state.sprite) {
                Ok(Some(r)) if r.volume == volume => r,
                Ok(_) => {
                    // Its sprite is gone (deleted while this host was down).
                    self.machines.warm().remove(&volume);
                    total = total.saturating_sub(state.bytes);
                    continue;
                }
                Err(_) => continue,
            };
            let expired = self
                .cold_after(&record)
                .is_some_and(|d| now.saturating_sub(state.saved_at) >= d.as_secs());
            let over_budget = total > self.policy.warm_budget;
            if !(expired || over_budget) {
                continue;
            }
            let _turn = self.turn(&record.name).await;
            match self.make_cold(&record).await {
                Ok(()) => total = total.saturating_sub(state.bytes),
                Err(e) => {
                    tracing::warn!(sprite = %record.name, error = %e.chain(), "a warm sprite could not go cold")
                }
            }
        }
    }

    /// Whether sprite `name` is awake and past its idle timeout with no request
    /// in progress and no keep-awake task in its guest.
    async fn is_idle(&self, name: &str) -> bool {
        let Some(awake) = self.machines.get(name) else {
            return false;
        };
        let Some(idle) = awake.idle_for() else {
            return false;
        };
        if idle == Duration::MAX {
            // Its guest is gone: clean up.
            return true;
        }
        let Ok(Some(record)) = self.registry.get(name) else {
            return false;
        };
        let Some(timeout) = self.idle_timeout(&record) else {
            return false;
        };
        if idle < timeout {
            return false;
        }
        if crate::tasks::held_awake(&awake).await {
            awake.touch();
            return false;
        }
        true
    }

    /// A warm sprite goes cold (in its turn): with `keep_memory` its state goes
    /// to the bucket, otherwise it is dropped. Nothing to do for others.
    async fn make_cold(&self, record: &SpriteRecord) -> Result<(), ControlError> {
        let warm = self.machines.warm();
        if self.machines.get(&record.name).is_some() || warm.get(&record.volume).is_none() {
            return Ok(());
        }
        if record.settings.keep_memory {
            let bytes = warm.upload(self.store(), &record.volume).await?;
            self.registry
                .update(&record.name, &crate::sprites::now(), |r| {
                    r.settings.memory_in_bucket = true
                })?;
            tracing::info!(sprite = %record.name, bytes, "sprite cold; its memory kept in the bucket");
        } else {
            tracing::info!(sprite = %record.name, "sprite cold; its memory dropped");
        }
        warm.remove(&record.volume);
        self.machines.changed(&record.name);
        Ok(())
    }

    /// Drops every saved memory state of sprite `record` (its disk is about to
    /// change under it, or it is being deleted).
    pub(crate) async fn drop_memory(&self, record: &SpriteRecord) {
        self.machines.warm().remove(&record.volume);
        if record.settings.memory_in_bucket {
            self.forget_bucket_memory(record).await;
        }
    }

    /// Deletes sprite `record`'s state in the bucket and clears its flag.
    pub(crate) async fn forget_bucket_memory(&self, record: &SpriteRecord) {
        if let Err(e) = WarmStates::delete_from_bucket(self.store(), &record.volume).await {
            tracing::warn!(sprite = %record.name, error = %e.chain(), "cannot delete the saved state in the bucket");
        }
        let _ = self
            .registry
            .update(&record.name, &crate::sprites::now(), |r| {
                r.settings.memory_in_bucket = false
            });
    }

    /// Puts every awake sprite to sleep (the daemon is stopping), warm unless the
    /// server sleeps sprites cold: their processes carry on when the next daemon
    /// wakes them.
    pub async fn sleep_all(&self) {
        for name in self.machines.names() {
            let _turn = self.turn(&name).await;
            if let Err(e) = self.machines.sleep(&name, self.policy.mode).await {
                tracing::warn!(sprite = %name, error = %e.chain(), "stopping a sprite failed");
            }
        }
    }

    /// Takes over the machines an earlier daemon on this host left running (it
    /// crashed or was killed): their sprites are running again at once. Returns
    /// how many.
    pub async fn adopt_running(self: &std::sync::Arc<Self>) -> usize {
        let run = self.home().join("run");
        let mut adopted = 0;
        let mut after: Option<String> = None;
        loop {
            let page = match self.registry.list("", &[], after.as_deref(), 500) {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list sprites to adopt their machines");
                    return adopted;
                }
            };
            for record in &page.sprites {
                if !run
                    .join(&record.volume)
                    .join(wisp_vm::machine::MACHINE_FILE)
                    .exists()
                {
                    continue;
                }
                let _turn = self.turn(&record.name).await;
                match self.machines.adopt(record).await {
                    Ok(true) => {
                        adopted += 1;
                        if let Some(awake) = self.machines.get(&record.name) {
                            self.serve_guest_requests(&record.name, &awake);
                        }
                    }
                    Ok(false) => {
                        tracing::info!(sprite = %record.name, "its machine had stopped while no daemon ran; it boots on its next request")
                    }
                    Err(e) => {
                        tracing::warn!(sprite = %record.name, error = %e.chain(), "cannot adopt the sprite's machine")
                    }
                }
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return adopted,
            }
        }
    }
}
