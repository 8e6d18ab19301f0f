//! Errors of the control plane and their HTTP form: a status code and a
//! JSON body `{"error": "<code>", "message": "..."}` (the Sprites SDKs' shape:
//! a machine code such as `not_found`, and a sentence that names the thing
//! that is wrong and carries the causes).

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wisp_volume::VolumeError;

use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the volume store `{url}`")]
    Store {
        url: String,
        #[source]
        source: VolumeError,
    },
    #[error("cannot create WISP_HOME `{}`", path.display())]
    Home {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or create the token file `{}`", path.display())]
    Token {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o error")]
    Io(#[source] std::io::Error),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadGateway(String),
    /// The request clashes with the state of what it names.
    #[error("{0}")]
    Conflict(String),
    /// A Sprites call wisp does not serve yet.
    #[error("{0}")]
    NotImplemented(String),
    /// The request is fine but the host cannot serve it yet (for example
    /// the standard image is not built).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{context}")]
    Volume {
        context: String,
        #[source]
        source: VolumeError,
    },
    #[error(transparent)]
    Image(#[from] wisp_vm::ImageError),
    /// Every boot slot is busy and as many wakes as the server lets wait
    /// already wait (see `crate::boot_queue`): the client retries later.
    #[error(
        "cannot wake sprite `{name}` now: this host's boots are all taken ({booting} at \
         once, `wisp server --boots-at-once`) and its queue of wakes is full ({waiting} \
         waiting, `--max-queued-wakes`); retry in a few seconds"
    )]
    WakeQueueFull {
        name: String,
        booting: usize,
        waiting: usize,
    },
    #[error("cannot wake sprite `{name}`")]
    Wake {
        name: String,
        #[source]
        source: wisp_vm::MachineError,
    },
    /// A filesystem call in a sprite failed with `errno` (`ENOENT`, ...).
    #[error("{message}")]
    Fs {
        errno: String,
        message: String,
        path: String,
    },
    /// Reading a sprite's filesystems for a diff failed (not ext4, unreadable).
    #[error("cannot diff the files of sprite `{name}`")]
    Diff {
        name: String,
        #[source]
        source: wisp_vm::fsdiff::FsDiffError,
    },
    #[error("exec in sprite `{name}` failed")]
    Exec {
        name: String,
        #[source]
        source: wisp_vm::agent::AgentError,
    },
}

impl ControlError {
    fn status(&self) -> StatusCode {
        match self {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ControlError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ControlError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ControlError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Unavailable(_)
            | ControlError::Wake { .. }
            | ControlError::WakeQueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Registry(RegistryError::AlreadyExists(_)) => StatusCode::CONFLICT,
            ControlError::Image(wisp_vm::ImageError::NotFound(_)) => StatusCode::NOT_FOUND,
            ControlError::Image(wisp_vm::ImageError::BadName(_)) => StatusCode::BAD_REQUEST,
            ControlError::Image(wisp_vm::ImageError::NotBuilt(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ControlError::Fs { errno, .. } => match errno.as_str() {
                "ENOENT" => StatusCode::NOT_FOUND,
                "EACCES" | "EPERM" | "EROFS" => StatusCode::FORBIDDEN,
                "EEXIST" => StatusCode::CONFLICT,
                "EISDIR" | "ENOTDIR" | "ENOTEMPTY" | "EINVAL" | "ELOOP" | "ENAMETOOLONG"
                | "EXDEV" => StatusCode::BAD_REQUEST,
                "ENOSPC" | "EDQUOT" => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ControlError::Volume {
                source: VolumeError::InUse { .. } | VolumeError::DeleteRefused { .. },
                ..
            } => StatusCode::CONFLICT,
            ControlError::Volume {
                source: VolumeError::CheckpointNotFound { .. },
                ..
            } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message with every cause, `outer: inner: innermost`, skipping a
    /// cause whose text the outer message already contains.
    pub fn chain(&self) -> String {
        chain_of(self)
    }
}

/// An error's message with every cause, `outer: inner: innermost`, skipping
/// a cause whose text the message already contains.
pub(crate) fn chain_of(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The body of every error answer (the Sprites SDKs' shape), for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A machine code: `not_found`, `conflict`, `invalid_request`, `unauthorized`, ...
    pub error: String,
    /// A sentence naming what is wrong, with its causes.
    pub message: String,
}

/// The body of a filesystem error (the SDKs' filesystem shape).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FsErrorBody {
    /// The sentence.
    pub error: String,
    /// The errno name: `ENOENT`, `EISDIR`, `ENOTEMPTY`, ...
    pub code: String,
    /// The path the call was about.
    pub path: String,
}

/// Seconds a client should wait before retrying a 503 (a sprite that could
/// not wake, a host not ready to run sprites, wakes queued past the limit).
const RETRY_AFTER_SECS: u32 = 5;

/// The machine-readable code the Sprites SDKs read from an error body's `error`
/// field, for an HTTP status.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_IMPLEMENTED => "not_implemented",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::BAD_GATEWAY => "bad_gateway",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal_error",
    }
}

/// The error body, in the Sprites SDKs' shape: `{"error": "<code>", "message": "<sentence>"}`.
impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.chain();
        if let ControlError::Fs { errno, path, .. } = &self {
            // The filesystem SDKs' shape: the sentence in `error`, the errno in `code`.
            let body = serde_json::json!({
                "error": message, "code": errno, "path": path, "message": message,
            });
            return (status, axum::Json(body)).into_response();
        }
        if status.is_server_error() {
            tracing::warn!(%status, error = %message, "request failed");
        }
        let body = serde_json::json!({ "error": code_of(status), "message": message });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // The SDKs read it to pace their retries.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// The sentence of an error body: `message` (this shape), else `error` (older wisp).
pub(crate) fn message_of(body: &serde_json::Value) -> Option<String> {
    body["message"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .map(str::to_string)
}
