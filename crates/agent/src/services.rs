//! Services: declared long-running processes, persisted as `<conf>/<name>.json`, started
//! at every agent start, restarted with backoff when they die, output appended to
//! `<logs>/<name>.log`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use wisp_proto::{ExitStatus, ServiceSpec, ServiceStatus};

use crate::reaper::Reaper;
use crate::sys;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long counts as healthy: the next restart starts from the minimum backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long a stopping service gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a service waits for the services it `needs` to be running.
const NEEDS_WAIT: Duration = Duration::from_secs(30);
/// Logs are rotated (one old generation, `<name>.log.1`) past this size.
const LOG_MAX: u64 = 16 << 20;

#[derive(Default)]
struct SvcState {
    pid: Option<u32>,
    starts: u32,
    last_exit: Option<ExitStatus>,
    stopping: Option<Instant>,
    started_at: Option<SystemTime>,
    error: Option<String>,
}

struct Svc {
    spec: ServiceSpec,
    st: Mutex<SvcState>,
    cv: Condvar,
}

impl Svc {
    fn stop(&self) {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        if st.stopping.is_none() {
            st.stopping = Some(Instant::now());
        }
        if let Some(pid) = st.pid {
            sys::kill_group(pid as i32, libc::SIGTERM);
        }
        self.cv.notify_all();
    }
}

pub struct Services {
    conf: PathBuf,
    logs: PathBuf,
    reaper: Arc<Reaper>,
    map: Mutex<BTreeMap<String, Arc<Svc>>>,
}

impl Services {
    pub fn new(conf: PathBuf, logs: PathBuf, reaper: Arc<Reaper>) -> Arc<Services> {
        Arc::new(Services {
            conf,
            logs,
            reaper,
            map: Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts every persisted service (a bad file is logged and skipped).
    pub fn start_all(self: &Arc<Self>) {
        let Ok(dir) = std::fs::read_dir(&self.conf) else {
            return;
        };
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let spec = std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<ServiceSpec>(&b).map_err(|e| e.to_string()));
            match spec {
                Ok(s) if ServiceSpec::valid_name(&s.name) => self.run(s),
                Ok(s) => eprintln!(
                    "wisp-agent: service file {}: bad name `{}`",
                    p.display(),
                    s.name
                ),
                Err(e) => eprintln!("wisp-agent: service file {}: {e}", p.display()),
            }
        }
    }

    pub fn log_path(&self, name: &str) -> io::Result<PathBuf> {
        if !ServiceSpec::valid_name(name) {
            return Err(bad_name(name));
        }
        Ok(self.logs.join(format!("{name}.log")))
    }

    /// Persists `spec` and (re)starts it.
    pub fn define(self: &Arc<Self>, spec: ServiceSpec) -> io::Result<()> {
        if !ServiceSpec::valid_name(&spec.name) {
            return Err(bad_name(&spec.name));
        }
        if spec.argv.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("service `{}` has an empty argv", spec.name),
            ));
        }
        self.check_needs(&spec)?;
        std::fs::create_dir_all(&self.conf)?;
        let path = self.conf.join(format!("{}.json", spec.name));
        let tmp = self.conf.join(format!(".{}.json.tmp", spec.name));
        let body = serde_json::to_vec_pretty(&spec).map_err(io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            // The definition must survive a crash right after the answer.
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        self.run(spec);
        Ok(())
    }

    /// Every service `spec` needs exists, and none needs `spec` back (directly or not).
    fn check_needs(&self, spec: &ServiceSpec) -> io::Result<()> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let needs_of = |name: &str| -> Vec<String> {
            if name == spec.name {
                spec.needs.clone()
            } else {
                map.get(name)
                    .map(|s| s.spec.needs.clone())
                    .unwrap_or_default()
            }
        };
        for need in &spec.needs {
            if need != &spec.name && !map.contains_key(need) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "service `{}` needs `{need}`, which does not exist",
                        spec.name
                    ),
                ));
            }
        }
        // Depth-first from the new spec: reaching it again is a cycle.
        let mut stack: Vec<(String, Vec<String>)> =
            vec![(spec.name.clone(), vec![spec.name.clone()])];
        let mut seen = std::collections::BTreeSet::new();
        while let Some((name, path)) = stack.pop() {
            for need in needs_of(&name) {
                if need == spec.name {
                    let mut cycle = path.clone();
                    cycle.push(need);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "services would need each other in a cycle: {}",
                            cycle.join(" -> ")
                        ),
                    ));
                }
                if seen.insert(need.clone()) {
                    let mut next = path.clone();
                    next.push(need.clone());
                    stack.push((need, next));
                }
            }
        }
        Ok(())
    }

    fn get(&self, name: &str) -> io::Result<Arc<Svc>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("service `{name}` does not exist"),
                )
            })
    }

    /// Starts service `name` again if it was stopped.
    pub fn start(self: &Arc<Self>, name: &str) -> io::Result<()> {
        let svc = self.get(name)?;
        let stopped = svc.st.lock().map(|s| s.stopping.is_some()).unwrap_or(false);
        if stopped {
            self.run(svc.spec.clone());
        }
        Ok(())
    }

    /// Stops service `name` (keeping its definition) and waits, bounded, for its end.
    pub fn stop(&self, name: &str) -> io::Result<()> {
        let svc = self.get(name)?;
        svc.stop();
        let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(1);
        let mut st = svc.st.lock().unwrap_or_else(|e| e.into_inner());
        while st.pid.is_some() && Instant::now() < deadline {
            st = svc
                .cv
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Sends `signal` to service `name`'s process group.
    pub fn signal(&self, name: &str, signal: i32) -> io::Result<()> {
        let svc = self.get(name)?;
        if !(1..=64).contains(&signal) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad signal number `{signal}`"),
            ));
        }
        let pid = svc.st.lock().ok().and_then(|s| s.pid);
        match pid {
            Some(pid) => {
                sys::kill_group(pid as i32, signal);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("service `{name}` is not running"),
            )),
        }
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        if !ServiceSpec::valid_name(name) {
            return Err(bad_name(name));
        }
        let svc = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let file = self.conf.join(format!("{name}.json"));
        match (svc, std::fs::remove_file(&file)) {
            (Some(s), _) => {
                s.stop();
                Ok(())
            }
            (None, Ok(())) => Ok(()),
            (None, Err(_)) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("service `{name}` does not exist"),
            )),
        }
    }

    pub fn list(&self) -> Vec<ServiceStatus> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|s| {
                let st = s.st.lock().unwrap_or_else(|e| e.into_inner());
                ServiceStatus {
                    spec: s.spec.clone(),
                    pid: st.pid,
                    starts: st.starts,
                    last_exit: st.last_exit,
                    started_at_ms: st.pid.and(st.started_at).and_then(|t| {
                        t.duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_millis() as u64)
                    }),
                    error: st.error.clone(),
                    stopped: st.stopping.is_some(),
                }
            })
            .collect()
    }

    /// Stops every service and waits (bounded) for them to end: used at shutdown.
    pub fn stop_all(&self) {
        let all: Vec<Arc<Svc>> = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for s in &all {
            s.stop();
        }
        let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(1);
        for s in &all {
            let mut st = s.st.lock().unwrap_or_else(|e| e.into_inner());
            while st.pid.is_some() && Instant::now() < deadline {
                st =
                    s.cv.wait_timeout(st, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
            }
        }
    }

    fn run(self: &Arc<Self>, spec: ServiceSpec) {
        let svc = Arc::new(Svc {
            spec,
            st: Mutex::new(SvcState::default()),
            cv: Condvar::new(),
        });
        let old = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(svc.spec.name.clone(), svc.clone());
        if let Some(old) = old {
            old.stop();
        }
        let me = self.clone();
        let name = format!("svc-{}", svc.spec.name);
        let _ = std::thread::Builder::new()
            .name(name)
            .spawn(move || me.supervise(&svc));
    }

    /// Waits (bounded) until every service `svc` needs is running.
    fn wait_for_needs(&self, svc: &Svc) {
        let deadline = Instant::now() + NEEDS_WAIT;
        for need in &svc.spec.needs {
            loop {
                let running = self
                    .map
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(need)
                    .is_some_and(|s| s.st.lock().map(|st| st.pid.is_some()).unwrap_or(false));
                if running {
                    break;
                }
                if Instant::now() >= deadline {
                    let msg =
                        format!("`{need}` was not running after {NEEDS_WAIT:?}; starting anyway");
                    self.log_line(&svc.spec.name, &msg);
                    if let Ok(mut st) = svc.st.lock() {
                        st.error = Some(msg);
                    }
                    break;
                }
                if svc.st.lock().map(|s| s.stopping.is_some()).unwrap_or(true) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn supervise(&self, svc: &Svc) {
        let mut backoff = BACKOFF_MIN;
        self.wait_for_needs(svc);
        loop {
            if svc.st.lock().map(|s| s.stopping.is_some()).unwrap_or(true) {
                return;
            }
            let started = Instant::now();
            match self.spawn_once(svc) {
                Ok(status) => {
                    let mut st = svc.st.lock().unwrap_or_else(|e| e.into_inner());
                    st.pid = None;
                    st.last_exit = Some(status);
                    svc.cv.notify_all();
                }
                Err(e) => {
                    self.log_line(&svc.spec.name, &format!("cannot start: {e}"));
                    if let Ok(mut st) = svc.st.lock() {
                        if st.stopping.is_none() {
                            st.error = Some(format!("cannot start: {e}"));
                        }
                    }
                }
            }
            if started.elapsed() >= HEALTHY_RUN {
                backoff = BACKOFF_MIN;
            }
            let st = svc.st.lock().unwrap_or_else(|e| e.into_inner());
            let (st, _) = svc
                .cv
                .wait_timeout_while(st, backoff, |s| s.stopping.is_none())
                .unwrap_or_else(|e| e.into_inner());
            if st.stopping.is_some() {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn open_log(&self, name: &str) -> io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.logs)?;
        let path = self.logs.join(format!("{name}.log"));
        if std::fs::metadata(&path)
            .map(|m| m.len() > LOG_MAX)
            .unwrap_or(false)
        {
            let _ = std::fs::rename(&path, self.logs.join(format!("{name}.log.1")));
        }
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn log_line(&self, name: &str, line: &str) {
        if let Ok(mut f) = self.open_log(name) {
            let _ = writeln!(f, "wisp-agent: {line}");
        }
    }

    /// Runs the service once and returns how it ended.
    fn spawn_once(&self, svc: &Svc) -> io::Result<ExitStatus> {
        let s = &svc.spec;
        let log = self.open_log(&s.name)?;
        // The fork path: services start rarely.
        let mut cmd = crate::exec::plan(
            &s.argv,
            &s.env,
            false,
            s.cwd.as_deref(),
            s.user.as_deref(),
            false,
        )?
        .command(false);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let (child, rx) = {
            // Hold the state lock across spawn so `stop` sees the pid or stops us before.
            let mut st = svc.st.lock().unwrap_or_else(|e| e.into_inner());
            if st.stopping.is_some() {
                return Err(io::Error::other("stopping"));
            }
            let r = self.reaper.spawn(&mut cmd)?;
            st.pid = Some(r.0.id());
            st.starts += 1;
            st.started_at = Some(SystemTime::now());
            st.error = None;
            r
        };
        drop(cmd);
        let pid = child.id() as i32;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(status) => return Ok(status),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("lost the exit status"))
                }
                Err(RecvTimeoutError::Timeout) => {
                    let stopping = svc.st.lock().ok().and_then(|s| s.stopping);
                    if stopping.is_some_and(|t| t.elapsed() >= STOP_GRACE) {
                        sys::kill_group(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

fn bad_name(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("bad service name `{name}`: use 1-64 of [A-Za-z0-9_.-], not starting with a dot"),
    )
}
