//! The control plane: the `wisp server` daemon and its REST API.
//!
//! The API follows the public Sprites v1 REST API so existing SDKs work
//! against wisp. Handlers only translate HTTP into calls on the core; one
//! `IntoResponse` impl turns errors into HTTP responses.

mod api;
mod error;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use error::ControlError;

/// How the daemon is configured. Built by the CLI from flags, `WISP_*`
/// variables and defaults, in that order of precedence.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the REST API listens on.
    pub listen: SocketAddr,
    /// Where all local state lives (`$WISP_HOME`).
    pub home: PathBuf,
    /// Object store URL holding volume data and metadata.
    pub store: String,
}

/// Facts the daemon reports on `GET /v1/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub version: &'static str,
    pub home: String,
    pub store: String,
}

/// A bound, not yet serving, daemon. Binding first lets callers learn the
/// real address when they asked for port 0.
pub struct Server {
    listener: tokio::net::TcpListener,
    config: ServerConfig,
}

impl Server {
    /// Binds the API listener.
    pub async fn bind(config: ServerConfig) -> Result<Self, ControlError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ControlError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Self { listener, config })
    }

    /// The address the API is listening on.
    pub fn local_addr(&self) -> Result<SocketAddr, ControlError> {
        self.listener.local_addr().map_err(ControlError::Io)
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlError> {
        let state = api::AppState::new(self.config);
        let app = api::router(state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ControlError::Io)
    }
}
