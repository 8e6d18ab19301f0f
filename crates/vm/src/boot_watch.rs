//! Watching a boot for progress, so a guest that stalls is killed and booted again
//! in about the time a boot takes, not after a fixed minute.
//!
//! A stalled boot shows nothing: under TCG a guest kernel was seen to stop early
//! (about one boot in fifty under load) with an empty console, and the agent never
//! says hello. Two deadlines catch it, both from this process's recent boots:
//! - the console's first byte (the kernel prints within half a second of guest
//!   time, even with `quiet`): [`BootStats::silence_limit`];
//! - the agent's hello: [`BootStats::ready_limit`].
//!
//! Boots that share the cores share the time: the silence limit, the one for a
//! boot alone, stretches by how many boots of this process are silent together
//! per core (six first wakes at once on two cores were all killed at the plain
//! limit, and collided again at their next attempt). The daemon also queues its
//! boots to the cores (`wisp_control::boot_queue`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many recent boots the deadlines are computed from.
const WINDOW: usize = 32;
/// Fewer samples than this: the defaults below.
const MIN_SAMPLES: usize = 3;
/// A boot is given this many times the median before it counts as stalled.
const FACTOR: u32 = 4;
/// Silence limits: with no samples yet, and never below or above these.
const SILENCE_DEFAULT: Duration = Duration::from_secs(10);
const SILENCE_MIN: Duration = Duration::from_secs(3);
const SILENCE_MAX: Duration = Duration::from_secs(10);
/// Never give a boot less than this to reach its agent.
const READY_MIN: Duration = Duration::from_secs(15);

/// Recent boots of this process: when the console showed its first byte and when
/// the agent answered, both from QEMU's start.
#[derive(Default)]
pub struct BootStats {
    first_output: VecDeque<Duration>,
    ready: VecDeque<Duration>,
}

fn median(samples: &VecDeque<Duration>) -> Option<Duration> {
    if samples.len() < MIN_SAMPLES {
        return None;
    }
    let mut sorted: Vec<Duration> = samples.iter().copied().collect();
    sorted.sort_unstable();
    Some(sorted[sorted.len() / 2])
}

fn push(samples: &mut VecDeque<Duration>, d: Duration) {
    if samples.len() == WINDOW {
        samples.pop_front();
    }
    samples.push_back(d);
}

impl BootStats {
    /// This process's statistics.
    pub fn global() -> &'static Mutex<BootStats> {
        static STATS: Mutex<BootStats> = Mutex::new(BootStats {
            first_output: VecDeque::new(),
            ready: VecDeque::new(),
        });
        &STATS
    }

    /// A boot whose console is still empty this long after QEMU started has stalled:
    /// four times the median time to the first byte, within 3 to 10 s.
    pub fn silence_limit(&self) -> Duration {
        median(&self.first_output)
            .map(|m| (m * FACTOR).clamp(SILENCE_MIN, SILENCE_MAX))
            .unwrap_or(SILENCE_DEFAULT)
    }

    /// A boot whose agent has not answered this long after QEMU started has stalled:
    /// four times the median boot, at least 15 s, at most `cap` (the configured
    /// boot timeout, also the limit while there are too few samples).
    pub fn ready_limit(&self, cap: Duration) -> Duration {
        median(&self.ready)
            .map(|m| (m * FACTOR).max(READY_MIN))
            .unwrap_or(cap)
            .min(cap)
    }

    pub fn record_first_output(&mut self, d: Duration) {
        push(&mut self.first_output, d);
    }

    pub fn record_ready(&mut self, d: Duration) {
        push(&mut self.ready, d);
    }
}

/// Boots of this process waiting for their console's first byte.
static SILENT_BOOTS: AtomicUsize = AtomicUsize::new(0);

/// Counts one boot in [`SILENT_BOOTS`] while it lives.
struct Silent;

impl Silent {
    fn new() -> Silent {
        SILENT_BOOTS.fetch_add(1, Ordering::SeqCst);
        Silent
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        SILENT_BOOTS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `limit`, the silence limit of a boot alone, for one of `boots` booting
/// together on `cores`: each gets a share of the cores, so each waits as many
/// limits as there are boots per core.
pub fn shared_limit(limit: Duration, boots: usize, cores: usize) -> Duration {
    let rounds = boots.max(1).div_ceil(cores.max(1));
    limit * u32::try_from(rounds).unwrap_or(u32::MAX)
}

/// Returns once `console` (a file QEMU writes the serial console to) holds its
/// first byte, with the time since `started`; `Err(limit)` if it is still empty
/// after `limit`, stretched by [`shared_limit`] for the most boots of this process
/// that were silent together meanwhile.
pub async fn first_output(
    console: &Path,
    started: Instant,
    limit: Duration,
) -> Result<Duration, Duration> {
    let _silent = Silent::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut together = 1;
    loop {
        if std::fs::metadata(console).is_ok_and(|m| m.len() > 0) {
            return Ok(started.elapsed());
        }
        together = together.max(SILENT_BOOTS.load(Ordering::SeqCst));
        let limit = shared_limit(limit, together, cores);
        if started.elapsed() >= limit {
            return Err(limit);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_median_within_bounds() {
        let mut s = BootStats::default();
        let cap = Duration::from_secs(60);
        assert_eq!(s.silence_limit(), SILENCE_DEFAULT);
        assert_eq!(s.ready_limit(cap), cap);
        for ms in [800, 900, 700, 5000] {
            s.record_first_output(Duration::from_millis(ms));
        }
        for secs in [4, 5, 4, 40] {
            s.record_ready(Duration::from_secs(secs));
        }
        // Medians 900 ms and 5 s (the upper of the two middle samples).
        assert_eq!(s.silence_limit(), Duration::from_millis(3600));
        assert_eq!(s.ready_limit(cap), Duration::from_secs(20));
        assert_eq!(
            s.ready_limit(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        for _ in 0..WINDOW {
            s.record_first_output(Duration::from_millis(100));
            s.record_ready(Duration::from_secs(1));
        }
        assert_eq!(s.silence_limit(), SILENCE_MIN);
        assert_eq!(s.ready_limit(cap), READY_MIN);
    }

    #[test]
    fn the_silence_limit_stretches_with_the_boots_per_core() {
        let limit = Duration::from_secs(10);
        assert_eq!(shared_limit(limit, 1, 2), limit);
        assert_eq!(shared_limit(limit, 2, 2), limit);
        assert_eq!(shared_limit(limit, 3, 2), limit * 2);
        assert_eq!(shared_limit(limit, 6, 2), limit * 3);
        assert_eq!(shared_limit(limit, 6, 1), limit * 6);
        assert_eq!(shared_limit(limit, 0, 0), limit);
    }

    #[tokio::test]
    async fn silence_is_reported_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        std::fs::write(&console, b"").unwrap();
        let limit = Duration::from_millis(100);
        assert_eq!(
            first_output(&console, Instant::now(), limit).await,
            Err(limit)
        );
        std::fs::write(&console, b"[    0.4] hello").unwrap();
        assert!(first_output(&console, Instant::now(), limit).await.is_ok());
    }
}
