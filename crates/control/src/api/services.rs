//! `/v1/sprites/{name}/services`: a sprite's long-running processes, as the
//! Sprites SDKs call them. Create, start, stop, restart and logs answer an
//! NDJSON stream of log events (`started`, `stdout`, `stopping`, `stopped`,
//! `complete`, `error`; `timestamp` in Unix milliseconds) that follows the
//! service's log for `duration` (default 5 s) and then ends.

use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{body, ndjson, AppState};
use crate::model::{ServiceStateView, ServiceView};
use crate::services::{parse_duration, LogFollower};
use crate::sprites::rfc3339;
use crate::ControlError;

/// How long a stream follows the log when the request gives no `duration`.
const DEFAULT_DURATION: Duration = Duration::from_secs(5);
/// Longest `duration` a stream follows the log for.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// How often a followed log is read.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

fn service_view(status: wisp_vm::agent::ServiceStatus, url_port: Option<u16>) -> ServiceView {
    let mut argv = status.spec.argv.into_iter();
    let name = status.spec.name;
    let state = if status.pid.is_some() {
        "running"
    } else if status.stopped {
        "stopped"
    } else if status.error.is_some() {
        "failed"
    } else {
        "starting"
    };
    ServiceView {
        cmd: argv.next().unwrap_or_default(),
        args: argv.collect(),
        env: status.spec.env.into_iter().collect(),
        dir: status.spec.cwd,
        needs: status.spec.needs,
        http_port: url_port,
        state: ServiceStateView {
            name: name.clone(),
            status: state.to_string(),
            pid: status.pid,
            started_at: status
                .started_at_ms
                .map(|ms| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))),
            error: status.error,
            restart_count: status.starts.saturating_sub(1),
        },
        name,
    }
}

/// The port a service owns the URL with, if it does.
fn url_port_of(state: &AppState, name: &str, service: &str) -> Option<u16> {
    let record = state.sprites.get(name).ok()?;
    let settings = record.settings;
    (settings.url_service.as_deref() == Some(service)).then_some(settings.url_port)?
}

/// `PUT /v1/sprites/{name}/services/{service}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceBody {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    needs: Vec<String>,
    /// The guest port the sprite's URL reaches while this service exists.
    #[serde(default)]
    http_port: Option<u16>,
    /// Added to the service's default environment.
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    dir: Option<String>,
}

/// `?duration=` (or `?timeout=` for stop) and `?lines=` for logs.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamParams {
    duration: Option<String>,
    timeout: Option<String>,
    lines: Option<u64>,
}

impl StreamParams {
    fn duration(&self, default: Duration) -> Result<Duration, ControlError> {
        match self.duration.as_deref().or(self.timeout.as_deref()) {
            None => Ok(default),
            Some(text) => parse_duration(text)
                .map(|d| d.min(MAX_DURATION))
                .ok_or_else(|| {
                    ControlError::BadRequest(format!(
                        "bad duration `{text}`: use a number of seconds or a Go duration such as 5s or 1m30s"
                    ))
                }),
        }
    }
}

fn params(
    parsed: Result<Query<StreamParams>, QueryRejection>,
) -> Result<StreamParams, ControlError> {
    parsed
        .map(|Query(p)| p)
        .map_err(|r| ControlError::BadRequest(r.body_text()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn event(kind: &str) -> serde_json::Value {
    json!({ "type": kind, "timestamp": now_ms() })
}

fn data_event(kind: &str, data: &[u8]) -> serde_json::Value {
    json!({ "type": kind, "data": String::from_utf8_lossy(data), "timestamp": now_ms() })
}

/// Sends the log's new lines as `stdout` events for `duration`. Returns false when
/// the client went away.
async fn follow(
    tx: &tokio::sync::mpsc::Sender<serde_json::Value>,
    follower: &mut LogFollower,
    duration: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + duration;
    loop {
        match follower.next().await {
            Ok(data) if !data.is_empty() => {
                if tx.send(data_event("stdout", &data)).await.is_err() {
                    return false;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(data_event("error", e.chain().as_bytes())).await;
                return false;
            }
        }
        if tokio::time::Instant::now() >= until {
            return true;
        }
        tokio::time::sleep(FOLLOW_EVERY.min(until - tokio::time::Instant::now())).await;
    }
}

fn complete(service: &str) -> serde_json::Value {
    let log = format!("/var/log/wisp/{service}.log");
    json!({
        "type": "complete",
        "timestamp": now_ms(),
        "log_files": { "stdout": log, "stderr": log, "combined": log },
    })
}

#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/services",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "The services", body = Vec<ServiceView>), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn list_services(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ServiceView>>, ControlError> {
    let list = state.sprites.services(&name).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| {
                let port = url_port_of(&state, &name, &s.spec.name);
                service_view(s, port)
            })
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/services/{service}",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name"), ("service" = String, Path, description = "Service name")),
    responses((status = 200, description = "One service", body = ServiceView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn get_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
) -> Result<Json<ServiceView>, ControlError> {
    let status = state.sprites.service(&name, &service).await?;
    Ok(Json(service_view(
        status,
        url_port_of(&state, &name, &service),
    )))
}

/// Follows the log of a service just (re)started from `offset` (its size
/// before the start): `started`, its output for `duration`, `complete`.
async fn started_stream(
    state: AppState,
    name: String,
    service: String,
    offset: u64,
    duration: Duration,
    mut before: Vec<serde_json::Value>,
) -> Result<axum::response::Response, ControlError> {
    let mut follower = state
        .sprites
        .follow_log_from(&name, &service, offset)
        .await?;
    Ok(ndjson(move |tx| async move {
        for line in before.drain(..) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if tx.send(event("started")).await.is_err() {
            return;
        }
        if follow(&tx, &mut follower, duration).await {
            let _ = tx.send(complete(&service)).await;
        }
    }))
}

#[utoipa::path(
    put,
    path = "/v1/sprites/{name}/services/{service}",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name"), ("service" = String, Path, description = "Service name"), StreamParams),
    request_body = ServiceBody,
    responses((status = 200, description = "Log events, NDJSON, for duration", content_type = "application/x-ndjson", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn put_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
    query: Result<Query<StreamParams>, QueryRejection>,
    request: Result<Json<ServiceBody>, JsonRejection>,
) -> Result<axum::response::Response, ControlError> {
    let duration = params(query)?.duration(DEFAULT_DURATION)?;
    let request = body(request)?;
    if !wisp_vm::agent::ServiceSpec::valid_name(&service) {
        return Err(ControlError::BadRequest(format!(
            "bad service name `{service}`: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot"
        )));
    }
    if request.cmd.is_empty() {
        return Err(ControlError::BadRequest("a service needs a `cmd`".into()));
    }
    if request.http_port == Some(0) {
        return Err(ControlError::BadRequest(
            "bad `http_port` 0: use a port from 1 to 65535".into(),
        ));
    }
    let mut argv = vec![request.cmd];
    argv.extend(request.args);
    let spec = wisp_vm::agent::ServiceSpec {
        name: service.clone(),
        argv,
        env: request.env.into_iter().collect(),
        cwd: request.dir,
        user: None,
        needs: request.needs,
    };
    let offset = state.sprites.log_size(&name, &service).await?;
    state
        .sprites
        .define_service(&name, spec, request.http_port)
        .await?;
    started_stream(state, name, service, offset, duration, Vec::new()).await
}

#[utoipa::path(
    delete,
    path = "/v1/sprites/{name}/services/{service}",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name"), ("service" = String, Path, description = "Service name")),
    responses((status = 204, description = "Removed"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn delete_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
) -> Result<StatusCode, ControlError> {
    state.sprites.remove_service(&name, &service).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST .../services/{service}/start?duration=`.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/services/{service}/start",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name"), ("service" = String, Path, description = "Service name"), StreamParams),
    responses((status = 200, description = "Log events, NDJSON", content_type = "application/x-ndjson", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn start_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
    query: Result<Query<StreamParams>, QueryRejection>,
) -> Result<axum::response::Response, ControlError> {
    let duration = params(query)?.duration(DEFAULT_DURATION)?;
    let offset = state.sprites.log_size(&name, &service).await?;
    state.sprites.start_service(&name, &service).await?;
    started_stream(state, name, service, offset, duration, Vec::new()).await
}

/// `POST .../services/{service}/stop?timeout=`: `stopping`, `stopped`, `complete`.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/services/{service}/stop",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name"), ("service" = String, Path, description = "Service name"), StreamParams),
    responses((status = 200, description = "stopping, stopped, complete (NDJSON)", content_type = "application/x-ndjson", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn stop_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
    query: Result<Query<StreamParams>, QueryRejection>,
) -> Result<axum::response::Response, ControlError> {
    params(query)?.duration(DEFAULT_DURATION)?;
    let status = state.sprites.service(&name, &service).await?;
    if status.pid.is_none() && status.stopped {
        return Err(ControlError::Conflict(format!(
            "service `{service}` of sprite `{name}` is not running"
        )));
    }
    Ok(ndjson(move |tx| async move {
        if tx.send(event("stopping")).await.is_err() {
            return;
        }
        match state.sprites.stop_service(&name, &service).await {
            Ok(()) => {
                let _ = tx.send(event("stopped")).await;
                let _ = tx.send(complete(&service)).await;
            }
            Err(e) => {
                let _ = tx.send(data_event("error", e.chain().as_bytes())).await;
            }
        }
    }))
}

/// `POST .../services/{service}/restart?duration=`: stop, then start and follow.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/services/{service}/restart",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name"), ("service" = String, Path, description = "Service name"), StreamParams),
    responses((status = 200, description = "Log events, NDJSON", content_type = "application/x-ndjson", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn restart_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
    query: Result<Query<StreamParams>, QueryRejection>,
) -> Result<axum::response::Response, ControlError> {
    let duration = params(query)?.duration(DEFAULT_DURATION)?;
    state.sprites.stop_service(&name, &service).await?;
    let offset = state.sprites.log_size(&name, &service).await?;
    state.sprites.start_service(&name, &service).await?;
    let before = vec![event("stopping"), event("stopped")];
    started_stream(state, name, service, offset, duration, before).await
}

/// `GET .../services/{service}/logs?lines=N&duration=D`: the last `lines`
/// lines (all without), then what comes for `duration` (default 0), then
/// `complete`.
#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/services/{service}/logs",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name"), ("service" = String, Path, description = "Service name"), StreamParams),
    responses((status = 200, description = "Log events, NDJSON", content_type = "application/x-ndjson", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn service_logs(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
    query: Result<Query<StreamParams>, QueryRejection>,
) -> Result<axum::response::Response, ControlError> {
    let params = params(query)?;
    let duration = params.duration(Duration::ZERO)?;
    let (data, mut follower) = state.sprites.follow_log(&name, &service, None).await?;
    let text = String::from_utf8_lossy(&data).into_owned();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let keep = params.lines.map_or(lines.len(), |n| n as usize);
    let last: Vec<String> = lines[lines.len().saturating_sub(keep)..]
        .iter()
        .map(|l| l.to_string())
        .collect();
    Ok(ndjson(move |tx| async move {
        for line in last {
            if tx
                .send(data_event("stdout", line.as_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
        if duration.is_zero() || follow(&tx, &mut follower, duration).await {
            let _ = tx.send(complete(&service)).await;
        }
    }))
}

/// `POST .../services/signal {"name": "web", "signal": "TERM"}`: 204.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SignalBody {
    name: String,
    signal: serde_json::Value,
}

#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/services/signal",
    tag = "services",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = SignalBody,
    responses((status = 204, description = "Sent"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn signal_service(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Result<Json<SignalBody>, JsonRejection>,
) -> Result<StatusCode, ControlError> {
    let request = body(request)?;
    let number = match &request.signal {
        serde_json::Value::String(s) => crate::exec::signal_number(s),
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|n| crate::exec::signal_number(&n.to_string())),
        _ => None,
    }
    .ok_or_else(|| {
        ControlError::BadRequest(format!(
            "bad `signal` {}: give a name such as TERM or SIGHUP, or a number",
            request.signal
        ))
    })?;
    state
        .sprites
        .signal_service(&name, &request.name, number)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
