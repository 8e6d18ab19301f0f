//! The JSON shapes of the REST API (Sprites v1 names), shared by the
//! daemon's handlers and by [`crate::client`].

use serde::{Deserialize, Serialize};

use crate::registry::UrlAuth;

/// A sprite as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpriteView {
    pub id: String,
    pub name: String,
    pub organization: String,
    pub url: String,
    pub url_settings: UrlSettingsView,
    /// `cold`, `warm` or `running`.
    pub status: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
    /// Free-form tags (`GET /v1/sprites?label=x` filters by them).
    #[serde(default)]
    pub labels: Vec<String>,
    /// The machine the sprite runs on: what it asked for, else the host's defaults.
    #[serde(default)]
    pub config: ConfigView,
    /// Variables every command in the sprite gets.
    #[serde(default)]
    pub environment: std::collections::BTreeMap<String, String>,
    /// `default` or `dev`, when given at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// When the sprite sleeps and what it keeps (a wisp addition).
    #[serde(default)]
    pub sleep: SleepView,
    /// The sprite and checkpoint this one was forked from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::registry::SpriteSource>,
    /// The image its disk was first made from (a wisp addition; a fork shows its
    /// source's). Absent for sprites made before wisp recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A sprite's sleep settings in effect, and where its memory is while it sleeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SleepView {
    /// Seconds without a request before it goes warm; `null`: never.
    pub idle_timeout: Option<u64>,
    /// Seconds warm before it goes cold; `null`: never.
    pub cold_after: Option<u64>,
    /// Going cold keeps the memory in the bucket.
    pub keep_memory: bool,
    /// `local` (warm on this host), `bucket` (resumable on any host) or `null`.
    pub memory: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UrlSettingsView {
    pub auth: UrlAuth,
    /// `admins` or `org_users`, when set (recorded: one token opens a wisp host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_access: Option<String>,
}

/// A sprite's machine, Sprites' `config` shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigView {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub ram_mb: u64,
    /// Root disk in GB.
    pub storage_gb: u64,
    /// Where it runs: `local` unless given.
    pub region: String,
}

/// One page of `GET /v1/sprites`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListView {
    pub sprites: Vec<SpriteView>,
    pub has_more: bool,
    pub next_continuation_token: Option<String>,
}

/// A checkpoint as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointView {
    /// `v0`, `v1`, ...
    pub id: String,
    /// RFC 3339, UTC.
    pub create_time: String,
    /// Empty when none was given.
    pub comment: String,
}

/// `GET /v1/sprites/{name}/checkpoints/{id}/diff`: the files added, changed
/// and deleted from checkpoint `from` to checkpoint `to` (or the current state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiffView {
    pub from: String,
    /// `null` for the current state.
    pub to: Option<String>,
    /// Sorted by path.
    pub changes: Vec<ChangeView>,
}

/// One changed path in a [`DiffView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangeView {
    /// Absolute in the sprite: `/root/f`.
    pub path: String,
    /// `added`, `changed` or `deleted`.
    pub kind: String,
    /// `file`, `dir`, `symlink` or `special`.
    #[serde(rename = "type")]
    pub file_type: String,
}

impl From<wisp_volume::CheckpointInfo> for CheckpointView {
    fn from(c: wisp_volume::CheckpointInfo) -> CheckpointView {
        CheckpointView {
            id: c.id,
            create_time: crate::sprites::rfc3339_from_unix(c.created),
            comment: c.comment.unwrap_or_default(),
        }
    }
}

/// One line of a progress stream (checkpoint, restore).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgressEvent {
    /// `info`, `complete` or `error`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub time: String,
}

/// A service as the API shows it (Sprites' shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub cmd: String,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Services started first.
    #[serde(default)]
    pub needs: Vec<String>,
    /// The guest port the sprite's URL reaches when this service owns it.
    pub http_port: Option<u16>,
    pub state: ServiceStateView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceStateView {
    pub name: String,
    /// `running`, `starting` (not started yet, or between a death and its
    /// restart), `stopped` (on request) or `failed` (its last start failed).
    pub status: String,
    pub pid: Option<u32>,
    /// When the running process started (RFC 3339); absent when not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Why the last start failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Restarts since the sprite booted (starts after the first).
    pub restart_count: u32,
}
