//! Keep-awake tasks: named holds on the sprite's current run. While one is live the
//! host does not put the sprite to sleep; each expires by itself `ttl` after it was
//! last set (a heartbeat sets it again), so a forgotten one cannot keep a sprite up.
//! Time is the guest's monotonic clock: a sleeping sprite's tasks do not age.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wisp_proto::TaskInfo;

/// The longest a task may live between two heartbeats.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

struct Task {
    description: Option<String>,
    ttl: Duration,
    expires: Instant,
}

/// The sprite's keep-awake tasks.
#[derive(Default)]
pub struct Tasks {
    map: Mutex<BTreeMap<String, Task>>,
}

impl Tasks {
    /// Creates task `name` or refreshes it: it lives `ttl` from now. Errors name the
    /// bad value.
    pub fn set(
        &self,
        name: &str,
        ttl: Duration,
        description: Option<String>,
    ) -> Result<TaskInfo, String> {
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(format!(
                "bad task name `{name}`: 1 to 128 letters, digits and `-_.:`"
            ));
        }
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(format!(
                "bad task ttl {} s: use 1 to {} s",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            ));
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let task = map.entry(name.to_string()).or_insert(Task {
            description: None,
            ttl,
            expires: Instant::now(),
        });
        task.ttl = ttl;
        task.expires = Instant::now() + ttl;
        if description.is_some() {
            task.description = description;
        }
        Ok(info(name, task))
    }

    /// Ends task `name`; whether it was live.
    pub fn remove(&self, name: &str) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut map);
        map.remove(name).is_some()
    }

    /// The live tasks, by name (expired ones are dropped here).
    pub fn list(&self) -> Vec<TaskInfo> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut map);
        map.iter().map(|(name, t)| info(name, t)).collect()
    }
}

fn prune(map: &mut BTreeMap<String, Task>) {
    let now = Instant::now();
    map.retain(|_, t| t.expires > now);
}

fn info(name: &str, t: &Task) -> TaskInfo {
    TaskInfo {
        name: name.to_string(),
        description: t.description.clone(),
        ttl_secs: t.ttl.as_secs(),
        expires_in_secs: t
            .expires
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            .ceil() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_expire_by_themselves_and_a_heartbeat_renews_them() {
        let tasks = Tasks::default();
        tasks
            .set("build", Duration::from_millis(1200), Some("cargo".into()))
            .unwrap();
        tasks.set("short", Duration::from_secs(1), None).unwrap();
        assert_eq!(tasks.list().len(), 2);
        std::thread::sleep(Duration::from_millis(700));
        // The heartbeat keeps the description.
        let renewed = tasks.set("build", Duration::from_secs(1), None).unwrap();
        assert_eq!(renewed.description.as_deref(), Some("cargo"));
        std::thread::sleep(Duration::from_millis(500));
        let names: Vec<String> = tasks.list().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["build"], "the one not renewed expired");
        assert!(tasks.remove("build"));
        assert!(!tasks.remove("build"));
        assert!(tasks.list().is_empty());
    }

    #[test]
    fn bad_names_and_ttls_are_refused_with_the_value() {
        let tasks = Tasks::default();
        let e = tasks.set("a b", Duration::from_secs(1), None).unwrap_err();
        assert!(e.contains("`a b`"), "{e}");
        let e = tasks
            .set("ok", Duration::from_secs(7200), None)
            .unwrap_err();
        assert!(e.contains("7200"), "{e}");
        let e = tasks.set("ok", Duration::ZERO, None).unwrap_err();
        assert!(e.contains("ttl 0"), "{e}");
    }
}
