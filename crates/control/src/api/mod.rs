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
mod sprites;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::http::HeaderValue;
use axum::routing::{get, post};
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
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(sprites::health))
        .route(
            "/v1/sprites",
            get(sprites::list_sprites).post(sprites::create_sprite),
        )
        .route(
            "/v1/sprites/{name}",
            get(sprites::get_sprite)
                .put(sprites::update_sprite)
                .delete(sprites::delete_sprite),
        )
        .route("/v1/sprites/{name}/proxy", get(proxy::proxy))
        .route("/v1/sprites/{name}/ports/watch", get(proxy::ports_watch))
        .route("/v1/sprites/{name}/upgrade", post(sprites::upgrade_sprite))
        .route("/v1/sprites/{name}/restart", post(sprites::restart_sprite))
        .route("/v1/sprites/{name}/check", get(sprites::check_sprite))
        .route(
            "/v1/sprites/{name}/policy/{kind}",
            get(policy::not_yet)
                .post(policy::not_yet)
                .delete(policy::not_yet),
        )
        .route(
            "/v1/sprites/{name}/exec",
            get(exec::exec_sprite).post(exec::exec_http),
        )
        .route("/v1/sprites/{name}/exec/{id}", get(exec::attach_session))
        .route(
            "/v1/sprites/{name}/exec/{id}/kill",
            post(exec::kill_session),
        )
        .route("/v1/sprites/{name}/fs/read", get(fs::read))
        .route("/v1/sprites/{name}/fs/write", axum::routing::put(fs::write))
        .route("/v1/sprites/{name}/fs/list", get(fs::list))
        .route(
            "/v1/sprites/{name}/fs/delete",
            axum::routing::delete(fs::delete),
        )
        .route("/v1/sprites/{name}/fs/rename", post(fs::rename))
        .route("/v1/sprites/{name}/fs/copy", post(fs::copy))
        .route("/v1/sprites/{name}/fs/chmod", post(fs::chmod))
        .route("/v1/sprites/{name}/fs/chown", post(fs::chown))
        .route("/v1/sprites/{name}/services", get(services::list_services))
        .route(
            "/v1/sprites/{name}/services/signal",
            post(services::signal_service),
        )
        .route(
            "/v1/sprites/{name}/services/{service}/start",
            post(services::start_service),
        )
        .route(
            "/v1/sprites/{name}/services/{service}/stop",
            post(services::stop_service),
        )
        .route(
            "/v1/sprites/{name}/services/{service}/restart",
            post(services::restart_service),
        )
        .route(
            "/v1/sprites/{name}/services/{service}/logs",
            get(services::service_logs),
        )
        .route(
            "/v1/sprites/{name}/services/{service}",
            get(services::get_service)
                .put(services::put_service)
                .delete(services::delete_service),
        )
        .route(
            "/v1/sprites/{name}/checkpoint",
            post(checkpoints::create_checkpoint),
        )
        .route(
            "/v1/sprites/{name}/checkpoints",
            get(checkpoints::list_checkpoints),
        )
        .route(
            "/v1/sprites/{name}/checkpoints/{id}",
            get(checkpoints::get_checkpoint),
        )
        .route(
            "/v1/sprites/{name}/checkpoints/{id}/restore",
            post(checkpoints::restore_checkpoint),
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
