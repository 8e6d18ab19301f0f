//! `/v1/sprites/{name}/sleep` and `/wake`: put a sprite to sleep now (warm or
//! cold) or wake it now, instead of waiting for its idle timeout or a request.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

use super::AppState;
use crate::machines::SleepMode;
use crate::model::SpriteView;
use crate::ControlError;

/// `POST /v1/sprites/{name}/sleep`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SleepBody {
    /// `warm` (the default: memory kept, the next wake resumes) or `cold`
    /// (memory dropped, or kept in the bucket with `keep_memory`).
    #[serde(default)]
    mode: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/sleep",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = SleepBody,
    responses((status = 200, description = "The sprite, asleep", body = SpriteView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn sleep_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<SpriteView>, ControlError> {
    // No body is `{}`.
    let request: SleepBody = if raw.iter().all(u8::is_ascii_whitespace) {
        SleepBody::default()
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| ControlError::BadRequest(format!("bad sleep request body: {e}")))?
    };
    let mode = match request.mode.as_deref() {
        None | Some("warm") => SleepMode::Warm,
        Some("cold") => SleepMode::Cold,
        Some(other) => {
            return Err(ControlError::BadRequest(format!(
                "bad `mode` value `{other}`: use `warm` or `cold`"
            )))
        }
    };
    state.sprites.sleep(&name, mode).await?;
    Ok(Json(state.view(state.sprites.get(&name)?)))
}

#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/wake",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "The sprite, running", body = SpriteView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn wake_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SpriteView>, ControlError> {
    // The activity ends at once: the sprite's idle clock starts now.
    drop(state.sprites.activity(&name).await?);
    Ok(Json(state.view(state.sprites.get(&name)?)))
}
