//! `/v1/sprites/{name}/proxy` and `/v1/sprites/{name}/ports/watch`: TCP to any
//! port in a sprite over a WebSocket, and its listening ports as they change.
//!
//! Proxy: the client's first text message is `{"host": "localhost", "port": N}`;
//! the server connects inside the sprite (waking it; `localhost` reaches a
//! server bound to any of the guest's addresses) and answers
//! `{"status": "connected", "target": "host:port"}` (or `{"status": "error",
//! ...}` and close 1011); then binary messages carry the connection's bytes
//! both ways. A close from either side closes the connection.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;

use super::AppState;
use crate::ControlError;

/// How long the server waits for the client's `{host, port}`.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(30);

fn upgraded(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    what: &str,
) -> Result<WebSocketUpgrade, ControlError> {
    upgrade.map_err(|r| {
        ControlError::BadRequest(format!("{what} runs over a WebSocket: {}", r.body_text()))
    })
}

#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/proxy",
    tag = "ports",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 101, description = "WebSocket: {host, port} first, then raw bytes"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn proxy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ControlError> {
    let upgrade = upgraded(upgrade, "the port proxy")?;
    state.check_wake(&name)?;
    Ok(upgrade.on_upgrade(move |socket| run_proxy(state, name, socket)))
}

#[derive(Deserialize)]
struct Target {
    #[serde(default)]
    host: Option<String>,
    port: u16,
}

async fn close(socket: &mut futures::stream::SplitSink<WebSocket, Message>, code: u16) {
    let frame = CloseFrame {
        code,
        reason: "".into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn run_proxy(state: AppState, name: String, socket: WebSocket) {
    let (mut to_client, mut from_client) = socket.split();
    // The handshake: the first text message.
    let first = tokio::time::timeout(HANDSHAKE, async {
        while let Some(Ok(message)) = from_client.next().await {
            if let Message::Text(text) = message {
                return Some(text);
            }
        }
        None
    })
    .await;
    let fail = |error: String, target: String| {
        serde_json::json!({ "status": "error", "target": target, "error": error }).to_string()
    };
    let target = match first {
        Ok(Some(text)) => match serde_json::from_str::<Target>(&text) {
            Ok(t) if t.port > 0 => Ok(t),
            Ok(_) => Err("port 0 cannot be reached: give a port from 1 to 65535".to_string()),
            Err(e) => Err(format!(
                "bad proxy handshake `{text}`: {e}; send {{\"host\": \"localhost\", \"port\": N}}"
            )),
        },
        Ok(None) => return,
        Err(_) => Err(format!("no proxy handshake within {HANDSHAKE:?}")),
    };
    let (host, port) = match target {
        Ok(t) => (t.host.unwrap_or_else(|| "localhost".into()), t.port),
        Err(error) => {
            let _ = to_client
                .send(Message::Text(fail(error, String::new()).into()))
                .await;
            return close(&mut to_client, axum::extract::ws::close_code::POLICY).await;
        }
    };
    let target = format!("{host}:{port}");
    let connected = async {
        let activity = state.sprites.activity(&name).await?;
        let tunnel = crate::router::tunnel(&activity, &host, port)
            .await
            .map_err(|source| ControlError::Exec {
                name: name.clone(),
                source,
            })?;
        Ok::<_, ControlError>((activity, tunnel))
    }
    .await;
    let (activity, tunnel) = match connected {
        Ok(ok) => ok,
        Err(e) => {
            let _ = to_client
                .send(Message::Text(fail(e.chain(), target).into()))
                .await;
            return close(&mut to_client, axum::extract::ws::close_code::ERROR).await;
        }
    };
    let hello = serde_json::json!({ "status": "connected", "target": target });
    if to_client
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let (mut reader, writer) = tunnel.split();
    let upstream = async {
        while let Some(Ok(message)) = from_client.next().await {
            match message {
                Message::Binary(data) if writer.write(&data).await.is_err() => return,
                Message::Close(_) => break,
                // Text after the handshake is ignored, as the SDKs expect.
                _ => {}
            }
        }
        let _ = writer.shutdown().await;
    };
    let downstream = async {
        loop {
            match reader.read().await {
                Ok(Some(data)) => {
                    if to_client.send(Message::Binary(data.into())).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    break close(&mut to_client, axum::extract::ws::close_code::NORMAL).await
                }
                Err(_) => break close(&mut to_client, axum::extract::ws::close_code::ERROR).await,
            }
        }
    };
    // The connection lives while either side still talks; it ends when the guest's
    // side closes (downstream) or the client goes away and the guest answered.
    tokio::pin!(upstream);
    tokio::pin!(downstream);
    tokio::select! {
        () = &mut upstream => downstream.await,
        () = &mut downstream => {}
    }
    drop(activity);
}

/// `{"type": "port_opened"|"port_closed", "port", "address", "pid"}`.
pub(crate) fn port_message(event: &crate::machines::PortEvent) -> serde_json::Value {
    serde_json::json!({
        "type": if event.opened { "port_opened" } else { "port_closed" },
        "port": event.port.port,
        "address": event.port.address,
        "pid": event.port.pid,
    })
}

/// `GET /v1/sprites/{name}/ports/watch` (WebSocket): a `port_list` of the
/// ports listening now, then `port_opened`/`port_closed` as they change. The
/// sprite stays awake while the socket is open.
#[utoipa::path(
    get,
    path = "/v1/sprites/{name}/ports/watch",
    tag = "ports",
    params(("name" = String, Path, description = "Sprite name")),
    responses((status = 101, description = "WebSocket: port_list, then port_opened/port_closed"), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn ports_watch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ControlError> {
    let upgrade = upgraded(upgrade, "the port watch")?;
    state.check_wake(&name)?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        let (mut to_client, mut from_client) = socket.split();
        let watched = async {
            let activity = state.sprites.activity(&name).await?;
            let (now, events) = activity.awake().ports().await?;
            Ok::<_, ControlError>((activity, now, events))
        }
        .await;
        let (_activity, now, mut events) = match watched {
            Ok(w) => w,
            Err(e) => {
                let error = serde_json::json!({ "type": "error", "error": e.chain() });
                let _ = to_client.send(Message::Text(error.to_string().into())).await;
                return close(&mut to_client, axum::extract::ws::close_code::ERROR).await;
            }
        };
        let list: Vec<_> = now
            .into_iter()
            .map(|port| port_message(&crate::machines::PortEvent { opened: true, port }))
            .collect();
        let first = serde_json::json!({ "type": "port_list", "ports": list });
        if to_client.send(Message::Text(first.to_string().into())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        let text = port_message(&event).to_string();
                        if to_client.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return close(&mut to_client, axum::extract::ws::close_code::NORMAL).await,
                },
                message = from_client.next() => match message {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    _ => {}
                },
            }
        }
    }))
}
