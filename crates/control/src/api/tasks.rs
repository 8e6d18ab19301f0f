//! `/v1/sprites/{name}/tasks`: keep-awake tasks from outside the sprite (the
//! same tasks programs inside set through `/.sprite/api.sock`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{body, AppState};
use crate::ControlError;

/// A task's life when the request gives none.
const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// `POST /v1/sprites/{name}/tasks`: creates task `name`, or refreshes it (a
/// heartbeat).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TaskBody {
    name: String,
    /// Seconds (`600`) or a duration (`"10m"`); 10 minutes when left out, at most
    /// an hour. Counted in the sprite's running time.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    ttl: Option<serde_json::Value>,
    #[serde(default)]
    description: Option<String>,
}

/// A live task.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct TaskView {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// Seconds each refresh gives it.
    ttl_secs: u64,
    /// Seconds of running time left.
    expires_in_secs: u64,
}

fn view(t: wisp_vm::agent::TaskInfo) -> TaskView {
    TaskView {
        name: t.name,
        description: t.description,
        ttl_secs: t.ttl_secs,
        expires_in_secs: t.expires_in_secs,
    }
}

#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/tasks",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "The live tasks (none while the sprite sleeps)", body = Vec<TaskView>), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn list_tasks(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<TaskView>>, ControlError> {
    let tasks = state.sprites.tasks(&name).await?;
    Ok(Json(tasks.into_iter().map(view).collect()))
}

#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/tasks",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = TaskBody,
    responses((status = 200, description = "The task, set; the sprite woken", body = TaskView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn set_task(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Result<Json<TaskBody>, JsonRejection>,
) -> Result<Json<TaskView>, ControlError> {
    let request = body(request)?;
    let ttl = match &request.ttl {
        None => DEFAULT_TTL,
        Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => {
            std::time::Duration::from_secs(n.as_u64().unwrap_or(0))
        }
        Some(serde_json::Value::String(s)) if crate::services::parse_duration(s).is_some() => {
            crate::services::parse_duration(s).unwrap_or_default()
        }
        Some(other) => {
            return Err(ControlError::BadRequest(format!(
                "bad `ttl` value `{other}`: give seconds or a duration like \"10m\""
            )))
        }
    };
    let task = state
        .sprites
        .set_task(&name, &request.name, ttl, request.description)
        .await?;
    Ok(Json(view(task)))
}

#[utoipa::path(
    delete,
    path = "/v1/sprites/{name}/tasks/{task}",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name"), ("task" = String, Path, description = "Task name")),
    responses((status = 204, description = "Ended"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn delete_task(
    State(state): State<AppState>,
    Path((name, task)): Path<(String, String)>,
) -> Result<StatusCode, ControlError> {
    state.sprites.delete_task(&name, &task).await?;
    Ok(StatusCode::NO_CONTENT)
}
