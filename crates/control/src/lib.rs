//! The control plane: the `wisp server` daemon, its registry, its REST API,
//! the sprites it runs and the router to their URLs.
//!
//! The API follows the public Sprites v1 REST API so existing SDKs work
//! against wisp. Handlers only translate HTTP into calls on [`Sprites`]; one
//! `IntoResponse` impl turns errors into HTTP responses. Modules: `api`
//! (routes), `exec` (the exec WebSocket), `router` (sprite hosts and the
//! token), [`sprites`] (the lifecycle), [`machines`] (running VMs),
//! [`registry`] (SQLite), [`model`] (JSON shapes), [`client`] (for the CLI).

mod api;
pub mod boot_queue;
pub mod checkpoint_mounts;
pub mod warm;
pub use api::openapi;
pub mod client;
mod diff;
mod error;
mod exec;
pub mod files;
mod fork;
pub mod machines;
pub mod model;
pub mod registry;
mod router;
pub mod services;
pub mod sessions;
pub mod sleep;
pub mod sprites;
mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::ControlError;
pub use registry::Registry;
pub use sprites::Sprites;
use wisp_volume::{GcOptions, Store, StoreConfig};

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
    /// The image (standard or imported, by name) new sprites fork when a
    /// create names none.
    pub image: String,
    /// How often the store's gc and compaction run (zero: never).
    pub gc_interval: Duration,
    /// When sprites sleep: idle timeout, warm to cold, the warm-state budget.
    pub sleep: sleep::SleepPolicy,
    /// How many boots run at once and how many wakes may wait for one.
    pub wakes: boot_queue::WakeLimits,
    /// Sprite URLs are `http://<name>.<sprite_domain>:<port>`.
    pub sprite_domain: String,
    /// Whether API calls need the host's token (`$WISP_HOME/token`); on by
    /// default, on loopback too (any local user could otherwise run commands
    /// as root in every sprite).
    pub require_token: bool,
}

impl ServerConfig {
    /// The registry file on the embedded defaults.
    pub fn registry_path(&self) -> PathBuf {
        self.home.join("registry.db")
    }
}

/// Facts the daemon reports on `GET /v1/health`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub status: &'static str,
    pub version: &'static str,
    pub home: String,
    pub store: String,
    /// The registry file.
    pub registry: String,
    /// How many sprites the registry holds.
    pub sprites: u64,
}

/// A bound, not yet serving, daemon. Binding first lets callers learn the
/// real address when they asked for port 0.
pub struct Server {
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    sprites: Arc<Sprites>,
    /// The host's token (`$WISP_HOME/token`), made before the API answers.
    token: String,
}

impl Server {
    /// Opens the volume store and the registry, then binds the API listener.
    pub async fn bind(config: ServerConfig) -> Result<Self, ControlError> {
        std::fs::create_dir_all(&config.home).map_err(|source| ControlError::Home {
            path: config.home.clone(),
            source,
        })?;
        let store = Store::open(StoreConfig::new(
            config.store.clone(),
            config.home.join("cache"),
        ))
        .await
        .map_err(|source| ControlError::Store {
            url: config.store.clone(),
            source,
        })?;
        let registry = Registry::open(&config.registry_path())?;
        let sprites = Arc::new(Sprites::new(
            registry,
            store,
            config.home.clone(),
            config.image.clone(),
            config.sleep.clone(),
        ));
        sprites.machines.set_wake_limits(config.wakes);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ControlError::Bind {
                addr: config.listen,
                source,
            })?;
        // Written before the daemon says it is ready, so a client started
        // then finds it.
        let token =
            router::load_or_create_token(&config.home).map_err(|source| ControlError::Token {
                path: config.home.join("token"),
                source,
            })?;
        Ok(Self {
            listener,
            config,
            sprites,
            token,
        })
    }

    /// The address the API is listening on.
    pub fn local_addr(&self) -> Result<SocketAddr, ControlError> {
        self.listener.local_addr().map_err(ControlError::Io)
    }

    /// Serves until `shutdown` completes, running the store's gc and
    /// compaction in the background every `gc_interval`.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlError> {
        let maintenance = (!self.config.gc_interval.is_zero()).then(|| {
            let store = self.sprites.store().clone();
            let every = self.config.gc_interval;
            tokio::spawn(async move { store.run_maintenance(every, GcOptions::default()).await })
        });
        // Machines an earlier daemon left running (it crashed, or was killed) are
        // taken over before the first request.
        let adopted = self.sprites.adopt_running().await;
        if adopted > 0 {
            tracing::info!(adopted, "took over running sprites from an earlier daemon");
        }
        // The accelerator probe (seconds on a new host) runs now, not on the
        // first request's path.
        let preparing = {
            let sprites = self.sprites.clone();
            tokio::spawn(async move { sprites.prepare_early().await })
        };
        // Not aborted at shutdown but told to stop: a sprite it is putting to
        // sleep finishes its stop (and its upload) first.
        let (stop_sleeper, mut stopping) = tokio::sync::watch::channel(false);
        let sleeper = {
            let sprites = self.sprites.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => sprites.sleep_idle().await,
                        _ = stopping.changed() => return,
                    }
                }
            })
        };
        let port = self.local_addr()?.port();
        let sprites = self.sprites.clone();
        let state = api::AppState::new(self.config, self.sprites, port, self.token);
        // No Nagle: a streamed answer (headers, then body) would otherwise
        // wait for the client's delayed ACK, 40 ms a request on a kept-alive
        // connection (measured through the router: 32 ms vs 4 ms direct).
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ControlError::Io);
        if let Some(task) = maintenance {
            task.abort();
        }
        preparing.abort();
        // Stopping: every running sprite goes warm (its processes carry on under the
        // next daemon); each one's data is uploaded.
        let _ = stop_sleeper.send(true);
        let _ = sleeper.await;
        sprites.sleep_all().await;
        result
    }
}
