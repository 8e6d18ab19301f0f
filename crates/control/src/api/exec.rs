//! `/v1/sprites/{name}/exec`: commands in a sprite, over a WebSocket (GET) or
//! one HTTP request (POST). See [`crate::exec`] for the wire formats.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderValue;

use super::AppState;
use crate::exec::ExecParams;
use crate::ControlError;

/// Runs a command in the sprite over a WebSocket. The upgrade is answered at
/// once (with `X-Sprite-Capabilities`) and the wake, started here, runs to
/// completion whatever the client does; a sprite that does not exist is a
/// 404 before the upgrade.
pub(super) async fn exec_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ControlError> {
    let params = ExecParams::parse(query.as_deref().unwrap_or(""))?;
    let upgrade = upgrade.map_err(|r| {
        ControlError::BadRequest(format!(
            "exec runs over a WebSocket (connect with ws://), or POST for one HTTP answer: {}",
            r.body_text()
        ))
    })?;
    let record = state.sprites.get(&name)?;
    let params = params.with_sprite_environment(&record.settings.environment);
    let wake = state.sprites.wake_in_background(&name);
    let mut response =
        upgrade.on_upgrade(move |socket| crate::exec::run(socket, wake, name, params));
    response.headers_mut().insert(
        "x-sprite-capabilities",
        HeaderValue::from_static(crate::exec::CAPABILITIES),
    );
    Ok(response)
}

/// `POST /v1/sprites/{name}/exec`: the same query; the request body is the
/// command's stdin (with `stdin=true`), the answer streams its output framed
/// as the WebSocket's non-TTY messages, one HTTP chunk per frame.
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
