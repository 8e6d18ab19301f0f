//! `/v1/sprites/{name}/fs/*`: a sprite's files, in the shape the Sprites SDKs
//! call (`path` and `workingDir` in the query or the JSON body; errors as
//! `{"error": "<sentence>", "code": "ENOENT", "path": "..."}`). Reads and
//! writes stream: a file of any size passes through in chunks.

use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use wisp_vm::agent::{FsEntry, FsOp, WriteOptions};

use super::{body, AppState};
use crate::files::resolve;
use crate::sprites::rfc3339;
use crate::ControlError;

fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, ControlError> {
    parsed
        .map(|Query(value)| value)
        .map_err(|r| ControlError::BadRequest(r.body_text()))
}

/// A mode as the SDKs send it: octal digits (`"0755"`), or a number of
/// permission bits.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum Mode {
    Octal(String),
    Bits(u32),
}

impl Mode {
    fn bits(&self) -> Result<u32, ControlError> {
        let bits = match self {
            Mode::Octal(text) => u32::from_str_radix(text, 8).ok(),
            Mode::Bits(bits) => Some(*bits),
        };
        bits.filter(|b| *b <= 0o7777).ok_or_else(|| {
            ControlError::BadRequest(format!(
                "bad `mode` {self:?}: give octal permission bits such as \"0644\""
            ))
        })
    }
}

/// A bool given as `true`/`false` (or `1`/`0`) in a query.
fn flag(key: &str, value: Option<&str>) -> Result<bool, ControlError> {
    value.map_or(Ok(false), |v| crate::exec::parse_bool(key, v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PathQuery {
    path: String,
    working_dir: Option<String>,
    recursive: Option<String>,
    pattern: Option<String>,
    /// Everything runs as root in a wisp sprite; accepted.
    as_root: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct WriteQuery {
    path: String,
    working_dir: Option<String>,
    mode: Option<String>,
    mkdir_parents: Option<String>,
    /// The docs' name for `mkdirParents`.
    mkdir: Option<String>,
    as_root: Option<String>,
}

/// `GET /fs/read?path=...`: the file's bytes, streamed.
#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/fs/read",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "The file's bytes, streamed", content_type = "application/octet-stream"), (status = "4XX", description = "{error, code (errno), path}", body = crate::error::FsErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn read(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<PathQuery>, QueryRejection>,
) -> Result<axum::response::Response, ControlError> {
    let params = query(params)?;
    flag("asRoot", params.as_root.as_deref())?;
    let path = resolve(&params.path, params.working_dir.as_deref())?;
    let download = state.sprites.read_file(&name, &path).await?;
    let size = download.stream.size;
    // The activity rides in the stream: the sprite stays awake until the last byte.
    let chunks = futures::stream::try_unfold(download, |mut d| async move {
        match d.stream.chunk().await {
            Ok(Some(chunk)) => Ok(Some((axum::body::Bytes::from(chunk), d))),
            Ok(None) => Ok(None),
            Err(e) => Err(std::io::Error::other(e)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

/// `PUT /fs/write?path=...`: the body becomes the file, streamed; missing
/// parent folders are made (`mkdirParents`, default true); an existing file
/// keeps its mode unless `mode` is given.
#[utoipa::path(
    put,
    path = "/v1/sprites/{name}/fs/write",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "{path, size, mode}", body = serde_json::Value), (status = "4XX", description = "{error, code (errno), path}", body = crate::error::FsErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn write(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<WriteQuery>, QueryRejection>,
    request: axum::body::Body,
) -> Result<Json<serde_json::Value>, ControlError> {
    let params = query(params)?;
    flag("asRoot", params.as_root.as_deref())?;
    let path = resolve(&params.path, params.working_dir.as_deref())?;
    let mode = params.mode.map(|m| Mode::Octal(m).bits()).transpose()?;
    let mkdir_parents = match params.mkdir_parents.or(params.mkdir) {
        Some(value) => crate::exec::parse_bool("mkdirParents", &value)?,
        None => true,
    };
    let options = WriteOptions {
        mode: mode.unwrap_or(0o644),
        uid: None,
        gid: None,
        mkdir_parents,
        keep_existing: mode.is_none(),
    };
    let reader = tokio_util::io::StreamReader::new(
        request.into_data_stream().map_err(std::io::Error::other),
    );
    let size = state
        .sprites
        .write_file(&name, &path, options, reader)
        .await?;
    Ok(Json(json!({
        "path": path,
        "size": size,
        "mode": format!("{:04o}", options.mode),
    })))
}

/// An entry as the SDKs read it.
fn entry_view(entry: FsEntry) -> serde_json::Value {
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64);
    json!({
        "name": entry.name,
        "path": entry.path,
        "type": entry.kind,
        "size": entry.size,
        "mode": format!("{:04o}", entry.mode),
        "modTime": rfc3339(mtime),
        "isDir": entry.kind == "directory",
    })
}

/// `GET /fs/list?path=...`: a folder's entries (everything below it with
/// `recursive`, filtered by the glob `pattern`), or a file's own entry (what
/// the SDKs' `stat` reads).
#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/fs/list",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 200, description = "{path, count, entries: [{name, path, type, size, mode, modTime, isDir}]}", body = serde_json::Value), (status = "4XX", description = "{error, code (errno), path}", body = crate::error::FsErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<PathQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ControlError> {
    let params = query(params)?;
    flag("asRoot", params.as_root.as_deref())?;
    let path = resolve(&params.path, params.working_dir.as_deref())?;
    let recursive = flag("recursive", params.recursive.as_deref())?;
    let entries = state
        .sprites
        .list_files(&name, &path, recursive, params.pattern.as_deref())
        .await?;
    Ok(Json(json!({
        "path": path,
        "count": entries.len(),
        "entries": entries.into_iter().map(entry_view).collect::<Vec<_>>(),
    })))
}

/// `DELETE /fs/delete?path=...` (or the same fields as a JSON body, as the
/// docs show): a file, or a folder (with `recursive` when not empty).
#[utoipa::path(
    delete,
    path = "/v1/sprites/{name}/fs/delete",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    request_body(content = Option<DeleteBody>, description = "Or path, workingDir, recursive in the query"),
    responses((status = 200, description = "{deleted, count}", body = serde_json::Value), (status = "4XX", description = "{error, code (errno), path}", body = crate::error::FsErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    raw_query: axum::extract::RawQuery,
    raw: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ControlError> {
    let params: PathQuery = if raw_query.0.as_deref().is_some_and(|q| !q.is_empty()) {
        query_string(raw_query.0.as_deref().unwrap_or(""))?
    } else if !raw.iter().all(u8::is_ascii_whitespace) {
        let body: DeleteBody = serde_json::from_slice(&raw)
            .map_err(|e| ControlError::BadRequest(format!("bad delete request: {e}")))?;
        PathQuery {
            path: body.path,
            working_dir: body.working_dir,
            recursive: Some(body.recursive.to_string()),
            pattern: None,
            as_root: None,
        }
    } else {
        return Err(ControlError::BadRequest("give a `path`".into()));
    };
    let path = resolve(&params.path, params.working_dir.as_deref())?;
    let recursive = flag("recursive", params.recursive.as_deref())?;
    state
        .sprites
        .file_op(
            &name,
            &path,
            FsOp::Delete {
                path: path.clone(),
                recursive,
            },
        )
        .await?;
    Ok(Json(json!({ "deleted": [path], "count": 1 })))
}

/// Parses a raw query string as [`Query`] would.
fn query_string<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, ControlError> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|e| ControlError::BadRequest(format!("bad query: {e}")))?;
    query(Query::try_from_uri(&uri))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct DeleteBody {
    path: String,
    working_dir: Option<String>,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    #[allow(dead_code)]
    as_root: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MoveBody {
    source: String,
    dest: String,
    working_dir: Option<String>,
    #[serde(default)]
    recursive: Option<bool>,
    #[serde(default)]
    preserve_attrs: bool,
    #[serde(default)]
    #[allow(dead_code)]
    as_root: bool,
}

/// `POST /fs/rename {source, dest}`: `rename(2)`, replacing `dest`.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/fs/rename",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = MoveBody,
    responses((status = 200, description = "{source, dest}", body = serde_json::Value), (status = "4XX", description = "{error, code (errno), path}", body = crate::error::FsErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn rename(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Result<Json<MoveBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ControlError> {
    let request = body(request)?;
    let from = resolve(&request.source, request.working_dir.as_deref())?;
    let to = resolve(&request.dest, request.working_dir.as_deref())?;
    let op = FsOp::Rename {
        from: from.clone(),
        to: to.clone(),
    };
    state.sprites.file_op(&name, &from, op).await?;
    Ok(Json(json!({ "source": from, "dest": to })))
}

/// `POST /fs/copy {source, dest, recursive, preserveAttrs}`.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/fs/copy",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = MoveBody,
    responses((status = 200, description = "{copied, count}", body = serde_json::Value), (status = "4XX", description = "{error, code (errno), path}", body = crate::error::FsErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn copy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Result<Json<MoveBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ControlError> {
    let request = body(request)?;
    let from = resolve(&request.source, request.working_dir.as_deref())?;
    let to = resolve(&request.dest, request.working_dir.as_deref())?;
    let op = FsOp::Copy {
        from: from.clone(),
        to: to.clone(),
        recursive: request.recursive.unwrap_or(false),
        preserve: request.preserve_attrs,
    };
    state.sprites.file_op(&name, &from, op).await?;
    Ok(Json(json!({
        "copied": [{ "source": from, "dest": to }],
        "count": 1,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ChmodBody {
    path: String,
    working_dir: Option<String>,
    mode: Mode,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    #[allow(dead_code)]
    as_root: bool,
}

/// `POST /fs/chmod {path, mode: "0755", recursive}`.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/fs/chmod",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = ChmodBody,
    responses((status = 200, description = "{affected, count}", body = serde_json::Value), (status = "4XX", description = "{error, code (errno), path}", body = crate::error::FsErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn chmod(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Result<Json<ChmodBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ControlError> {
    let request = body(request)?;
    let path = resolve(&request.path, request.working_dir.as_deref())?;
    let mode = request.mode.bits()?;
    let op = FsOp::Chmod {
        path: path.clone(),
        mode,
        recursive: request.recursive,
    };
    state.sprites.file_op(&name, &path, op).await?;
    Ok(Json(json!({
        "affected": [{ "path": path, "mode": format!("{mode:04o}") }],
        "count": 1,
    })))
}

/// An owner as the SDKs send it: a number or a name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum Owner {
    Id(u32),
    Name(String),
}

impl Owner {
    fn spec(self) -> String {
        match self {
            Owner::Id(id) => id.to_string(),
            Owner::Name(name) => name,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ChownBody {
    path: String,
    working_dir: Option<String>,
    uid: Option<Owner>,
    gid: Option<Owner>,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    #[allow(dead_code)]
    as_root: bool,
}

/// `POST /fs/chown {path, uid, gid, recursive}`: each a number or a name.
#[utoipa::path(
    post,
    path = "/v1/sprites/{name}/fs/chown",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    request_body = ChownBody,
    responses((status = 200, description = "{affected, count}", body = serde_json::Value), (status = "4XX", description = "{error, code (errno), path}", body = crate::error::FsErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn chown(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Result<Json<ChownBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ControlError> {
    let request = body(request)?;
    let path = resolve(&request.path, request.working_dir.as_deref())?;
    if request.uid.is_none() && request.gid.is_none() {
        return Err(ControlError::BadRequest("give `uid`, `gid` or both".into()));
    }
    let (user, group) = (request.uid.map(Owner::spec), request.gid.map(Owner::spec));
    let op = FsOp::Chown {
        path: path.clone(),
        user: user.clone(),
        group: group.clone(),
        recursive: request.recursive,
    };
    state.sprites.file_op(&name, &path, op).await?;
    Ok(Json(json!({
        "affected": [{ "path": path, "uid": user, "gid": group }],
        "count": 1,
    })))
}

/// The client's first message on `/fs/watch`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subscribe {
    #[serde(rename = "type")]
    kind: String,
    paths: Vec<String>,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    working_dir: Option<String>,
}

/// `GET /fs/watch` (WebSocket): the client sends `{"type": "subscribe",
/// "paths": [...], "recursive": bool, "workingDir": "/"}`; the server answers
/// `{"type": "subscribed", "paths": [...]}`, then one `{"type": "event", "path",
/// "event": "write"|"create"|"remove"|"rename"|"chmod", "timestamp", "size",
/// "isDir"}` per change, or `{"type": "error", "message"}` and a close. The
/// sprite stays awake while the watch is open.
#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/fs/watch",
    tag = "filesystem",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 101, description = "WebSocket: subscribe, then change events"))
)]
pub(super) async fn watch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<axum::response::Response, ControlError> {
    use axum::extract::ws::Message;
    use futures::{SinkExt, StreamExt};
    let upgrade = upgrade.map_err(|r| {
        ControlError::BadRequest(format!(
            "the file watch runs over a WebSocket: {}",
            r.body_text()
        ))
    })?;
    state.check_wake(&name)?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        let (mut to_client, mut from_client) = socket.split();
        let fail = |message: String| {
            Message::Text(json!({ "type": "error", "message": message }).to_string().into())
        };
        let first = loop {
            match from_client.next().await {
                Some(Ok(Message::Text(text))) => break text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        };
        let subscribed = async {
            let request: Subscribe = serde_json::from_str(&first).map_err(|e| {
                ControlError::BadRequest(format!(
                    "bad subscribe message `{first}`: {e}; send {{\"type\": \"subscribe\", \"paths\": [...]}}"
                ))
            })?;
            if request.kind != "subscribe" || request.paths.is_empty() {
                return Err(ControlError::BadRequest(
                    "the first message must be {\"type\": \"subscribe\", \"paths\": [...]}".into(),
                ));
            }
            let paths = request
                .paths
                .iter()
                .map(|p| resolve(p, request.working_dir.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            let activity = state.sprites.activity(&name).await?;
            let watched = paths.join(", ");
            let watch = activity
                .agent()
                .watch_files(paths.clone(), request.recursive)
                .await
                .map_err(crate::files::fs_error(&name, &watched))?;
            Ok::<_, ControlError>((activity, watch, paths))
        }
        .await;
        let (_activity, mut watch, paths) = match subscribed {
            Ok(ok) => ok,
            Err(e) => {
                let _ = to_client.send(fail(e.chain())).await;
                let _ = to_client.send(Message::Close(None)).await;
                return;
            }
        };
        let hello = json!({ "type": "subscribed", "paths": paths });
        if to_client.send(Message::Text(hello.to_string().into())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                events = watch.next() => match events {
                    Ok(events) => {
                        for e in events {
                            let event = json!({
                                "type": "event",
                                "path": e.path,
                                "event": e.kind,
                                "timestamp": rfc3339(SystemTime::now()),
                                "size": e.size,
                                "isDir": e.is_dir,
                            });
                            if to_client.send(Message::Text(event.to_string().into())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = to_client.send(fail(e.to_string())).await;
                        let _ = to_client.send(Message::Close(None)).await;
                        return;
                    }
                },
                message = from_client.next() => match message {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    _ => {}
                },
            }
        }
    }))
}
