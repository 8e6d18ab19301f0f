//! HTTP routes, in the shape of the public Sprites v1 REST API. Each handler
//! parses the request, calls [`Sprites`], and turns the answer into JSON;
//! every error goes out through `ControlError`'s `IntoResponse`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wisp_vm::machine::GUEST_HTTP_PORT;

use crate::model::{
    CheckpointView, ListView, ProgressEvent, ServiceStateView, ServiceView, SpriteView,
    UrlSettingsView,
};
use crate::registry::{SpriteRecord, UrlAuth};
use crate::sprites::{rfc3339, rfc3339_from_unix, Sprites};
use crate::{ControlError, HealthReport, ServerConfig};

/// Largest page of `GET /v1/sprites`, as in Sprites.
const MAX_PAGE: usize = 50;
/// wisp runs one organisation per daemon; this is its slug.
const ORGANIZATION: &str = "personal";

#[derive(Clone)]
pub(crate) struct AppState {
    config: Arc<ServerConfig>,
    pub(crate) sprites: Arc<Sprites>,
    /// Port of the API, which the sprite URLs share.
    port: u16,
    /// The host's token, for sprite URLs with auth `sprite`.
    token: Arc<str>,
    /// The router's client to the sprites (no redirects followed: a sprite's
    /// redirect is its answer).
    http: reqwest::Client,
}

impl AppState {
    pub(crate) fn new(
        config: ServerConfig,
        sprites: Arc<Sprites>,
        port: u16,
        token: String,
    ) -> Self {
        Self {
            config: Arc::new(config),
            sprites,
            port,
            token: token.into(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// A sprite's URL: its name as a subdomain of the sprite domain
    /// (`localhost` by default, which resolves to loopback without DNS
    /// set-up), on the API's port.
    fn sprite_url(&self, name: &str) -> String {
        format!("http://{name}.{}:{}", self.config.sprite_domain, self.port)
    }

    pub(crate) fn sprite_domain(&self) -> &str {
        &self.config.sprite_domain
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn require_token(&self) -> bool {
        self.config.require_token
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn view(&self, record: SpriteRecord) -> SpriteView {
        // "warm" (memory kept across sleep) is a later stage.
        let status = if self.sprites.is_awake(&record.name) {
            "running"
        } else {
            "cold"
        };
        SpriteView {
            url: self.sprite_url(&record.name),
            id: record.id,
            name: record.name,
            organization: ORGANIZATION.to_string(),
            url_settings: UrlSettingsView {
                auth: record.url_auth,
            },
            status: status.to_string(),
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/sprites", get(list_sprites).post(create_sprite))
        .route(
            "/v1/sprites/{name}",
            get(get_sprite).put(update_sprite).delete(delete_sprite),
        )
        .route("/v1/sprites/{name}/exec", get(exec_sprite))
        .route("/v1/sprites/{name}/services", get(list_services))
        .route(
            "/v1/sprites/{name}/services/{service}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route("/v1/sprites/{name}/checkpoint", post(create_checkpoint))
        .route("/v1/sprites/{name}/checkpoints", get(list_checkpoints))
        .route("/v1/sprites/{name}/checkpoints/{id}", get(get_checkpoint))
        .route(
            "/v1/sprites/{name}/checkpoints/{id}/restore",
            post(restore_checkpoint),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // In front of everything: sprite hosts never reach the API.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::router::route,
        ))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlSettings {
    auth: Option<UrlAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    url_settings: Option<UrlSettings>,
    /// Accepted for compatibility: a wisp host creates a sprite without
    /// waiting for capacity (creating is a fork; nothing boots).
    #[serde(default)]
    #[allow(dead_code)]
    wait_for_capacity: Option<bool>,
}

/// `PUT /v1/sprites/{name}`: as in Sprites, only `url_settings` can change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    url_settings: UrlSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    max_results: Option<usize>,
    #[serde(default)]
    continuation_token: Option<String>,
    /// Sent by the SDKs when listing every sprite; a page here always carries
    /// whole sprites, so it changes nothing.
    #[serde(default)]
    #[allow(dead_code)]
    bulk_load: Option<bool>,
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ControlError> {
    parsed
        .map(|Json(value)| value)
        .map_err(|rejection| ControlError::BadRequest(rejection.body_text()))
}

async fn health(State(state): State<AppState>) -> Result<Json<HealthReport>, ControlError> {
    let registry = state.sprites.registry();
    Ok(Json(HealthReport {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        home: state.config.home.display().to_string(),
        store: state.config.store.clone(),
        registry: registry.path().display().to_string(),
        sprites: registry.count()?,
    }))
}

async fn create_sprite(
    State(state): State<AppState>,
    request: Result<Json<CreateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<SpriteView>), ControlError> {
    let request = body(request)?;
    let auth = request
        .url_settings
        .and_then(|s| s.auth)
        .unwrap_or(UrlAuth::Sprite);
    let record = state.sprites.create(&request.name, auth).await?;
    Ok((StatusCode::CREATED, Json(state.view(record))))
}

async fn list_sprites(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ListView>, ControlError> {
    let Query(params) = params.map_err(|r| ControlError::BadRequest(r.body_text()))?;
    // As Sprites does, a larger page than the largest is the largest (the SDKs
    // ask for 100 when listing everything); zero is no page at all.
    let limit = params.max_results.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    if limit == 0 {
        return Err(ControlError::BadRequest(
            "max_results must be at least 1, got 0".into(),
        ));
    }
    let page = state.sprites.list(
        params.prefix.as_deref().unwrap_or(""),
        params.continuation_token.as_deref(),
        limit,
    )?;
    Ok(Json(ListView {
        has_more: page.next_after.is_some(),
        next_continuation_token: page.next_after,
        sprites: page.sprites.into_iter().map(|r| state.view(r)).collect(),
    }))
}

async fn get_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SpriteView>, ControlError> {
    Ok(Json(state.view(state.sprites.get(&name)?)))
}

async fn update_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Json<SpriteView>, ControlError> {
    let request = body(request)?;
    let auth = request.url_settings.auth.ok_or_else(|| {
        ControlError::BadRequest("url_settings.auth is required: `sprite` or `public`".into())
    })?;
    Ok(Json(state.view(state.sprites.set_url_auth(&name, auth)?)))
}

async fn delete_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ControlError> {
    state.sprites.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn not_found(uri: axum::http::Uri) -> ControlError {
    ControlError::NotFound(format!("no route for path `{}`", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ControlError {
    ControlError::MethodNotAllowed(format!("{method} {}", uri.path()))
}

fn checkpoint_view(c: wisp_volume::CheckpointInfo) -> CheckpointView {
    CheckpointView {
        id: c.id,
        create_time: rfc3339_from_unix(c.created),
        comment: c.comment.unwrap_or_default(),
    }
}

#[derive(Debug, Default, Deserialize)]
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

async fn create_checkpoint(
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

async fn list_checkpoints(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<CheckpointView>>, ControlError> {
    let list = state.sprites.checkpoints(&name).await?;
    Ok(Json(list.into_iter().map(checkpoint_view).collect()))
}

async fn get_checkpoint(
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

async fn restore_checkpoint(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<axum::response::Response, ControlError> {
    state.sprites.restore(&name, &id).await?;
    Ok(progress_stream(
        &format!("Restoring to {id}..."),
        format!("Restored to {id}"),
    ))
}

/// Runs a command in the sprite over a WebSocket (see `exec`). The upgrade is
/// answered at once and the wake, started here, runs to completion whatever
/// the client does; a sprite that does not exist is a 404 before the upgrade.
async fn exec_sprite(
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
struct ServiceBody {
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

async fn list_services(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ServiceView>>, ControlError> {
    let list = state.sprites.services(&name).await?;
    Ok(Json(list.into_iter().map(service_view).collect()))
}

async fn get_service(
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

async fn put_service(
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

async fn delete_service(
    State(state): State<AppState>,
    Path((name, service)): Path<(String, String)>,
) -> Result<StatusCode, ControlError> {
    state.sprites.remove_service(&name, &service).await?;
    Ok(StatusCode::NO_CONTENT)
}
