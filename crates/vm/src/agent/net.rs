//! The agent client's network calls: TCP tunnels to ports in the guest and the
//! watch on its listening ports.

use wisp_proto::{Control, Kind, ListeningPort, CHUNK};

use super::{remote, reserve, unexpected, AgentClient, AgentError, Event, Inner, SendWindow};

/// A TCP connection to a port in the guest, carried over the agent channel.
/// Split it to read and write from two tasks.
pub struct Tunnel {
    session: super::Session,
}

/// The guest-to-host half of a [`Tunnel`]; dropping it closes the connection.
pub struct TunnelReader {
    session: super::Session,
    ended: bool,
}

/// The host-to-guest half of a [`Tunnel`].
#[derive(Clone)]
pub struct TunnelWriter {
    inner: std::sync::Arc<Inner>,
    id: u32,
    window: std::sync::Arc<SendWindow>,
}

impl Tunnel {
    pub fn split(self) -> (TunnelReader, TunnelWriter) {
        let writer = TunnelWriter {
            inner: self.session.inner.clone(),
            id: self.session.id,
            window: self.session.window.clone(),
        };
        (
            TunnelReader {
                session: self.session,
                ended: false,
            },
            writer,
        )
    }
}

impl TunnelReader {
    /// The next bytes from the guest, or `None` once the guest closed its side.
    pub async fn read(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            match self.session.next().await? {
                Event::Data(d) => {
                    self.session.inner.grant(self.session.id, d.len()).await;
                    return Ok(Some(d));
                }
                Event::Eof => {}
                Event::Control(Control::Done { .. }) => {
                    self.ended = true;
                    self.session.finished = true;
                    return Ok(None);
                }
                Event::Control(Control::Error { message, errno }) => {
                    self.session.finished = true;
                    return Err(remote(message, errno));
                }
                Event::Control(other) => return Err(unexpected(&other)),
                Event::Stderr(_) => {
                    return Err(AgentError::Protocol("stderr frame in a tunnel".into()))
                }
                Event::Closed(e) => return Err(e),
            }
        }
    }
}

impl TunnelWriter {
    /// Sends bytes to the guest, waiting while its window is full.
    pub async fn write(&self, mut data: &[u8]) -> Result<(), AgentError> {
        while !data.is_empty() {
            let n = reserve(&self.inner, &self.window, data.len().min(CHUNK)).await?;
            self.inner.send(Kind::Data, self.id, &data[..n]).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// No more bytes from the host: the guest's side reads end of file.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        self.inner.send(Kind::Eof, self.id, &[]).await
    }
}

/// Changes to the guest's listening ports ([`AgentClient::watch_ports`]); dropping it
/// stops the watch.
pub struct PortWatch {
    session: super::Session,
}

impl PortWatch {
    /// The next change: ports that started and stopped listening. The first is every
    /// port listening when the watch began.
    pub async fn next(&mut self) -> Result<(Vec<ListeningPort>, Vec<ListeningPort>), AgentError> {
        match self.session.next_control().await? {
            Control::Ports { opened, closed } => Ok((opened, closed)),
            other => Err(unexpected(&other)),
        }
    }
}

impl AgentClient {
    /// Connects to `host:port` in the guest; a refused connection is an
    /// [`AgentError::Os`] (`ECONNREFUSED`).
    pub async fn connect_tcp(&self, host: &str, port: u16) -> Result<Tunnel, AgentError> {
        let mut session = self.open();
        let request = Control::Connect {
            host: host.to_string(),
            port,
        };
        self.inner.send_control(session.id, &request).await?;
        match session.next_control().await? {
            Control::Ok => Ok(Tunnel { session }),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts watching the guest's listening TCP ports.
    pub async fn watch_ports(&self) -> Result<PortWatch, AgentError> {
        let session = self.open();
        self.inner
            .send_control(session.id, &Control::WatchPorts)
            .await?;
        Ok(PortWatch { session })
    }
}
