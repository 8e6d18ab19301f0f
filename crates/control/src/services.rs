//! A sprite's services: long-running processes its agent keeps alive (started
//! at every boot, restarted when they die, in `needs` order), and which one
//! of them, if any, owns the sprite's URL (`http_port`). Every call wakes the
//! sprite: services live in the guest.

use std::sync::Arc;
use std::time::Duration;

use wisp_vm::agent::{AgentError, ServiceSpec, ServiceStatus};

use crate::machines::Activity;
use crate::{ControlError, Sprites};

/// Maps a failed agent call in sprite `name` to its API error.
fn agent_failed(name: &str) -> impl Fn(AgentError) -> ControlError + '_ {
    move |source| ControlError::Exec {
        name: name.to_string(),
        source,
    }
}

pub(crate) fn service_not_found(name: &str, service: &str) -> ControlError {
    ControlError::NotFound(format!(
        "service `{service}` of sprite `{name}` does not exist"
    ))
}

/// A service's log as it grows: [`Sprites::follow_log`].
pub struct LogFollower {
    activity: Activity,
    name: String,
    service: String,
    offset: u64,
}

impl LogFollower {
    /// What the service wrote since the last call (empty when nothing).
    pub async fn next(&mut self) -> Result<Vec<u8>, ControlError> {
        let read = self
            .activity
            .agent()
            .service_log_from(&self.service, self.offset)
            .await;
        let (data, size) = match read {
            Ok(read) => read,
            // The service has not opened its log yet.
            Err(AgentError::Os { errno, .. }) if errno == "ENOENT" => return Ok(Vec::new()),
            Err(e) => return Err(agent_failed(&self.name)(e)),
        };
        // A rotated log starts again from its beginning.
        self.offset = if size < self.offset {
            0
        } else {
            self.offset + data.len() as u64
        };
        Ok(data)
    }
}

impl Sprites {
    /// Sprite `name`'s services and their state.
    pub async fn services(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Vec<ServiceStatus>, ControlError> {
        let activity = self.activity(name).await?;
        activity
            .agent()
            .list_services()
            .await
            .map_err(agent_failed(name))
    }

    /// Service `service` of sprite `name`, or a 404 naming it.
    pub async fn service(
        self: &Arc<Self>,
        name: &str,
        service: &str,
    ) -> Result<ServiceStatus, ControlError> {
        self.services(name)
            .await?
            .into_iter()
            .find(|s| s.spec.name == service)
            .ok_or_else(|| service_not_found(name, service))
    }

    /// Creates or replaces a service of sprite `name`; it starts now (after
    /// what it `needs`) and at every boot, and restarts when it dies. With
    /// `http_port` it owns the sprite's URL (one service at a time); without,
    /// it gives the URL back if it owned it.
    pub async fn define_service(
        self: &Arc<Self>,
        name: &str,
        spec: ServiceSpec,
        http_port: Option<u16>,
    ) -> Result<ServiceStatus, ControlError> {
        let service = spec.name.clone();
        let record = self.get(name)?;
        if let (Some(_), Some(owner)) = (http_port, &record.settings.url_service) {
            if owner != &service {
                return Err(ControlError::Conflict(format!(
                    "service `{owner}` of sprite `{name}` owns its URL; remove its `http_port` first"
                )));
            }
        }
        let activity = self.activity(name).await?;
        activity
            .agent()
            .define_service(spec)
            .await
            .map_err(|e| match e {
                // Bad `needs` (unknown, a cycle) and the like.
                AgentError::Remote(message) => ControlError::BadRequest(message),
                other => agent_failed(name)(other),
            })?;
        self.update(name, |record| {
            let owned = record.settings.url_service.as_deref() == Some(service.as_str());
            if http_port.is_some() || owned {
                record.settings.url_port = http_port;
                record.settings.url_service = http_port.map(|_| service.clone());
            }
        })?;
        self.service(name, &service).await
    }

    /// Stops and forgets service `service` of sprite `name` (and gives the
    /// sprite's URL back to port 8080 if it owned it).
    pub async fn remove_service(
        self: &Arc<Self>,
        name: &str,
        service: &str,
    ) -> Result<(), ControlError> {
        self.service(name, service).await?;
        let activity = self.activity(name).await?;
        activity
            .agent()
            .remove_service(service)
            .await
            .map_err(agent_failed(name))?;
        self.update(name, |record| {
            if record.settings.url_service.as_deref() == Some(service) {
                record.settings.url_port = None;
                record.settings.url_service = None;
            }
        })?;
        Ok(())
    }

    /// Starts a stopped service (a running one is left as it is).
    pub async fn start_service(
        self: &Arc<Self>,
        name: &str,
        service: &str,
    ) -> Result<(), ControlError> {
        self.service(name, service).await?;
        let activity = self.activity(name).await?;
        activity
            .agent()
            .start_service(service)
            .await
            .map_err(agent_failed(name))
    }

    /// Stops a service, keeping its definition; returns once it ended (its
    /// process gets SIGTERM, then SIGKILL after 3 s).
    pub async fn stop_service(
        self: &Arc<Self>,
        name: &str,
        service: &str,
    ) -> Result<(), ControlError> {
        self.service(name, service).await?;
        let activity = self.activity(name).await?;
        activity
            .agent()
            .stop_service(service)
            .await
            .map_err(agent_failed(name))
    }

    /// Sends signal `signal` to a running service: 404 when there is no such
    /// service, 409 when it is not running.
    pub async fn signal_service(
        self: &Arc<Self>,
        name: &str,
        service: &str,
        signal: i32,
    ) -> Result<(), ControlError> {
        let status = self.service(name, service).await?;
        if status.pid.is_none() {
            return Err(ControlError::Conflict(format!(
                "service `{service}` of sprite `{name}` is not running"
            )));
        }
        let activity = self.activity(name).await?;
        activity
            .agent()
            .signal_service(service, signal)
            .await
            .map_err(agent_failed(name))
    }

    /// How long service `service`'s log is now (0 when it has none yet): where
    /// a [`LogFollower`] made before a start begins.
    pub async fn log_size(
        self: &Arc<Self>,
        name: &str,
        service: &str,
    ) -> Result<u64, ControlError> {
        let activity = self.activity(name).await?;
        match activity.agent().service_log_from(service, u64::MAX).await {
            Ok((_, size)) => Ok(size),
            Err(AgentError::Os { errno, .. }) if errno == "ENOENT" => Ok(0),
            Err(e) => Err(agent_failed(name)(e)),
        }
    }

    /// Follows service `service`'s log from byte `offset`.
    pub async fn follow_log_from(
        self: &Arc<Self>,
        name: &str,
        service: &str,
        offset: u64,
    ) -> Result<LogFollower, ControlError> {
        Ok(LogFollower {
            activity: self.activity(name).await?,
            name: name.to_string(),
            service: service.to_string(),
            offset,
        })
    }

    /// The last `tail` bytes of a service's log (all of it without), and a
    /// follower that reads what comes after.
    pub async fn follow_log(
        self: &Arc<Self>,
        name: &str,
        service: &str,
        tail: Option<u64>,
    ) -> Result<(Vec<u8>, LogFollower), ControlError> {
        self.service(name, service).await?;
        let activity = self.activity(name).await?;
        let (data, size) = match tail {
            Some(0) => activity
                .agent()
                .service_log_from(service, u64::MAX)
                .await
                .map(|(_, size)| (Vec::new(), size)),
            Some(t) => {
                let (_, size) = activity
                    .agent()
                    .service_log_from(service, u64::MAX)
                    .await
                    .map_err(agent_failed(name))?;
                activity
                    .agent()
                    .service_log_from(service, size.saturating_sub(t))
                    .await
            }
            None => activity.agent().service_log_from(service, 0).await,
        }
        .map_err(agent_failed(name))?;
        let follower = LogFollower {
            activity,
            name: name.to_string(),
            service: service.to_string(),
            offset: size,
        };
        Ok((data, follower))
    }
}

/// A duration as the SDKs send one: Go's `time.Duration` text (`5s`, `1m30s`,
/// `1.5s`, `250ms`), Python's `5.0s`, or bare seconds (`5`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_the_sdks_write_them() {
        for (text, ms) in [
            ("5s", 5000),
            ("1m30s", 90_000),
            ("1.5s", 1500),
            ("250ms", 250),
            ("5.0s", 5000),
            ("5", 5000),
            ("0s", 0),
            ("1h", 3_600_000),
        ] {
            assert_eq!(
                parse_duration(text).map(|d| d.as_millis()),
                Some(ms),
                "{text}"
            );
        }
        for bad in ["", "s", "5x", "-1s", "1.2.3s", "five"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
