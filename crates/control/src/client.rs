//! A client of the REST API, for the `wisp sprite` commands: typed calls,
//! and errors that carry the daemon's own message.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::exec::{framed, EXIT, STDERR, STDIN, STDIN_EOF, STDOUT};
use crate::model::{CheckpointView, DiffView, ListView, ProgressEvent, ServiceView, SpriteView};
use crate::registry::UrlAuth;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the wisp server at {base} ({reason}); is `wisp server` running?")]
    Unreachable { base: String, reason: String },
    /// The daemon answered with an error; `message` is its own words.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    BadArgument(String),
    #[error("unexpected answer to {method} {url}: {reason}")]
    BadAnswer {
        method: Method,
        url: String,
        reason: String,
    },
}

/// The daemon at one base URL, like `http://127.0.0.1:7070`.
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Sent as a bearer token when set.
    token: Option<String>,
}

/// `/v1/sprites/{name}`, for a valid name only: a name is a path segment.
fn sprite_path(name: &str) -> Result<String, ClientError> {
    crate::sprites::validate_name(name).map_err(|e| ClientError::BadArgument(e.to_string()))?;
    Ok(format!("/v1/sprites/{name}"))
}

/// A service name as a path segment: the agent's rule for service names.
fn segment(service: &str) -> Result<&str, ClientError> {
    if wisp_vm::agent::ServiceSpec::valid_name(service) {
        Ok(service)
    } else {
        Err(ClientError::BadArgument(format!(
            "bad service name `{service}`: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot"
        )))
    }
}

/// A checkpoint id is a path segment too: `v` and digits.
fn checkpoint_id(id: &str) -> Result<&str, ClientError> {
    let ok = id.len() > 1 && id.starts_with('v') && id[1..].bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(id)
    } else {
        Err(ClientError::BadArgument(format!(
            "bad checkpoint id `{id}`: checkpoints are named v0, v1, ..."
        )))
    }
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            token: None,
        }
    }

    /// The base URL this client calls.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `token` as `Authorization: Bearer` with every call.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// Sends a request; the body of a 2xx answer, or the daemon's error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(String, String), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            base: self.base.clone(),
            reason: crate::error::chain_of(&e),
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| ClientError::BadAnswer {
            method: method.clone(),
            url: url.clone(),
            reason: crate::error::chain_of(&e),
        })?;
        if status.is_success() {
            return Ok((url, text));
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| crate::error::message_of(&v))
            .unwrap_or_else(|| format!("{method} {url} answered {status}: {text}"));
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let (url, text) = self.send(method.clone(), path, body).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer {
            method,
            url,
            reason: e.to_string(),
        })
    }

    /// Sends a request answered by a progress stream; the `complete`
    /// event's message.
    async fn progress(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, ClientError> {
        let (url, text) = self.send(Method::POST, path, body).await?;
        let bad = |reason: String| ClientError::BadAnswer {
            method: Method::POST,
            url: url.clone(),
            reason,
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let event: ProgressEvent =
                serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            match event.kind.as_str() {
                "complete" => return Ok(event.data.unwrap_or_default()),
                "error" => {
                    return Err(ClientError::Api {
                        status: StatusCode::OK.as_u16(),
                        message: event.error.unwrap_or_default(),
                    })
                }
                _ => {}
            }
        }
        Err(bad(
            "the progress stream ended without a `complete` event".into()
        ))
    }

    pub async fn create(&self, name: &str, auth: UrlAuth) -> Result<SpriteView, ClientError> {
        let body = serde_json::json!({ "name": name, "url_settings": { "auth": auth } });
        self.json(Method::POST, "/v1/sprites", Some(body)).await
    }

    /// Every sprite whose name starts with `prefix`, following the pages.
    pub async fn list(&self, prefix: &str) -> Result<Vec<SpriteView>, ClientError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("prefix", prefix);
            if let Some(t) = &token {
                query.append_pair("continuation_token", t);
            }
            let path = format!("/v1/sprites?{}", query.finish());
            let page: ListView = self.json(Method::GET, &path, None).await?;
            all.extend(page.sprites);
            match page.next_continuation_token {
                Some(next) if page.has_more => token = Some(next),
                _ => return Ok(all),
            }
        }
    }

    pub async fn get(&self, name: &str) -> Result<SpriteView, ClientError> {
        self.json(Method::GET, &sprite_path(name)?, None).await
    }

    /// Creates sprite `name` as a fork of `source` at `checkpoint` (its current
    /// state when `None`).
    pub async fn fork(
        &self,
        name: &str,
        source: &str,
        checkpoint: Option<&str>,
        auth: UrlAuth,
    ) -> Result<SpriteView, ClientError> {
        let body = serde_json::json!({
            "name": name,
            "url_settings": { "auth": auth },
            "source": { "sprite": source, "checkpoint": checkpoint },
        });
        self.json(Method::POST, "/v1/sprites", Some(body)).await
    }

    /// Puts sprite `name` to sleep now: warm (memory kept) or cold.
    pub async fn sleep(&self, name: &str, cold: bool) -> Result<SpriteView, ClientError> {
        let mode = if cold { "cold" } else { "warm" };
        let body = serde_json::json!({ "mode": mode });
        self.json(
            Method::POST,
            &format!("{}/sleep", sprite_path(name)?),
            Some(body),
        )
        .await
    }

    /// Wakes sprite `name` now.
    pub async fn wake(&self, name: &str) -> Result<SpriteView, ClientError> {
        self.json(Method::POST, &format!("{}/wake", sprite_path(name)?), None)
            .await
    }

    /// Changes sprite `name`'s settings: `changes` is an update body (`PUT
    /// /v1/sprites/{name}`).
    pub async fn update(
        &self,
        name: &str,
        changes: serde_json::Value,
    ) -> Result<SpriteView, ClientError> {
        self.json(Method::PUT, &sprite_path(name)?, Some(changes))
            .await
    }

    pub async fn set_url_auth(&self, name: &str, auth: UrlAuth) -> Result<SpriteView, ClientError> {
        let body = serde_json::json!({ "url_settings": { "auth": auth } });
        self.json(Method::PUT, &sprite_path(name)?, Some(body))
            .await
    }

    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &sprite_path(name)?, None)
            .await
            .map(|_| ())
    }

    /// Creates the next checkpoint; the daemon's completion message.
    pub async fn checkpoint(
        &self,
        name: &str,
        comment: Option<&str>,
    ) -> Result<String, ClientError> {
        let body = comment.map(|c| serde_json::json!({ "comment": c }));
        self.progress(&format!("{}/checkpoint", sprite_path(name)?), body)
            .await
    }

    pub async fn checkpoints(&self, name: &str) -> Result<Vec<CheckpointView>, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/sprites/{name}/checkpoints"),
            None,
        )
        .await
    }

    pub async fn services(&self, name: &str) -> Result<Vec<ServiceView>, ClientError> {
        self.json(
            Method::GET,
            &format!("{}/services", sprite_path(name)?),
            None,
        )
        .await
    }

    /// Creates or replaces service `service` of sprite `name`: `argv[0]` is
    /// the program.
    pub async fn put_service(
        &self,
        name: &str,
        service: &str,
        argv: &[String],
    ) -> Result<ServiceView, ClientError> {
        let (cmd, args) = argv
            .split_first()
            .ok_or_else(|| ClientError::BadArgument("a service needs a command".into()))?;
        let body = serde_json::json!({ "cmd": cmd, "args": args });
        let path = format!("{}/services/{}", sprite_path(name)?, segment(service)?);
        // The answer is the service's log for `duration`: none wanted here.
        self.send(Method::PUT, &format!("{path}?duration=0s"), Some(body))
            .await?;
        self.json(Method::GET, &path, None).await
    }

    pub async fn delete_service(&self, name: &str, service: &str) -> Result<(), ClientError> {
        let path = format!("{}/services/{}", sprite_path(name)?, segment(service)?);
        self.send(Method::DELETE, &path, None).await.map(|_| ())
    }

    /// The files added, changed and deleted from checkpoint `from` to checkpoint
    /// `to`, or to the current state.
    pub async fn diff(
        &self,
        name: &str,
        from: &str,
        to: Option<&str>,
    ) -> Result<DiffView, ClientError> {
        let mut path = format!(
            "{}/checkpoints/{}/diff",
            sprite_path(name)?,
            checkpoint_id(from)?
        );
        if let Some(to) = to {
            path.push_str(&format!("?to={}", checkpoint_id(to)?));
        }
        self.json(Method::GET, &path, None).await
    }

    /// Deletes checkpoint `checkpoint` of sprite `name` (409 while something
    /// stands on it).
    pub async fn delete_checkpoint(&self, name: &str, checkpoint: &str) -> Result<(), ClientError> {
        let path = format!(
            "{}/checkpoints/{}",
            sprite_path(name)?,
            checkpoint_id(checkpoint)?
        );
        self.send(Method::DELETE, &path, None).await.map(|_| ())
    }

    pub async fn restore(&self, name: &str, checkpoint: &str) -> Result<String, ClientError> {
        self.progress(
            &format!(
                "{}/checkpoints/{}/restore",
                sprite_path(name)?,
                checkpoint_id(checkpoint)?
            ),
            None,
        )
        .await
    }
}

/// What to run with [`Client::exec`].
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The program and its arguments; empty: the sprite user's login shell.
    pub argv: Vec<String>,
    /// Attach to this session instead of running `argv`.
    pub attach: Option<String>,
    /// A terminal of this many rows and columns.
    pub tty: Option<(u16, u16)>,
    /// Whether stdin is sent (it is closed at once otherwise).
    pub stdin: bool,
}

/// What a running command sends back.
#[derive(Debug)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The exit code (128 + N for a signal); the last output.
    Exit(i32),
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The sending half of an exec: stdin, its end, terminal size.
pub struct ExecSender {
    sink: futures::stream::SplitSink<Socket, WsMessage>,
    tty: bool,
}

/// The receiving half of an exec.
pub struct ExecReceiver {
    stream: futures::stream::SplitStream<Socket>,
    tty: bool,
    done: bool,
}

impl ExecSender {
    pub async fn stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let frame = if self.tty {
            data.to_vec()
        } else {
            framed(STDIN, data)
        };
        self.send(WsMessage::Binary(frame.into())).await
    }

    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        if self.tty {
            // A terminal has no end of input; Ctrl-D is a byte like any other.
            return Ok(());
        }
        self.send(WsMessage::Binary(vec![STDIN_EOF].into())).await
    }

    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        let text = serde_json::json!({ "type": "resize", "rows": rows, "cols": cols });
        self.send(WsMessage::Text(text.to_string().into())).await
    }

    async fn send(&mut self, message: WsMessage) -> Result<(), ClientError> {
        self.sink.send(message).await.map_err(|e| ClientError::Api {
            status: 0,
            message: format!("the exec connection broke: {e}"),
        })
    }
}

impl ExecReceiver {
    /// The next output; `None` when the connection ended.
    pub async fn recv(&mut self) -> Result<Option<ExecOutput>, ClientError> {
        while !self.done {
            let Some(message) = self.stream.next().await else {
                break;
            };
            let message = message.map_err(|e| ClientError::Api {
                status: 0,
                message: format!("the exec connection broke: {e}"),
            })?;
            match message {
                WsMessage::Binary(data) if self.tty => {
                    return Ok(Some(ExecOutput::Stdout(data.to_vec())))
                }
                WsMessage::Binary(data) => match data.split_first() {
                    Some((&STDOUT, d)) => return Ok(Some(ExecOutput::Stdout(d.to_vec()))),
                    Some((&STDERR, d)) => return Ok(Some(ExecOutput::Stderr(d.to_vec()))),
                    Some((&EXIT, d)) => {
                        self.done = true;
                        return Ok(Some(ExecOutput::Exit(
                            d.first().copied().unwrap_or(0) as i32
                        )));
                    }
                    _ => {}
                },
                WsMessage::Text(text) => {
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    match value["type"].as_str() {
                        Some("exit") => {
                            self.done = true;
                            let code = value["exit_code"].as_i64().unwrap_or(0) as i32;
                            return Ok(Some(ExecOutput::Exit(code)));
                        }
                        Some("error") => {
                            return Err(ClientError::Api {
                                status: 0,
                                message: value["error"].as_str().unwrap_or(&text).to_string(),
                            })
                        }
                        _ => {}
                    }
                }
                WsMessage::Close(_) => break,
                _ => {}
            }
        }
        Ok(None)
    }
}

impl Client {
    /// Runs a command in sprite `name` (waking it) and returns the two
    /// halves of the connection.
    pub async fn exec(
        &self,
        name: &str,
        options: &ExecOptions,
    ) -> Result<(ExecSender, ExecReceiver), ClientError> {
        let mut path = format!("{}/exec", sprite_path(name)?);
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(id) = &options.attach {
            path = format!(
                "{path}/{}",
                url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
            );
        }
        for arg in &options.argv {
            query.append_pair("cmd", arg);
        }
        query.append_pair("stdin", if options.stdin { "true" } else { "false" });
        if let Some((rows, cols)) = options.tty {
            query.append_pair("tty", "true");
            query.append_pair("rows", &rows.to_string());
            query.append_pair("cols", &cols.to_string());
        }
        let socket = self
            .websocket(&format!("{path}?{}", query.finish()))
            .await?;
        let tty = options.tty.is_some();
        let (sink, stream) = socket.split();
        Ok((
            ExecSender { sink, tty },
            ExecReceiver {
                stream,
                tty,
                done: false,
            },
        ))
    }

    /// Opens a WebSocket to `path` (with its query) on the daemon, with the token.
    async fn websocket(
        &self,
        path: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        ClientError,
    > {
        let url = format!("{}{path}", self.base.replacen("http", "ws", 1));
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::BadArgument(format!("bad url `{url}`: {e}")))?;
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                ClientError::BadArgument("the token is not a valid header value".into())
            })?;
            request.headers_mut().insert("authorization", value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| crate::error::message_of(&v))
                    .unwrap_or_else(|| format!("{path} answered {status}: {body}"));
                Err(ClientError::Api { status, message })
            }
            Err(e) => Err(ClientError::Unreachable {
                base: self.base.clone(),
                reason: crate::error::chain_of(&e),
            }),
            Ok((socket, _)) => Ok(socket),
        }
    }

    /// Sprite `name`'s exec sessions, as the API lists them.
    /// Sprite `name`'s live keep-awake tasks, as the API gives them.
    pub async fn tasks(&self, name: &str) -> Result<Vec<serde_json::Value>, ClientError> {
        self.json(Method::GET, &format!("{}/tasks", sprite_path(name)?), None)
            .await
    }

    /// Creates or refreshes task `task` on sprite `name` (waking it); `ttl` as the
    /// API takes it (`"10m"`, seconds), the API's default when `None`.
    pub async fn set_task(
        &self,
        name: &str,
        task: &str,
        ttl: Option<&str>,
        description: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut body = serde_json::json!({ "name": task });
        if let Some(ttl) = ttl {
            body["ttl"] = ttl.into();
        }
        if let Some(d) = description {
            body["description"] = d.into();
        }
        self.json(
            Method::POST,
            &format!("{}/tasks", sprite_path(name)?),
            Some(body),
        )
        .await
    }

    /// Ends task `task` of sprite `name`.
    pub async fn delete_task(&self, name: &str, task: &str) -> Result<(), ClientError> {
        // Percent-encoded: the guest checks the name.
        let task: String = url::form_urlencoded::byte_serialize(task.as_bytes()).collect();
        let path = format!("{}/tasks/{task}", sprite_path(name)?);
        self.send(Method::DELETE, &path, None).await.map(|_| ())
    }

    pub async fn sessions(&self, name: &str) -> Result<Vec<serde_json::Value>, ClientError> {
        let list: serde_json::Value = self
            .json(Method::GET, &format!("{}/exec", sprite_path(name)?), None)
            .await?;
        Ok(list["sessions"].as_array().cloned().unwrap_or_default())
    }

    /// Ends session `id` of sprite `name` with `signal` (SIGKILL after
    /// `timeout`); the events the daemon streamed, one JSON per line.
    pub async fn kill_session(
        &self,
        name: &str,
        id: &str,
        signal: &str,
    ) -> Result<String, ClientError> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("signal", signal);
        let id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let path = format!("{}/exec/{id}/kill?{}", sprite_path(name)?, query.finish());
        Ok(self.send(Method::POST, &path, None).await?.1)
    }

    fn fs_url(&self, name: &str, op: &str, path: &str) -> Result<String, ClientError> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("path", path);
        Ok(format!(
            "{}{}/fs/{op}?{}",
            self.base,
            sprite_path(name)?,
            query.finish()
        ))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Checks a streamed answer's status: the daemon's error message when it failed.
    async fn streamed(
        &self,
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, ClientError> {
        let response = sent.map_err(|e| ClientError::Unreachable {
            base: self.base.clone(),
            reason: crate::error::chain_of(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| crate::error::message_of(&v))
            .unwrap_or(text);
        Err(ClientError::Api { status, message })
    }

    /// File `path` of sprite `name`, as a streamed answer (read its body in chunks).
    pub async fn read_file(
        &self,
        name: &str,
        path: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.fs_url(name, "read", path)?;
        self.streamed(self.authorized(self.http.get(url)).send().await)
            .await
    }

    /// Writes file `path` of sprite `name` from `body` (streamed), making missing
    /// parent folders.
    pub async fn write_file(
        &self,
        name: &str,
        path: &str,
        body: reqwest::Body,
    ) -> Result<(), ClientError> {
        let url = self.fs_url(name, "write", path)?;
        self.streamed(self.authorized(self.http.put(url)).body(body).send().await)
            .await
            .map(|_| ())
    }

    /// A connection to `port` in sprite `name` over the `/proxy` WebSocket,
    /// after its handshake: binary messages carry the bytes.
    pub async fn proxy(
        &self,
        name: &str,
        port: u16,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        ClientError,
    > {
        let mut socket = self
            .websocket(&format!("{}/proxy", sprite_path(name)?))
            .await?;
        let hello = serde_json::json!({ "host": "localhost", "port": port });
        socket
            .send(WsMessage::Text(hello.to_string().into()))
            .await
            .map_err(|e| ClientError::Unreachable {
                base: self.base.clone(),
                reason: e.to_string(),
            })?;
        loop {
            match socket.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if answer["status"] == "connected" {
                        return Ok(socket);
                    }
                    return Err(ClientError::Api {
                        status: 502,
                        message: answer["error"].as_str().unwrap_or(&text).to_string(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(ClientError::Unreachable {
                        base: self.base.clone(),
                        reason: e.to_string(),
                    })
                }
                None => {
                    return Err(ClientError::Api {
                        status: 502,
                        message: format!("the proxy to port {port} of sprite `{name}` closed"),
                    })
                }
            }
        }
    }
}
