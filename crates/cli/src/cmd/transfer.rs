//! `wisp sprite cp` and `wisp sprite proxy`: files to and from a sprite
//! through the filesystem API (streamed both ways), and a local port
//! forwarded to a port in a sprite through the `/proxy` WebSocket.

use std::process::ExitCode;

use anyhow::Context;
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wisp_control::client::Client;

/// One side of a copy: `NAME:/path` in a sprite, `-` for stdin/stdout, or a
/// local path.
#[derive(Debug, PartialEq, Eq)]
pub enum Place {
    Sprite { name: String, path: String },
    Std,
    Local(std::path::PathBuf),
}

impl Place {
    /// `NAME:PATH` is a sprite's file when NAME is a sprite name (a local
    /// path with a colon needs a `./` in front).
    pub fn parse(text: &str) -> Place {
        if text == "-" {
            return Place::Std;
        }
        if let Some((name, path)) = text.split_once(':') {
            if wisp_control::sprites::validate_name(name).is_ok() && !path.is_empty() {
                return Place::Sprite {
                    name: name.to_string(),
                    path: path.to_string(),
                };
            }
        }
        Place::Local(text.into())
    }
}

/// `wisp sprite cp SRC DST`: exactly one side is a sprite's.
pub async fn cp(client: &Client, src: &str, dst: &str) -> anyhow::Result<ExitCode> {
    match (Place::parse(src), Place::parse(dst)) {
        (Place::Sprite { name, path }, to @ (Place::Std | Place::Local(_))) => {
            let response = client.read_file(&name, &path).await?;
            let mut body = response.bytes_stream();
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = match &to {
                Place::Local(p) => Box::new(
                    tokio::fs::File::create(p)
                        .await
                        .with_context(|| format!("cannot create `{}`", p.display()))?,
                ),
                _ => Box::new(tokio::io::stdout()),
            };
            while let Some(chunk) = body.next().await {
                out.write_all(&chunk.context("the download broke")?).await?;
            }
            out.flush().await?;
        }
        (from @ (Place::Std | Place::Local(_)), Place::Sprite { name, path }) => {
            let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match &from {
                Place::Local(p) => Box::new(
                    tokio::fs::File::open(p)
                        .await
                        .with_context(|| format!("cannot open `{}`", p.display()))?,
                ),
                _ => Box::new(tokio::io::stdin()),
            };
            let stream = tokio_util::io::ReaderStream::new(reader);
            client
                .write_file(&name, &path, reqwest::Body::wrap_stream(stream))
                .await?;
        }
        (Place::Sprite { .. }, Place::Sprite { .. }) => {
            anyhow::bail!("copy between two sprites is not supported: copy through a local file")
        }
        _ => anyhow::bail!("one side of `wisp sprite cp` must be a sprite's file, as NAME:/path"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `PORT[:LOCAL]`: the sprite's port and the local one (default: the same).
pub fn parse_ports(text: &str) -> anyhow::Result<(u16, u16)> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("bad port `{p}`: use 1 to 65535"))
    };
    match text.split_once(':') {
        Some((remote, local)) => Ok((port(remote)?, port(local)?)),
        None => Ok((port(text)?, port(text)?)),
    }
}

/// `wisp sprite proxy NAME PORT[:LOCAL]`: listens on 127.0.0.1:LOCAL and
/// carries each connection to PORT in the sprite, until interrupted.
pub async fn proxy(client: Client, name: String, ports: &str) -> anyhow::Result<ExitCode> {
    let (remote, local) = parse_ports(ports)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{local}"))?;
    eprintln!(
        "wisp: 127.0.0.1:{} -> port {remote} of sprite {name} (Ctrl-C ends it)",
        listener.local_addr()?.port()
    );
    let client = std::sync::Arc::new(client);
    loop {
        let (conn, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let (client, name) = (client.clone(), name.clone());
        tokio::spawn(async move {
            if let Err(e) = carry(&client, &name, remote, conn).await {
                eprintln!("wisp: a connection to port {remote} of sprite {name}: {e}");
            }
        });
    }
}

/// Copies one local connection to and from a port in the sprite.
async fn carry(
    client: &Client,
    name: &str,
    port: u16,
    conn: tokio::net::TcpStream,
) -> anyhow::Result<()> {
    let socket = client.proxy(name, port).await?;
    let (mut to_sprite, mut from_sprite) = socket.split();
    let (mut read, mut write) = conn.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = read.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            to_sprite
                .send(Message::Binary(buf[..n].to_vec().into()))
                .await?;
        }
        to_sprite.send(Message::Close(None)).await?;
        anyhow::Ok(())
    };
    let down = async {
        while let Some(message) = from_sprite.try_next().await? {
            match message {
                Message::Binary(data) => write.write_all(&data).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        write.shutdown().await?;
        anyhow::Ok(())
    };
    tokio::try_join!(up, down)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_and_ports() {
        assert_eq!(
            Place::parse("box:/etc/hosts"),
            Place::Sprite {
                name: "box".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(Place::parse("-"), Place::Std);
        assert_eq!(Place::parse("./a:b"), Place::Local("./a:b".into()));
        assert_eq!(
            Place::parse("Bad_Name:/x"),
            Place::Local("Bad_Name:/x".into())
        );
        assert_eq!(parse_ports("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_ports("5432:15432").unwrap(), (5432, 15432));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("80:x")
            .unwrap_err()
            .to_string()
            .contains("bad port `x`"));
    }
}
