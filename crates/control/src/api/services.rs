//! `/v1/sprites/{name}/services`: a sprite's long-running processes.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use wisp_vm::machine::GUEST_HTTP_PORT;

use super::{body, AppState};
use crate::model::{ServiceStateView, ServiceView};
use crate::ControlError;

fn service_view(status: wisp_vm::agent::ServiceStatus) -> ServiceView {
    let mut argv = status.spec.argv.into_iter();
    let name = status.spec.name;
    ServiceView {
        cmd: argv.next().unwrap_or_default(),
        args: argv.collect(),
        needs: Vec::new(),
        http_port: Some(GUEST_HTTP_PORT),
        state: ServiceStateView {
            name: name.clone(),
            // Not started yet (the agent starts services in the background),
            // running, or between a death and its restart.
            status: match (status.pid, status.starts) {
                (Some(_), _) => "running",
                (None, 0) => "starting",
                (None, _) => "stopped",
            }
            .to_string(),
            pid: status.pid,
            starts: status.starts,
        },
        name,
    }
}

/// `PUT /v1/sprites/{name}/services/{service}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceBody {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    http_port: Option<u16>,
    /// Added to the service's default environment.
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    dir: Option<String>,
}

pub(super) async fn list_services(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ServiceView>>, ControlError> {
    let list = state.sprites.services(&name).await?;
    Ok(Json(list.into_iter().map(service_view).collect()))
}

pub(super) async fn get_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
) -> Result<Json<ServiceView>, ControlError> {
    state
        .sprites
        .services(&name)
        .await?
        .into_iter()
        .find(|s| s.spec.name == service)
        .map(|s| Json(service_view(s)))
        .ok_or_else(|| crate::sprites::service_not_found(&name, &service))
}

pub(super) async fn put_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
    request: Result<Json<ServiceBody>, JsonRejection>,
) -> Result<Json<ServiceView>, ControlError> {
    let request = body(request)?;
    if !wisp_vm::agent::ServiceSpec::valid_name(&service) {
        return Err(ControlError::BadRequest(format!(
            "bad service name `{service}`: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot"
        )));
    }
    if !request.needs.is_empty() {
        return Err(ControlError::BadRequest(
            "service dependencies (`needs`) are not supported yet: give `needs: []`".into(),
        ));
    }
    if let Some(port) = request.http_port.filter(|p| *p != GUEST_HTTP_PORT) {
        return Err(ControlError::BadRequest(format!(
            "http_port {port}: a wisp sprite's URL reaches port {GUEST_HTTP_PORT} in the guest; listen there"
        )));
    }
    if request.cmd.is_empty() {
        return Err(ControlError::BadRequest("a service needs a `cmd`".into()));
    }
    let mut argv = vec![request.cmd];
    argv.extend(request.args);
    let spec = wisp_vm::agent::ServiceSpec {
        name: service,
        argv,
        env: request.env.into_iter().collect(),
        cwd: request.dir,
        user: None,
    };
    let status = state.sprites.define_service(&name, spec).await?;
    Ok(Json(service_view(status)))
}

pub(super) async fn delete_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
) -> Result<StatusCode, ControlError> {
    state.sprites.remove_service(&name, &service).await?;
    Ok(StatusCode::NO_CONTENT)
}
