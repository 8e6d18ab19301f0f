//! `/v1/sprites/{name}/exec`: commands in a sprite, over a WebSocket (GET with
//! an upgrade) or one HTTP request (POST), and their sessions: a plain GET
//! lists them, `/exec/{id}` (or `?id=`) attaches, `/exec/{id}/kill` ends one.
//! See [`crate::exec`] for the wire formats and [`crate::sessions`] for how
//! sessions outlive their clients.

use std::time::{Duration, SystemTime};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{ndjson, AppState};
use crate::exec::ExecParams;
use crate::sessions::Output;
use crate::sprites::rfc3339;
use crate::ControlError;

fn with_capabilities(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        "x-sprite-capabilities",
        HeaderValue::from_static(crate::exec::CAPABILITIES),
    );
    response
}

/// `GET /v1/sprites/{name}/exec`: with a WebSocket upgrade, runs a command
/// (or, with `id`, attaches to that session); without, lists the sessions.
/// The upgrade is answered at once (with `X-Sprite-Capabilities`) and the
/// wake, started here, runs to completion whatever the client does; a sprite
/// that does not exist is a 404 before the upgrade.
#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/exec",
    tag = "exec",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 101, description = "WebSocket upgrade: a command (query cmd, path, tty, stdin, rows, cols, env, dir, detachable, max_run_after_disconnect) or, with id, an attach"), (status = 200, description = "Without an upgrade: the sprite's sessions", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn exec_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ControlError> {
    let record = state.sprites.get(&name)?;
    let Ok(upgrade) = upgrade else {
        return Ok(list_sessions(&state, &name).into_response());
    };
    let params = ExecParams::parse(query.as_deref().unwrap_or(""))?;
    if let Some(id) = params.attach {
        state.sprites.sessions().get(&name, &id)?;
        let sprites = state.sprites.clone();
        let response =
            upgrade.on_upgrade(move |socket| crate::exec::attach(socket, sprites, name, id));
        return Ok(with_capabilities(response));
    }
    let params = params.with_sprite_environment(&record.settings.environment);
    state.check_wake(&name)?;
    let wake = state.sprites.wake_in_background(&name);
    let sprites = state.sprites.clone();
    let response =
        upgrade.on_upgrade(move |socket| crate::exec::run(socket, sprites, wake, name, params));
    Ok(with_capabilities(response))
}

/// `GET /v1/sprites/{name}/exec/{id}` with an upgrade: attaches to session `id`.
#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/exec/{id}",
    tag = "exec",
    params(("name" = String, Path, description = "Sprite name"), ("id" = String, Path, description = "Checkpoint or session id")),
    responses((status = 101, description = "WebSocket upgrade attached to the session: session_info, replay, live output"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn attach_session(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ControlError> {
    state.sprites.get(&name)?;
    state.sprites.sessions().get(&name, &id)?;
    let upgrade = upgrade.map_err(|r| {
        ControlError::BadRequest(format!(
            "attaching to a session runs over a WebSocket: {}",
            r.body_text()
        ))
    })?;
    let sprites = state.sprites.clone();
    let response = upgrade.on_upgrade(move |socket| crate::exec::attach(socket, sprites, name, id));
    Ok(with_capabilities(response))
}

/// The sessions of sprite `name`, in the SDKs' shape.
fn list_sessions(state: &AppState, name: &str) -> Json<serde_json::Value> {
    let sessions: Vec<_> = state
        .sprites
        .sessions()
        .list(name)
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "command": s.command,
                "workdir": s.workdir,
                "created": rfc3339(s.created),
                "last_activity": rfc3339(s.last_activity),
                "bytes_per_second": s.bytes_per_second,
                "is_active": s.is_active,
                "tty": s.tty,
                "attached": s.attached,
            })
        })
        .collect();
    Json(json!({ "sessions": sessions }))
}

/// `POST /v1/sprites/{name}/exec`: the same query; the request body is the
/// command's stdin (with `stdin=true`), the answer streams its output framed
/// as the WebSocket's non-TTY messages, one HTTP chunk per frame.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/exec",
    tag = "exec",
    params(("name" = String, Path, description = "Sprite name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Framed output: one HTTP chunk per frame ([1|2|3] + bytes)", content_type = "application/octet-stream"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn exec_http(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: axum::body::Body,
) -> Result<axum::response::Response, ControlError> {
    let params = ExecParams::parse(query.as_deref().unwrap_or(""))?;
    if params.request.tty.is_some() {
        return Err(ControlError::BadRequest(
            "`tty` needs the WebSocket form of exec (GET with an upgrade)".into(),
        ));
    }
    let record = state.sprites.get(&name)?;
    let params = params.with_sprite_environment(&record.settings.environment);
    let activity = state.sprites.activity(&name).await?;
    crate::exec::run_http(activity, name, params, body).await
}

/// `?signal=` (default SIGTERM) and `?timeout=` (default 10 s) of a kill.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KillParams {
    signal: Option<String>,
    timeout: Option<String>,
}

/// `POST /v1/sprites/{name}/exec/{id}/kill`: sends the signal, waits up to
/// `timeout` for the command to end, and sends SIGKILL if it did not; the
/// answer streams NDJSON events: `signal`, then `exited` (with `exit_code`)
/// or `timeout` and `killed`, then `complete`.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/exec/{id}/kill",
    tag = "exec",
    params(("name" = String, Path, description = "Sprite name"), ("id" = String, Path, description = "Checkpoint or session id")),
    responses((status = 200, description = "NDJSON: signal, exited or timeout+killed, complete", content_type = "application/x-ndjson", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn kill_session(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    params: Result<Query<KillParams>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ControlError> {
    let Query(params) = params.map_err(|r| ControlError::BadRequest(r.body_text()))?;
    let signal_name = params.signal.unwrap_or_else(|| "SIGTERM".into());
    let signal = crate::exec::signal_number(&signal_name).ok_or_else(|| {
        ControlError::BadRequest(format!(
            "bad `signal` `{signal_name}`: give a name such as TERM or SIGKILL, or a number"
        ))
    })?;
    let timeout = match params.timeout.as_deref() {
        None => Duration::from_secs(10),
        Some(text) => crate::services::parse_duration(text).ok_or_else(|| {
            ControlError::BadRequest(format!(
                "bad `timeout` `{text}`: use a duration such as 10s"
            ))
        })?,
    };
    let session = state.sprites.sessions().get(&name, &id)?;
    let mut watcher = session.attach(false);
    Ok(ndjson(move |tx| async move {
        let now = || rfc3339(SystemTime::now());
        let first = json!({
            "type": "signal",
            "signal": signal_name,
            "pid": session.pid,
            "timestamp": now(),
        });
        if tx.send(first).await.is_err() {
            return;
        }
        if !session.ended() {
            let _ = session.input().signal(signal).await;
        }
        let exited = async {
            // The end comes as the last message to an attached client.
            let mut code = None;
            for past in watcher.replay.drain(..) {
                if let Output::Exit(c) = past {
                    code = Some(c);
                }
            }
            while code.is_none() {
                match watcher.output.recv().await {
                    Some(Output::Exit(c)) => code = Some(c),
                    Some(Output::Error(_)) | None => break,
                    Some(_) => {}
                }
            }
            code
        };
        match tokio::time::timeout(timeout, exited).await {
            Ok(code) => {
                let _ = tx
                    .send(json!({ "type": "exited", "exit_code": code, "timestamp": now() }))
                    .await;
            }
            Err(_) => {
                let _ = tx
                    .send(json!({ "type": "timeout", "timestamp": now() }))
                    .await;
                let _ = session.input().signal(9).await;
                let _ = tx
                    .send(json!({ "type": "killed", "signal": "SIGKILL", "timestamp": now() }))
                    .await;
            }
        }
        let _ = tx
            .send(json!({ "type": "complete", "timestamp": now() }))
            .await;
    }))
}
