//! `/v1/sprites/{name}/checkpoint(s)`: create, list, get, delete and restore a
//! sprite's checkpoints. Create and restore answer a progress stream (NDJSON).

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::AppState;
use crate::model::{CheckpointView, DiffView, ProgressEvent};
use crate::sprites::rfc3339;
use crate::ControlError;

fn checkpoint_view(c: wisp_volume::CheckpointInfo) -> CheckpointView {
    CheckpointView::from(c)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CheckpointBody {
    #[serde(default)]
    comment: Option<String>,
}

/// A progress stream as Sprites sends it for checkpoint and restore: one
/// JSON event per line. wisp's operations finish before the answer starts
/// (they take milliseconds), so the stream is whole; a failure is an HTTP
/// error status instead of an `error` event.
fn progress_stream(info: &str, complete: String) -> axum::response::Response {
    let time = rfc3339(std::time::SystemTime::now());
    let mut body = String::new();
    for (kind, data) in [("info", info.to_string()), ("complete", complete)] {
        let event = ProgressEvent {
            kind: kind.to_string(),
            data: Some(data),
            error: None,
            time: time.clone(),
        };
        // Serialising a struct of strings cannot fail.
        body.push_str(&serde_json::to_string(&event).unwrap_or_default());
        body.push('\n');
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/checkpoint",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = Option<CheckpointBody>,
    responses((status = 200, description = "Progress events, NDJSON", content_type = "application/x-ndjson", body = ProgressEvent), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn create_checkpoint(
    State(state): State<AppState>,
    Path(name): Path<String>,
    raw: axum::body::Bytes,
) -> Result<axum::response::Response, ControlError> {
    // The body is optional: `curl -X POST .../checkpoint` is a checkpoint without a comment.
    let request: CheckpointBody = if raw.iter().all(u8::is_ascii_whitespace) {
        CheckpointBody::default()
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| ControlError::BadRequest(format!("bad checkpoint request: {e}")))?
    };
    let info = state.sprites.checkpoint(&name, request.comment).await?;
    Ok(progress_stream(
        "Creating checkpoint...",
        format!("Checkpoint {} created", info.id),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/checkpoints",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "Checkpoints, newest first", body = Vec<CheckpointView>), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn list_checkpoints(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<CheckpointView>>, ControlError> {
    let list = state.sprites.checkpoints(&name).await?;
    Ok(Json(list.into_iter().map(checkpoint_view).collect()))
}

#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/checkpoints/{id}",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Sprite name"), ("id" = String, Path, description = "Checkpoint or session id")),
    responses((status = 200, description = "One checkpoint", body = CheckpointView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn get_checkpoint(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<CheckpointView>, ControlError> {
    state
        .sprites
        .checkpoints(&name)
        .await?
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| Json(checkpoint_view(c)))
        .ok_or_else(|| {
            ControlError::NotFound(format!(
                "checkpoint `{id}` of sprite `{name}` does not exist"
            ))
        })
}

#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/checkpoints/{id}/restore",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Sprite name"), ("id" = String, Path, description = "Checkpoint or session id")),
    responses((status = 200, description = "Progress events, NDJSON", content_type = "application/x-ndjson", body = ProgressEvent), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn restore_checkpoint(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<axum::response::Response, ControlError> {
    state.sprites.restore(&name, &id).await?;
    Ok(progress_stream(
        &format!("Restoring to {id}..."),
        format!("Restored to {id}"),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/sprites/{name}/checkpoints/{id}",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Sprite name"), ("id" = String, Path, description = "Checkpoint id (`v3`)")),
    responses((status = 204, description = "Deleted"), (status = 409, description = "The sprite's current state or a fork stands on it: {error, message} naming which", body = crate::error::ErrorBody), (status = "4XX", description = "Bad input, unknown sprite or checkpoint: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn delete_checkpoint(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, ControlError> {
    state.sprites.delete_checkpoint(&name, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct DiffQuery {
    /// The later checkpoint (`v4`); the sprite's current state when absent.
    #[serde(default)]
    to: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/checkpoints/{id}/diff",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Sprite name"), ("id" = String, Path, description = "The earlier checkpoint (`v3`)"), DiffQuery),
    responses((status = 200, description = "The files added, changed and deleted since checkpoint `id`", body = DiffView), (status = "4XX", description = "Bad input, unknown sprite or checkpoint: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed (a disk that is not ext4): {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn diff_checkpoint(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    query: Result<axum::extract::Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DiffView>, ControlError> {
    let axum::extract::Query(query) =
        query.map_err(|e| ControlError::BadRequest(format!("bad diff query: {e}")))?;
    Ok(Json(
        state.sprites.diff(&name, &id, query.to.as_deref()).await?,
    ))
}
