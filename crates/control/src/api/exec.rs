//! `/v1/sprites/{name}/exec`: commands in a sprite (see [`crate::exec`] for
//! the WebSocket protocol).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};

use super::AppState;
use crate::ControlError;

/// Runs a command in the sprite over a WebSocket (see `exec`). The upgrade is
/// answered at once and the wake, started here, runs to completion whatever
/// the client does; a sprite that does not exist is a 404 before the upgrade.
pub(super) async fn exec_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ControlError> {
    let params = crate::exec::ExecParams::parse(query.as_deref().unwrap_or(""))?;
    let upgrade = upgrade.map_err(|r| {
        ControlError::BadRequest(format!(
            "exec runs over a WebSocket (connect with ws://): {}",
            r.body_text()
        ))
    })?;
    state.sprites.get(&name)?;
    let wake = state.sprites.wake_in_background(&name);
    Ok(upgrade.on_upgrade(move |socket| crate::exec::run(socket, wake, name, params)))
}


