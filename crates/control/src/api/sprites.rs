//! `/v1/sprites` and `/v1/sprites/{name}`: create, list, get, update and
//! delete sprites, as the Sprites SDKs call them.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::{body, AppState};
use crate::model::{ConfigView, ListView, SleepView, SpriteView, UrlSettingsView};
use crate::registry::{SpriteConfig, SpriteRecord, SpriteSettings, UrlAuth};
use crate::sprites::{dedup_labels, DEFAULT_STORAGE_GB};
use crate::{ControlError, HealthReport};

/// Largest page of `GET /v1/sprites`, as in Sprites.
const MAX_PAGE: usize = 50;
/// wisp runs one organisation per daemon; this is its slug.
const ORGANIZATION: &str = "personal";

impl AppState {
    /// A sprite as the API shows it.
    pub(crate) fn view(&self, record: SpriteRecord) -> SpriteView {
        let status = self.sprites.status(&record);
        let sleep = SleepView {
            idle_timeout: self.sprites.idle_timeout(&record).map(|d| d.as_secs()),
            cold_after: self.sprites.cold_after(&record).map(|d| d.as_secs()),
            keep_memory: record.settings.keep_memory,
            memory: self.sprites.memory_place(&record).map(str::to_string),
        };
        let settings = record.settings;
        let config = &settings.config;
        SpriteView {
            url: self.sprite_url(&record.name),
            id: record.id,
            name: record.name,
            organization: ORGANIZATION.to_string(),
            url_settings: UrlSettingsView {
                auth: record.url_auth,
                private_access: settings.private_access,
            },
            status: status.to_string(),
            created_at: record.created_at,
            updated_at: record.updated_at,
            labels: settings.labels,
            config: ConfigView {
                cpus: config.cpus.unwrap_or(wisp_vm::machine::DEFAULT_CPUS),
                ram_mb: config
                    .ram_mb
                    .unwrap_or(wisp_vm::machine::DEFAULT_MEMORY_MIB),
                storage_gb: config.storage_gb.unwrap_or(DEFAULT_STORAGE_GB),
                region: config.region.clone().unwrap_or_else(|| "local".into()),
            },
            environment: settings.environment,
            runtime: settings.runtime,
            sleep,
            source: settings.source,
            image: settings.image,
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UrlSettings {
    auth: Option<UrlAuth>,
    private_access: Option<String>,
}

/// `POST /v1/sprites`, Sprites' fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    url_settings: Option<UrlSettings>,
    #[serde(default)]
    config: Option<ConfigBody>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    environment: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    runtime: Option<String>,
    /// Accepted: a wisp host creates a sprite without waiting for capacity
    /// (creating is a fork; nothing boots).
    #[serde(default)]
    #[allow(dead_code)]
    wait_for_capacity: Option<bool>,
    /// Seconds (`30`), a duration (`"5m"`) or `"never"`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    idle_timeout: Option<serde_json::Value>,
    /// Seconds, a duration or `"never"`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    cold_after: Option<serde_json::Value>,
    #[serde(default)]
    keep_memory: Option<bool>,
    /// The image the sprite's disk forks (a wisp addition): a standard image
    /// (`tiny`, `debian`) or one made with `wisp image import`; the server's
    /// default image (`wisp server --image`) when left out.
    #[serde(default)]
    image: Option<String>,
    /// Fork another sprite instead of the image: its checkpoint `checkpoint`, or its
    /// current state (a live checkpoint taken now). The fork copies the source's
    /// settings; with `source`, `config` is refused and other settings must be left out.
    #[serde(default)]
    source: Option<SourceBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceBody {
    sprite: String,
    #[serde(default)]
    checkpoint: Option<String>,
}

/// `idle_timeout` or `cold_after` as a request gives it: seconds, a duration
/// text (`"90s"`, `"5m"`), or `"never"` (stored as 0).
fn sleep_seconds(field: &str, value: &serde_json::Value) -> Result<u64, ControlError> {
    let bad = || {
        ControlError::BadRequest(format!(
            "bad `{field}` value `{value}`: give seconds, a duration like \"5m\", or \"never\""
        ))
    };
    match value {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(bad),
        serde_json::Value::String(s) if s == "never" => Ok(0),
        serde_json::Value::String(s) => crate::services::parse_duration(s)
            .map(|d| d.as_secs())
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigBody {
    cpus: Option<u32>,
    ram_mb: Option<u64>,
    storage_gb: Option<u64>,
    region: Option<String>,
}

/// `PUT /v1/sprites/{name}`: any of these, alone or together.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateBody {
    #[serde(default)]
    url_settings: Option<UrlSettings>,
    #[serde(default)]
    labels: Option<Vec<String>>,
    #[serde(default)]
    clear_labels: bool,
    /// Seconds, a duration or `"never"`; `null` for the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    idle_timeout: Option<Option<serde_json::Value>>,
    /// Seconds, a duration or `"never"`; `null` for the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    cold_after: Option<Option<serde_json::Value>>,
    #[serde(default)]
    keep_memory: Option<bool>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<serde_json::Value>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "sprites",
    responses((status = 200, description = "The daemon", body = crate::HealthReport), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn health(
    State(state): State<AppState>,
) -> Result<Json<HealthReport>, ControlError> {
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

#[utoipa::path(
    post,
    path = "/v1/sprites",
    tag = "sprites",
    request_body = CreateBody,
    responses((status = 201, description = "Created", body = SpriteView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn create_sprite(
    State(state): State<AppState>,
    request: Result<Json<CreateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<SpriteView>), ControlError> {
    let request = body(request)?;
    let url_settings = request.url_settings.unwrap_or_default();
    if let Some(source) = &request.source {
        let settings_given = request.config.is_some()
            || !request.labels.is_empty()
            || !request.environment.is_empty()
            || request.runtime.is_some()
            || request.idle_timeout.is_some()
            || request.cold_after.is_some()
            || request.keep_memory.is_some()
            || request.image.is_some()
            || url_settings.private_access.is_some();
        if settings_given {
            return Err(ControlError::BadRequest(
                "a fork (`source`) copies its source's settings: leave out `config`, `labels`, \
                 `environment`, `runtime`, `idle_timeout`, `cold_after`, `keep_memory` and `image`, \
                 and change them after"
                    .into(),
            ));
        }
        let auth = url_settings.auth.unwrap_or(UrlAuth::Sprite);
        let record = state
            .sprites
            .fork(
                &request.name,
                &source.sprite,
                source.checkpoint.as_deref(),
                auth,
            )
            .await?;
        return Ok((StatusCode::CREATED, Json(state.view(record))));
    }
    let config = request.config.unwrap_or_default();
    let settings = SpriteSettings {
        labels: dedup_labels(request.labels),
        config: SpriteConfig {
            cpus: config.cpus,
            ram_mb: config.ram_mb,
            storage_gb: config.storage_gb,
            region: config.region,
        },
        environment: request.environment,
        runtime: request.runtime,
        private_access: url_settings.private_access,
        idle_timeout: request
            .idle_timeout
            .as_ref()
            .map(|v| sleep_seconds("idle_timeout", v))
            .transpose()?,
        cold_after: request
            .cold_after
            .as_ref()
            .map(|v| sleep_seconds("cold_after", v))
            .transpose()?,
        keep_memory: request.keep_memory.unwrap_or(false),
        ..SpriteSettings::default()
    };
    let auth = url_settings.auth.unwrap_or(UrlAuth::Sprite);
    let record = state
        .sprites
        .create(&request.name, auth, settings, request.image.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(state.view(record))))
}

/// `GET /v1/sprites`: `prefix`, `max_results` (a larger page than 50 is 50, as
/// in Sprites), `continuation_token`, `label` (repeated: all must match),
/// `bulk_load` (accepted; a page here always carries whole sprites).
#[derive(Debug, Default)]
struct ListParams {
    prefix: String,
    labels: Vec<String>,
    max_results: usize,
    continuation_token: Option<String>,
}

impl ListParams {
    fn parse(query: &str) -> Result<ListParams, ControlError> {
        let mut params = ListParams {
            max_results: MAX_PAGE,
            ..ListParams::default()
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "prefix" => params.prefix = value.into_owned(),
                "label" | "labels" => params.labels.push(value.into_owned()),
                "continuation_token" => params.continuation_token = Some(value.into_owned()),
                "max_results" => {
                    params.max_results =
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                ControlError::BadRequest(format!(
                                    "bad `max_results` value `{value}`: use a count of at least 1"
                                ))
                            })?
                }
                "bulk_load" => {
                    crate::exec::parse_bool("bulk_load", &value)?;
                }
                other => {
                    return Err(ControlError::BadRequest(format!(
                        "unknown list parameter `{other}`"
                    )))
                }
            }
        }
        params.max_results = params.max_results.min(MAX_PAGE);
        Ok(params)
    }
}

#[utoipa::path(
    get,
    path = "/v1/sprites",
    tag = "sprites",
    params(("prefix" = Option<String>, Query, description = "Names starting with this"), ("max_results" = Option<u32>, Query, description = "Page size, at most 50"), ("continuation_token" = Option<String>, Query, description = "From the last page"), ("label" = Option<String>, Query, description = "Repeated: every label must match")),
    responses((status = 200, description = "A page (or, with Accept: application/x-ndjson, a watch stream)", body = ListView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn list_sprites(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ControlError> {
    let params = ListParams::parse(query.as_deref().unwrap_or(""))?;
    let ndjson = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if ndjson {
        return Ok(watch_sprites(state, params));
    }
    let page = state.sprites.list(
        &params.prefix,
        &params.labels,
        params.continuation_token.as_deref(),
        params.max_results,
    )?;
    Ok(Json(ListView {
        has_more: page.next_after.is_some(),
        next_continuation_token: page.next_after,
        sprites: page.sprites.into_iter().map(|r| state.view(r)).collect(),
    })
    .into_response())
}

/// Most sprites a watch lists at its start.
const WATCH_MAX: usize = 100_000;

/// How often `watchSprites` sends a heartbeat line when nothing changed.
const WATCH_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// `GET /v1/sprites` with `Accept: application/x-ndjson` (the JS SDK's
/// `watchSprites`): a line per matching sprite now, then a line each time one
/// is created, changes, wakes, sleeps or is deleted (`status: "deleted"`), and
/// a `heartbeat` line every 15 s; it lasts until the client goes away.
fn watch_sprites(state: AppState, params: ListParams) -> axum::response::Response {
    let changes = state.sprites.changes();
    let first = watched_names(&state, &params);
    let lines = futures::stream::unfold(
        (state, params, changes, first),
        |(state, params, mut changes, mut first)| async move {
            let line = loop {
                if let Some(name) = first.next() {
                    break watch_line(&state, &name);
                }
                let changed = tokio::time::timeout(WATCH_HEARTBEAT, changes.recv()).await;
                match changed {
                    Err(_) => break heartbeat(&state),
                    Ok(Ok(name)) if name.starts_with(&params.prefix) => {
                        break watch_line(&state, &name)
                    }
                    Ok(Ok(_)) => {}
                    // Missed changes: send the whole list again.
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                        first = watched_names(&state, &params);
                    }
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
                }
            };
            let mut text = line.to_string();
            text.push('\n');
            Some((
                Ok::<_, std::convert::Infallible>(text),
                (state, params, changes, first),
            ))
        },
    );
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// The names a watch lists in full: at its start, and after it missed changes.
fn watched_names(state: &AppState, params: &ListParams) -> std::vec::IntoIter<String> {
    state
        .sprites
        .list(&params.prefix, &params.labels, None, WATCH_MAX)
        .map(|page| page.sprites.into_iter().map(|r| r.name).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
}

/// Counts of this host's sprites by status, in the `org` shape of a watch line.
fn org_counts(state: &AppState) -> serde_json::Value {
    let total = state.sprites.registry().count().unwrap_or(0);
    let running = state.sprites.awake_count() as u64;
    let warm = state.sprites.warm_count();
    serde_json::json!({
        "name": ORGANIZATION,
        "running": running,
        "warm": warm,
        "cold": total.saturating_sub(running + warm),
    })
}

fn watch_line(state: &AppState, name: &str) -> serde_json::Value {
    let status = match state.sprites.get(name) {
        Ok(record) => state.view(record).status,
        Err(_) => "deleted".to_string(),
    };
    serde_json::json!({
        "name": name,
        "status": status,
        "timestamp": crate::sprites::rfc3339(std::time::SystemTime::now()),
        "org": org_counts(state),
    })
}

fn heartbeat(state: &AppState) -> serde_json::Value {
    serde_json::json!({
        "type": "heartbeat",
        "timestamp": crate::sprites::rfc3339(std::time::SystemTime::now()),
        "org": org_counts(state),
    })
}

/// `POST /v1/sprites/{name}/upgrade`: a wisp sprite boots the host's kernel and
/// agent at every wake, so it always runs the latest this host has; 204.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/upgrade",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 204, description = "Nothing to do: a sprite boots the host's runtime"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn upgrade_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ControlError> {
    state.sprites.get(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sprites/{name}/restart`: stops the sprite's VM and boots it again.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/restart",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "{sprite_name, machine_id, message}", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn restart_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ControlError> {
    let record = state.sprites.get(&name)?;
    state.sprites.restart(&name).await?;
    Ok(Json(serde_json::json!({
        "sprite_name": name,
        "machine_id": record.volume,
        "message": format!("sprite `{name}` restarted"),
    })))
}

/// `GET /v1/sprites/{name}/check`: `healthy` when its agent answers (with the
/// round trip in ms as `elapsed`), `unhealthy` with a `reason` when it does
/// not, `sleeping` when it sleeps (a check does not wake it).
#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/check",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "{sprite_name, sprite_id, status, reason, checked_at, elapsed}", body = serde_json::Value), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn check_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ControlError> {
    let record = state.sprites.get(&name)?;
    let (status, reason, elapsed) = match state.sprites.check(&name).await? {
        None => (
            "sleeping",
            Some("asleep; it wakes on its next request".to_string()),
            None,
        ),
        Some(Ok(rtt)) => ("healthy", None, Some(rtt.as_millis() as u64)),
        Some(Err(why)) => ("unhealthy", Some(why), None),
    };
    Ok(Json(serde_json::json!({
        "sprite_name": name,
        "sprite_id": record.id,
        "status": status,
        "reason": reason,
        "checked_at": crate::sprites::rfc3339(std::time::SystemTime::now()),
        "elapsed": elapsed,
    })))
}

#[utoipa::path(
    get,
    path = "/v1/sprites/{name}",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "The sprite", body = SpriteView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn get_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SpriteView>, ControlError> {
    Ok(Json(state.view(state.sprites.get(&name)?)))
}

#[utoipa::path(
    put,
    path = "/v1/sprites/{name}",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = UpdateBody,
    responses((status = 200, description = "The sprite after the change", body = SpriteView), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn update_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Json<SpriteView>, ControlError> {
    let request = body(request)?;
    if request.url_settings.is_none()
        && request.labels.is_none()
        && !request.clear_labels
        && request.idle_timeout.is_none()
        && request.cold_after.is_none()
        && request.keep_memory.is_none()
    {
        return Err(ControlError::BadRequest(
            "nothing to update: give `url_settings`, `labels`, `clear_labels`, `idle_timeout`, \
             `cold_after` or `keep_memory`"
                .into(),
        ));
    }
    let seconds = |field: &str, v: &Option<Option<serde_json::Value>>| match v {
        Some(Some(v)) => sleep_seconds(field, v).map(|s| Some(Some(s))),
        Some(None) => Ok(Some(None)),
        None => Ok(None),
    };
    let idle_timeout = seconds("idle_timeout", &request.idle_timeout)?;
    let cold_after = seconds("cold_after", &request.cold_after)?;
    let record = state.sprites.update(&name, |record| {
        if let Some(v) = idle_timeout {
            record.settings.idle_timeout = v;
        }
        if let Some(v) = cold_after {
            record.settings.cold_after = v;
        }
        if let Some(keep) = request.keep_memory {
            record.settings.keep_memory = keep;
        }
        if let Some(url_settings) = request.url_settings {
            if let Some(auth) = url_settings.auth {
                record.url_auth = auth;
            }
            if url_settings.private_access.is_some() {
                record.settings.private_access = url_settings.private_access;
            }
        }
        if request.clear_labels {
            record.settings.labels.clear();
        }
        if let Some(labels) = request.labels {
            record.settings.labels = dedup_labels(labels);
        }
    })?;
    Ok(Json(state.view(record)))
}

#[utoipa::path(
    delete,
    path = "/v1/sprites/{name}",
    tag = "sprites",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 204, description = "Deleted with its disk and checkpoints"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn delete_sprite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ControlError> {
    state.sprites.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parameters_clamp_and_name_bad_values() {
        let p =
            ListParams::parse("max_results=100&bulk_load=true&label=a&label=b&prefix=w").unwrap();
        assert_eq!(p.max_results, MAX_PAGE);
        assert_eq!(p.labels, ["a", "b"]);
        assert_eq!(p.prefix, "w");
        for (query, names) in [
            ("max_results=0", "bad `max_results` value `0`"),
            ("max_results=many", "bad `max_results` value `many`"),
            ("bulk_load=perhaps", "bad `bulk_load` value `perhaps`"),
            ("colour=red", "unknown list parameter `colour`"),
        ] {
            let err = ListParams::parse(query).unwrap_err().to_string();
            assert!(err.contains(names), "{query}: {err}");
        }
    }
}
