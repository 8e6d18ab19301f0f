//! TCP tunnels: a session that connects to a port in the guest and carries its bytes
//! both ways (the API's port proxy). Guest-to-host data flows under the host's window,
//! host-to-guest data under ours, as for exec; `Eof` from the host half-closes the
//! connection; the guest closing its side ends the session with `Eof` and `done`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wisp_proto::{Control, Kind, CHUNK, INITIAL_WINDOW};

use crate::channel::Credit;
use crate::server::Agent;

/// How long a connect may take before the request fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One open tunnel.
pub struct Tunnel {
    stream: TcpStream,
    /// `Some(bytes)` to write, `None` to half-close.
    tx: Mutex<Option<Sender<Option<Vec<u8>>>>>,
    /// Bytes received from the host but not yet written.
    inflight: Arc<AtomicU64>,
    pub credit: Arc<Credit>,
}

/// Connects to `host:port` in the guest (`localhost` is tried on every address it
/// names), answers `ok`, and starts the two copy threads.
pub fn open(agent: &Arc<Agent>, session: u32, host: &str, port: u16) -> io::Result<Arc<Tunnel>> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no address"));
    let mut stream = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or(last)?;
    let _ = stream.set_nodelay(true);
    let (tx, rx) = channel::<Option<Vec<u8>>>();
    let tunnel = Arc::new(Tunnel {
        stream: stream.try_clone()?,
        tx: Mutex::new(Some(tx)),
        inflight: Arc::new(AtomicU64::new(0)),
        credit: Arc::new(Credit::default()),
    });
    agent.out.control(session, &Control::Ok);

    // Host to guest.
    let mut writer = stream.try_clone()?;
    let (a, inflight) = (agent.clone(), tunnel.inflight.clone());
    std::thread::Builder::new()
        .name(format!("tunnel-w-{session}"))
        .spawn(move || {
            let mut broken = false;
            while let Ok(msg) = rx.recv() {
                let Some(data) = msg else {
                    let _ = writer.shutdown(Shutdown::Write);
                    continue;
                };
                if !broken {
                    broken = writer.write_all(&data).is_err();
                }
                inflight.fetch_sub(data.len() as u64, Ordering::SeqCst);
                a.out.window(session, data.len() as u32);
            }
        })?;

    // Guest to host.
    let mut reader = stream;
    let (a, credit) = (agent.clone(), tunnel.credit.clone());
    std::thread::Builder::new()
        .name(format!("tunnel-r-{session}"))
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            let mut bytes = 0u64;
            loop {
                let Some(n) = credit.take(CHUNK) else {
                    // Closed by the host.
                    a.finish(session);
                    return;
                };
                match reader.read(&mut buf[..n]) {
                    Ok(0) => break,
                    Ok(got) => {
                        credit.give_back(n - got);
                        bytes += got as u64;
                        if a.out.send_raw(Kind::Data, session, &buf[..got]).is_err() {
                            a.finish(session);
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => credit.give_back(n),
                    // A reset is the end of the connection too.
                    Err(_) => break,
                }
            }
            let _ = a.out.send_raw(Kind::Eof, session, &[]);
            a.out.control(session, &Control::Done { bytes });
            a.finish(session);
        })?;
    Ok(tunnel)
}

impl Tunnel {
    /// Queues bytes for the guest; `Err` if the host overran its window.
    pub fn send(&self, data: Vec<u8>) -> Result<(), String> {
        let len = data.len() as u64;
        let before = self.inflight.fetch_add(len, Ordering::SeqCst);
        if before + len > INITIAL_WINDOW as u64 {
            return Err(format!(
                "tunnel data overran the flow-control window: `{}` bytes in flight",
                before + len
            ));
        }
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(Some(data));
        }
        Ok(())
    }

    /// The host is done sending: half-close the connection once the queue is written.
    pub fn close_write(&self) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(None);
        }
    }

    /// The host abandoned the tunnel: close the connection.
    pub fn close(&self) {
        self.credit.close();
        self.close_write();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
