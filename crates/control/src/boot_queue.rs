//! Boots take turns for the host's cores. A boot under TCG keeps its vCPUs busy;
//! six at once on two cores each got a sixth of a core, stayed silent past the
//! boot watch's limit and were all killed (and booted again, at once, to collide
//! again). So at most [`WakeLimits::boots_at_once`] boots (and resumes) run at a
//! time, the next ones wait their turn in order, and a wake finding
//! [`WakeLimits::max_queued`] already waiting is refused at once (a 503 with
//! `Retry-After`) rather than left to fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many wakes the host takes at once, and how many it lets wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeLimits {
    /// Boots (and resumes) running at once: the host's cores by default.
    pub boots_at_once: usize,
    /// Wakes waiting for a boot slot beyond those; one more is refused.
    pub max_queued: usize,
}

/// Wakes that may wait for a boot slot unless the server says otherwise.
pub const DEFAULT_MAX_QUEUED: usize = 16;

impl Default for WakeLimits {
    fn default() -> Self {
        WakeLimits {
            boots_at_once: host_cores(),
            max_queued: DEFAULT_MAX_QUEUED,
        }
    }
}

/// The cores this process may run on (its affinity and cgroup quota), at least 1.
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// No boot slot is free and [`WakeLimits::max_queued`] wakes already wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub booting: usize,
    pub waiting: usize,
}

/// The boot slots and the wakes waiting for one.
pub struct BootQueue {
    slots: Arc<Semaphore>,
    limits: WakeLimits,
    waiting: AtomicUsize,
}

/// A boot slot, held while the boot runs.
pub type BootSlot = OwnedSemaphorePermit;

/// Gives back a waiting place when its wake got a slot or gave up.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BootQueue {
    pub fn new(limits: WakeLimits) -> Self {
        let limits = WakeLimits {
            boots_at_once: limits.boots_at_once.max(1),
            ..limits
        };
        BootQueue {
            slots: Arc::new(Semaphore::new(limits.boots_at_once)),
            limits,
            waiting: AtomicUsize::new(0),
        }
    }

    pub fn limits(&self) -> WakeLimits {
        self.limits
    }

    /// Whether a wake asked for now would boot or wait, not be refused.
    pub fn check(&self) -> Result<(), QueueFull> {
        let waiting = self.waiting.load(Ordering::SeqCst);
        if self.slots.available_permits() > 0 || waiting < self.limits.max_queued {
            Ok(())
        } else {
            Err(self.full())
        }
    }

    fn full(&self) -> QueueFull {
        QueueFull {
            booting: self.limits.boots_at_once,
            waiting: self.limits.max_queued,
        }
    }

    /// A boot slot: at once when one is free, else after the wakes that waited
    /// before this one; refused when the queue is full.
    pub async fn enter(&self) -> Result<BootSlot, QueueFull> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let max = self.limits.max_queued;
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < max).then_some(w + 1)
            })
            .map_err(|_| self.full())?;
        let _place = Waiting(&self.waiting);
        Ok(self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the boot slots are never closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn boots_run_by_slots_wait_in_turn_and_a_full_queue_is_refused() {
        let queue = Arc::new(BootQueue::new(WakeLimits {
            boots_at_once: 2,
            max_queued: 1,
        }));
        let first = queue.enter().await.unwrap();
        let _second = queue.enter().await.unwrap();
        assert_eq!(queue.check(), Ok(()), "one may still wait");
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.enter().await.map(drop) })
        };
        while queue.waiting.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let full = QueueFull {
            booting: 2,
            waiting: 1,
        };
        assert_eq!(queue.check(), Err(full));
        assert_eq!(queue.enter().await.err(), Some(full));
        // A slot freed goes to the one waiting.
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(queue.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(queue.check(), Ok(()));
    }

    #[tokio::test]
    async fn a_wake_that_gives_up_leaves_its_place() {
        let queue = BootQueue::new(WakeLimits {
            boots_at_once: 1,
            max_queued: 1,
        });
        let _slot = queue.enter().await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), queue.enter()).await;
        assert!(gave_up.is_err());
        assert_eq!(queue.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(queue.check(), Ok(()));
    }

    #[test]
    fn no_slot_is_at_least_one() {
        let queue = BootQueue::new(WakeLimits {
            boots_at_once: 0,
            max_queued: 0,
        });
        assert_eq!(queue.limits().boots_at_once, 1);
        assert_eq!(queue.check(), Ok(()));
    }
}
