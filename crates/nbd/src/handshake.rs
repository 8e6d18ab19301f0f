//! The newstyle fixed handshake: greets the client, answers options (GO, INFO,
//! EXPORT_NAME, LIST, ABORT) and picks the export for the transmission phase.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::protocol::{self as p, GoRequest, OptionHeader};
use crate::{BlockDevice, NbdError};

/// The exports a server offers, by name. The first export added is also the
/// default, served to clients that ask for the empty name.
#[derive(Clone, Default)]
pub(crate) struct Exports {
    by_name: BTreeMap<String, Arc<dyn BlockDevice>>,
    default: Option<String>,
}

impl Exports {
    pub(crate) fn insert(&mut self, name: &str, dev: Arc<dyn BlockDevice>) {
        if self.default.is_none() {
            self.default = Some(name.to_owned());
        }
        self.by_name.insert(name.to_owned(), dev);
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn BlockDevice>> {
        self.by_name.get(name).or_else(|| {
            if name.is_empty() {
                self.default.as_ref().and_then(|d| self.by_name.get(d))
            } else {
                None
            }
        })
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub(crate) fn devices(&self) -> impl Iterator<Item = (&str, &Arc<dyn BlockDevice>)> {
        self.by_name.iter().map(|(n, d)| (n.as_str(), d))
    }
}

/// What the handshake ended with.
pub(crate) enum Outcome {
    /// Enter transmission on this export.
    Export {
        name: String,
        dev: Arc<dyn BlockDevice>,
    },
    /// The client aborted (`NBD_OPT_ABORT`) or hung up cleanly between options.
    Closed,
}

/// Properties of an export as advertised to clients.
pub(crate) fn export_flags(dev: &dyn BlockDevice) -> u16 {
    p::transmission_flags(dev.read_only(), dev.can_multi_conn())
}

/// Minimum, preferred and maximum block sizes, sanitised so a device reporting
/// a nonsensical value cannot make the server advertise one.
pub(crate) fn block_sizes(dev: &dyn BlockDevice) -> (u32, u32, u32) {
    let pow2 = |v: u32, dflt: u32| {
        if v.is_power_of_two() && v <= 65536 {
            v
        } else {
            dflt
        }
    };
    let min = pow2(dev.min_block_size(), 1);
    let preferred = pow2(dev.block_size(), 4096).max(min).max(512);
    (min, preferred, p::MAX_REQUEST_LEN)
}

/// Runs the handshake on a fresh connection.
pub(crate) async fn negotiate<R, W>(
    r: &mut R,
    w: &mut W,
    exports: &Exports,
) -> Result<Outcome, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 18];
    greeting[0..8].copy_from_slice(&p::NBD_MAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&p::IHAVEOPT.to_be_bytes());
    greeting[16..18].copy_from_slice(&(p::FLAG_FIXED_NEWSTYLE | p::FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting).await?;
    w.flush().await?;

    let client_flags = r.read_u32().await?;
    if client_flags & !(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::ClientFlags {
            flags: client_flags,
        });
    }
    let no_zeroes = client_flags & p::FLAG_C_NO_ZEROES != 0;

    loop {
        let mut hdr = [0u8; p::OPTION_HEADER_LEN];
        match r.read_exact(&mut hdr).await {
            Ok(_) => {}
            // A client may simply hang up between options (nbdinfo --list does
            // after ABORT; some probes do without it).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Outcome::Closed),
            Err(e) => return Err(e.into()),
        }
        let opt = OptionHeader::parse(&hdr).map_err(|m| NbdError::BadMagic { magic: m.0 })?;
        if opt.length > p::MAX_OPTION_LEN {
            return Err(NbdError::OptionTooLarge {
                option: opt.option,
                length: opt.length,
                limit: p::MAX_OPTION_LEN,
            });
        }
        let mut data = vec![0u8; opt.length as usize];
        r.read_exact(&mut data).await?;
        debug!(option = opt.option, len = opt.length, "nbd option");

        match opt.option {
            p::OPT_EXPORT_NAME => {
                let name = p::parse_name(&data).map_err(|_| NbdError::UnknownExport {
                    name: String::from_utf8_lossy(&data).into_owned(),
                })?;
                let Some(dev) = exports.get(&name).cloned() else {
                    return Err(NbdError::UnknownExport { name });
                };
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&dev.size().to_be_bytes());
                reply.extend_from_slice(&export_flags(dev.as_ref()).to_be_bytes());
                if !no_zeroes {
                    reply.resize(reply.len() + 124, 0);
                }
                w.write_all(&reply).await?;
                w.flush().await?;
                return Ok(Outcome::Export { name, dev });
            }
            p::OPT_ABORT => {
                // The client may already be gone; the ACK is a courtesy.
                let _ = send(w, opt.option, p::REP_ACK, &[]).await;
                return Ok(Outcome::Closed);
            }
            p::OPT_LIST => {
                if !data.is_empty() {
                    send_err(
                        w,
                        opt.option,
                        p::REP_ERR_INVALID,
                        "NBD_OPT_LIST takes no data",
                    )
                    .await?;
                    continue;
                }
                for name in exports.names() {
                    send(w, opt.option, p::REP_SERVER, &p::encode_server_entry(name)).await?;
                }
                send(w, opt.option, p::REP_ACK, &[]).await?;
            }
            p::OPT_INFO | p::OPT_GO => {
                let req = match GoRequest::parse(&data) {
                    Ok(req) => req,
                    Err(_) => {
                        send_err(w, opt.option, p::REP_ERR_INVALID, "malformed option data")
                            .await?;
                        continue;
                    }
                };
                let Some(dev) = exports.get(&req.name).cloned() else {
                    let msg = format!("unknown export `{}`", req.name);
                    send_err(w, opt.option, p::REP_ERR_UNKNOWN, &msg).await?;
                    continue;
                };
                let info = p::encode_info_export(dev.size(), export_flags(dev.as_ref()));
                send(w, opt.option, p::REP_INFO, &info).await?;
                // The spec lets a server send block sizes whether or not the
                // client asked; clients that care (qemu, libnbd) ask anyway.
                let (min, preferred, max) = block_sizes(dev.as_ref());
                let bs = p::encode_info_block_size(min, preferred, max);
                send(w, opt.option, p::REP_INFO, &bs).await?;
                if req.info_requests.contains(&p::INFO_NAME) {
                    send(w, opt.option, p::REP_INFO, &p::encode_info_name(&req.name)).await?;
                }
                send(w, opt.option, p::REP_ACK, &[]).await?;
                if opt.option == p::OPT_GO {
                    return Ok(Outcome::Export {
                        name: req.name,
                        dev,
                    });
                }
            }
            other => {
                let msg = format!("option {other} is not supported");
                send_err(w, other, p::REP_ERR_UNSUP, &msg).await?;
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    reply: u32,
    data: &[u8],
) -> std::io::Result<()> {
    w.write_all(&p::encode_option_reply(option, reply, data))
        .await?;
    w.flush().await
}

async fn send_err<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    reply: u32,
    msg: &str,
) -> std::io::Result<()> {
    send(w, option, reply, msg.as_bytes()).await
}
