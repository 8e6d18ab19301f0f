//! The HTTP router: a request whose host is a sprite's (`<name>.localhost`
//! on the API's port) goes to its URL port in that sprite (8080, or the port of
//! the service that owns the URL), waking it first, through an agent tunnel.
//! A sprite whose URL auth is `sprite` wants the host's token as a bearer
//! token; a `public` one answers anyone. Every other request goes to the
//! API, which wants the token too when the daemon requires it.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use hyper_util::rt::TokioIo;

use crate::api::AppState;
use crate::machines::Activity;
use crate::registry::UrlAuth;
use crate::ControlError;

/// How long a just-woken sprite may take to listen on its port.
const LISTEN_GRACE: Duration = Duration::from_secs(15);

/// The guest port a sprite's URL reaches when no service owns the URL.
pub(crate) const DEFAULT_URL_PORT: u16 = 8080;

/// The host's token: a random secret in `$WISP_HOME/token` (mode 0600),
/// made on the first start. Requests to a sprite with URL auth `sprite`
/// carry it as `Authorization: Bearer <token>`.
pub fn load_or_create_token(home: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.join("token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(token)
}

/// The sprite a host names: `<name>.<domain>` with an optional port.
fn sprite_of_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let name = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!name.is_empty() && !name.contains('.')).then_some(name)
}

/// Middleware in front of the API: sprite hosts go to the sprite, every
/// other request to the API.
pub(crate) async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    match sprite_of_host(&host, state.sprite_domain()) {
        Some(name) => {
            let name = name.to_string();
            proxy(state, name, request)
                .await
                .unwrap_or_else(IntoResponse::into_response)
        }
        None => {
            // The API: with `require_token`, every call but the health check
            // carries the host's token.
            let open = matches!(request.uri().path(), "/v1/health" | "/v1/openapi.json");
            if state.require_token() && !open && !authorized(request.headers(), state.token()) {
                return ControlError::Unauthorized(
                    "this wisp server wants its token: send `Authorization: Bearer <token>` \
                     with the token in $WISP_HOME/token (the wisp CLI reads it from there \
                     or from WISP_TOKEN)"
                        .into(),
                )
                .into_response();
            }
            next.run(request).await
        }
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in
/// constant time (the time taken says nothing about how much of a guess was
/// right).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())))
}

/// Headers that belong to one connection, not to the request (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

async fn proxy(
    state: AppState,
    name: String,
    mut request: Request,
) -> Result<Response, ControlError> {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let record = state.sprites.get(&name)?;
    if record.url_auth == UrlAuth::Sprite && !authorized(request.headers(), state.token()) {
        return Err(ControlError::Unauthorized(format!(
            "sprite `{name}` answers its token holders only (url_settings.auth = sprite): \
             send `Authorization: Bearer <token>` with the token in $WISP_HOME/token, \
             or make it public"
        )));
    }
    let upgrade = is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let activity = state.sprites.activity(&name).await?;
    let port = record.settings.url_port.unwrap_or(DEFAULT_URL_PORT);
    // A sprite that just woke may not listen yet (its services start with the
    // boot): the request waits for the port, not in a buffer and a retry loop.
    wait_listening(&activity, port).await;
    let bad_gateway = |what: &str, e: &dyn std::error::Error| {
        ControlError::BadGateway(format!(
            "sprite `{name}` did not answer on port {port}: {what}: {}",
            crate::error::chain_of(e)
        ))
    };
    let io = tunnel(&activity, "localhost", port)
        .await
        .map(bridge)
        .map_err(|e| bad_gateway("cannot connect", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| bad_gateway("handshake", &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "a connection to a sprite ended with an error");
        }
    });

    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    // The sprite's token is for the router, not for the program in the sprite.
    if record.url_auth == UrlAuth::Sprite {
        headers.remove(header::AUTHORIZATION);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(peer) = peer {
        // Appended to what an earlier proxy said, as proxies do.
        let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert("x-forwarded-for", value);
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = axum::http::Request::builder()
        .method(parts.method)
        .uri(path)
        .version(axum::http::Version::HTTP_11)
        .body(body)
        .map_err(|e| ControlError::BadRequest(format!("cannot pass the request on: {e}")))?;
    *outgoing.headers_mut() = headers;
    // The body streams from the client to the sprite as it comes.
    let mut response = sender
        .send_request(outgoing)
        .await
        .map_err(|e| bad_gateway("no answer", &e))?;

    if response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
        // A WebSocket (or other upgrade): join the two upgraded connections.
        let sprite_side = hyper::upgrade::on(&mut response);
        let Some(client_side) = client_upgrade else {
            return Err(ControlError::BadGateway(format!(
                "sprite `{name}` switched protocols without being asked to"
            )));
        };
        tokio::spawn(async move {
            let _activity = activity;
            match tokio::try_join!(client_side, sprite_side) {
                Ok((client, sprite)) => {
                    let (mut client, mut sprite) = (TokioIo::new(client), TokioIo::new(sprite));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut sprite).await;
                }
                Err(e) => tracing::debug!(error = %e, "an upgrade through the router failed"),
            }
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    // The sprite stays awake while its answer streams out.
    let stream = Body::new(body)
        .into_data_stream()
        .map_err(std::io::Error::other)
        .inspect_ok(move |_| {
            let _ = &activity;
        });
    Ok(Response::from_parts(parts, Body::from_stream(stream)))
}

/// Whether a request asks to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header, as a WebSocket handshake does).
fn is_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// Removes the headers of one connection (and those `Connection` names),
/// keeping `Connection: upgrade` and `Upgrade` for an upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "upgrade")
        .collect();
    for h in named {
        headers.remove(h.as_str());
    }
    for h in HOP_BY_HOP {
        if upgrade && (h == "upgrade" || h == "connection") {
            continue;
        }
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Waits, while the sprite is within `LISTEN_GRACE` of its wake, until
/// something in it listens on `port`. A request that itself resumed a saved
/// machine does not wait for a port that was listening when it was saved: it
/// listens again (nothing in the guest ran in between to change it).
async fn wait_listening(activity: &Activity, port: u16) {
    let awake = activity.awake();
    if activity.woke_it() && awake.listening_at_wake.contains(&port) {
        return;
    }
    let Some(left) = LISTEN_GRACE.checked_sub(awake.awake_for()) else {
        return;
    };
    let _ = tokio::time::timeout(left, async {
        let Ok((now, mut events)) = awake.ports().await else {
            return;
        };
        if now.iter().any(|p| p.port == port) {
            return;
        }
        while let Ok(event) = events.recv().await {
            if event.opened && event.port.port == port {
                return;
            }
        }
    })
    .await;
}

/// A TCP connection to `port` on `host` in the sprite, through its agent. For
/// `localhost` (what the URL and `wisp sprite proxy` ask for) a server bound to
/// any of the guest's addresses answers: loopback first, then the addresses the
/// port listens on (a server bound to the guest's own address only).
pub(crate) async fn tunnel(
    activity: &Activity,
    host: &str,
    port: u16,
) -> Result<wisp_vm::agent::Tunnel, wisp_vm::agent::AgentError> {
    let agent = activity.agent();
    let error = match agent.connect_tcp(host, port).await {
        Ok(tunnel) => return Ok(tunnel),
        Err(e) if host != "localhost" => return Err(e),
        Err(e) => e,
    };
    let listening = match tokio::time::timeout(LISTEN_GRACE, activity.awake().ports()).await {
        Ok(Ok((now, _))) => now,
        _ => return Err(error),
    };
    for address in listening
        .iter()
        .filter(|p| p.port == port)
        .map(|p| p.address.as_str())
        .filter(|a| !is_wildcard_or_loopback(a))
    {
        if let Ok(tunnel) = agent.connect_tcp(address, port).await {
            return Ok(tunnel);
        }
    }
    Err(error)
}

/// Whether a listening address is one `localhost` already tried (loopback) or
/// covers (a wildcard: a server on it answers on loopback too).
fn is_wildcard_or_loopback(address: &str) -> bool {
    address
        .parse::<std::net::IpAddr>()
        .map_or(true, |ip| ip.is_unspecified() || ip.is_loopback())
}

/// An in-memory pipe whose far end is copied to and from `tunnel`.
fn bridge(tunnel: wisp_vm::agent::Tunnel) -> tokio::io::DuplexStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (near, far) = tokio::io::duplex(256 << 10);
    let (mut far_read, mut far_write) = tokio::io::split(far);
    let (mut reader, writer) = tunnel.split();
    tokio::spawn(async move {
        while let Ok(Some(data)) = reader.read().await {
            if far_write.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = far_write.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match far_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = writer.shutdown().await;
    });
    near
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sprite_hosts() {
        assert_eq!(
            sprite_of_host("web.localhost:7070", "localhost"),
            Some("web")
        );
        assert_eq!(sprite_of_host("web.localhost", "localhost"), Some("web"));
        assert_eq!(sprite_of_host("localhost:7070", "localhost"), None);
        assert_eq!(sprite_of_host("127.0.0.1:7070", "localhost"), None);
        assert_eq!(sprite_of_host("a.b.localhost", "localhost"), None);
        assert_eq!(sprite_of_host("web.example.com", "localhost"), None);
        assert_eq!(
            sprite_of_host("web.sprites.example.com", "sprites.example.com"),
            Some("web")
        );
    }

    #[test]
    fn localhost_covers_loopback_and_wildcard_listeners_only() {
        for covered in ["127.0.0.1", "127.0.0.53", "::1", "0.0.0.0", "::", "junk"] {
            assert!(is_wildcard_or_loopback(covered), "{covered}");
        }
        for own in ["10.0.2.15", "fe80::1", "192.168.1.2"] {
            assert!(!is_wildcard_or_loopback(own), "{own}");
        }
    }

    #[test]
    fn the_token_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token);
        let mode = std::fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
