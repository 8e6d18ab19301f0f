//! HTTP routes. Each handler parses the request and calls the core.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::{HealthReport, ServerConfig};

#[derive(Clone)]
pub(crate) struct AppState {
    config: Arc<ServerConfig>,
}

impl AppState {
    pub(crate) fn new(config: ServerConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Json<HealthReport> {
    Json(HealthReport {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        home: state.config.home.display().to_string(),
        store: state.config.store.clone(),
    })
}

async fn not_found(uri: axum::http::Uri) -> crate::ControlError {
    crate::ControlError::NotFound(format!("no route for path `{}`", uri.path()))
}
