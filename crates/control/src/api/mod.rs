//! HTTP routes, in the shape of the public Sprites v1 REST API: one file per
//! resource (`sprites`, `exec`, `checkpoints`, `services`, ...), each handler
//! parsing the request, calling [`Sprites`], and turning the answer into
//! JSON; every error goes out through `ControlError`'s `IntoResponse`
//! (`crate::error`).

mod checkpoints;
mod exec;
mod fs;
mod policy;
mod proxy;
pub(crate) use proxy::port_message;
mod services;
mod sleep;
mod sprites;
mod tasks;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::http::HeaderValue;
use axum::routing::get;
use axum::{Json, Router};

use crate::sprites::Sprites;
use crate::{ControlError, ServerConfig};

/// The `Sprite-Version` header on every answer: the version of the wisp
/// daemon that answered.
const SPRITE_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone)]
pub(crate) struct AppState {
    config: Arc<ServerConfig>,
    pub(crate) sprites: Arc<Sprites>,
    /// Port of the API, which the sprite URLs share.
    port: u16,
    /// The host's token, for sprite URLs with auth `sprite`.
    token: Arc<str>,
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
        }
    }

    /// A sprite's URL: its name as a subdomain of the sprite domain
    /// (`localhost` by default, which resolves to loopback without DNS
    /// set-up), on the API's port.
    pub(crate) fn sprite_url(&self, name: &str) -> String {
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

    /// Sprite `name` exists, and a wake it needs would be taken now (see
    /// [`crate::machines::Machines::wake_room`]): checked before a WebSocket
    /// upgrade that wakes it, so that a full boot queue is a 503, not an error
    /// on an open socket.
    pub(crate) fn check_wake(&self, name: &str) -> Result<(), ControlError> {
        self.sprites.get(name)?;
        self.sprites.machines.wake_room(name)
    }
}

/// The API's routes and, from the same handlers, its OpenAPI document: a
/// route is registered by `routes!` from its `#[utoipa::path]`, so the two
/// cannot disagree.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let mut doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("wisp")
                .version(SPRITE_VERSION)
                .description(Some(
                    "The Sprites v1 API as wisp serves it. Every call but /v1/health wants \
                     `Authorization: Bearer <token>` (the token in $WISP_HOME/token).",
                ))
                .build(),
        )
        .build();
    doc.paths = utoipa::openapi::Paths::new();
    OpenApiRouter::with_openapi(doc)
        .routes(routes!(sprites::health))
        .routes(routes!(sprites::list_sprites, sprites::create_sprite))
        .routes(routes!(
            sprites::get_sprite,
            sprites::update_sprite,
            sprites::delete_sprite
        ))
        .routes(routes!(sprites::upgrade_sprite))
        .routes(routes!(sprites::restart_sprite))
        .routes(routes!(sprites::check_sprite))
        .routes(routes!(sleep::sleep_sprite))
        .routes(routes!(sleep::wake_sprite))
        .routes(routes!(tasks::list_tasks, tasks::set_task))
        .routes(routes!(tasks::delete_task))
        .routes(routes!(proxy::proxy))
        .routes(routes!(proxy::ports_watch))
        .routes(routes!(policy::not_yet))
        .routes(routes!(exec::exec_sprite, exec::exec_http))
        .routes(routes!(exec::attach_session))
        .routes(routes!(exec::kill_session))
        .routes(routes!(fs::read))
        .routes(routes!(fs::write))
        .routes(routes!(fs::list))
        .routes(routes!(fs::delete))
        .routes(routes!(fs::rename))
        .routes(routes!(fs::copy))
        .routes(routes!(fs::chmod))
        .routes(routes!(fs::chown))
        .routes(routes!(fs::watch))
        .routes(routes!(services::list_services))
        .routes(routes!(services::signal_service))
        .routes(routes!(
            services::get_service,
            services::put_service,
            services::delete_service
        ))
        .routes(routes!(services::start_service))
        .routes(routes!(services::stop_service))
        .routes(routes!(services::restart_service))
        .routes(routes!(services::service_logs))
        .routes(routes!(checkpoints::create_checkpoint))
        .routes(routes!(checkpoints::list_checkpoints))
        .routes(routes!(
            checkpoints::get_checkpoint,
            checkpoints::delete_checkpoint
        ))
        .routes(routes!(checkpoints::restore_checkpoint))
        .routes(routes!(checkpoints::diff_checkpoint))
        .split_for_parts()
}

/// The OpenAPI document of this daemon's API (what `GET /v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

pub(crate) fn router(state: AppState) -> Router {
    let (routes, doc) = api();
    let doc = std::sync::Arc::new(doc);
    routes
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // In front of everything: sprite hosts never reach the API.
        // API answers only: a sprite's own answers through its URL are its own.
        .layer(axum::middleware::map_response(sprite_version))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::router::route,
        ))
        .with_state(state)
}

/// Adds `Sprite-Version` to an answer.
async fn sprite_version(mut response: axum::response::Response) -> axum::response::Response {
    response
        .headers_mut()
        .insert("sprite-version", HeaderValue::from_static(SPRITE_VERSION));
    response
}

/// An NDJSON answer whose lines `produce` sends; the answer ends when it returns.
pub(super) fn ndjson<F, Fut>(produce: F) -> axum::response::Response
where
    F: FnOnce(tokio::sync::mpsc::Sender<serde_json::Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<serde_json::Value>(64);
    tokio::spawn(produce(tx));
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let value = rx.recv().await?;
        let mut line = value.to_string();
        line.push('\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    ))
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ControlError> {
    parsed
        .map(|Json(value)| value)
        .map_err(|rejection| ControlError::BadRequest(rejection.body_text()))
}

async fn not_found(uri: axum::http::Uri) -> ControlError {
    ControlError::NotFound(format!("no route for path `{}`", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ControlError {
    ControlError::MethodNotAllowed(format!("{method} {}", uri.path()))
}
