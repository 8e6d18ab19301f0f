//! The HTTP router: a request whose host is a sprite's (`<name>.localhost`
//! on the API's port) goes to port 8080 in that sprite, waking it first.
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

use crate::api::AppState;
use crate::registry::UrlAuth;
use crate::ControlError;

/// Largest request body passed to a sprite. Bodies are held whole so that
/// a request can be sent again while a freshly woken sprite's server starts.
const MAX_BODY: usize = 64 << 20;
/// How long a just-woken sprite may take to listen on its port.
const LISTEN_GRACE: Duration = Duration::from_secs(15);

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
            let open = request.uri().path() == "/v1/health";
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

async fn proxy(state: AppState, name: String, request: Request) -> Result<Response, ControlError> {
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
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        ControlError::BadRequest(format!(
            "cannot read the request body for sprite `{name}` (at most {MAX_BODY} bytes): {e}"
        ))
    })?;
    let activity = state.sprites.activity(&name).await?;
    let port = activity.awake().http_port();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut headers = parts.headers.clone();
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
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
    let client = state.http();
    // A sprite that just woke may not listen yet: its services start with
    // the boot. Until it has been awake for LISTEN_GRACE, a request that got
    // no answer is sent again (QEMU's forward accepts the connection and
    // resets it when nothing listens in the guest, so this is not only
    // "connection refused"); after that, no answer is a 502.
    let response = loop {
        let sent = client
            .request(parts.method.clone(), &url)
            .headers(headers.clone())
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => break response,
            Err(_) if activity.awake().awake_for() < LISTEN_GRACE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(ControlError::BadGateway(format!(
                    "sprite `{name}` did not answer on port {}: {}",
                    wisp_vm::machine::GUEST_HTTP_PORT,
                    crate::error::chain_of(&e)
                )))
            }
        }
    };
    let mut out = Response::builder().status(response.status());
    if let Some(h) = out.headers_mut() {
        for (k, v) in response.headers() {
            if !HOP_BY_HOP.contains(&k.as_str()) {
                h.append(k.clone(), v.clone());
            }
        }
    }
    // The sprite stays awake while its answer streams out.
    let stream = response
        .bytes_stream()
        .map_err(std::io::Error::other)
        .inspect_ok(move |_| {
            let _ = &activity;
        });
    out.body(Body::from_stream(stream))
        .map_err(|e| ControlError::BadGateway(format!("bad answer from sprite `{name}`: {e}")))
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
