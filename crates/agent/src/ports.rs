//! Port watching: which TCP ports processes in the guest listen on, from
//! `/proc/net/tcp` and `/proc/net/tcp6` (polled: the kernel has no notification for a
//! new listening socket), with the listening process found through `/proc/*/fd`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wisp_proto::{Control, ListeningPort};

use crate::server::Agent;

/// How often the tables are read.
const POLL: Duration = Duration::from_millis(250);

/// Starts a watch for session `session`: a `ports` message now with every listening
/// port, then one per change. Storing `true` in the returned flag stops it.
pub fn watch(agent: &Arc<Agent>, session: u32) -> io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let (a, done) = (agent.clone(), stop.clone());
    std::thread::Builder::new()
        .name(format!("ports-{session}"))
        .spawn(move || {
            // Socket inode -> port, for the sockets listening at the last look.
            let mut known: BTreeMap<u64, ListeningPort> = BTreeMap::new();
            let mut first = true;
            while !done.load(Ordering::SeqCst) {
                let now = listening();
                let gone: Vec<u64> = known
                    .keys()
                    .filter(|inode| !now.contains_key(inode))
                    .copied()
                    .collect();
                let new: Vec<(u64, (u16, String))> = now
                    .iter()
                    .filter(|(inode, _)| !known.contains_key(inode))
                    .map(|(inode, p)| (*inode, p.clone()))
                    .collect();
                if first || !gone.is_empty() || !new.is_empty() {
                    let owners = if new.is_empty() {
                        BTreeMap::new()
                    } else {
                        owners(&new.iter().map(|(i, _)| *i).collect())
                    };
                    let closed = gone.iter().filter_map(|i| known.remove(i)).collect();
                    let mut opened = Vec::new();
                    for (inode, (port, address)) in new {
                        let p = ListeningPort {
                            port,
                            address,
                            pid: owners.get(&inode).copied(),
                        };
                        known.insert(inode, p.clone());
                        opened.push(p);
                    }
                    opened.sort();
                    if a.out
                        .send(&wisp_proto::Frame::control(
                            session,
                            &Control::Ports { opened, closed },
                        ))
                        .is_err()
                    {
                        break;
                    }
                    first = false;
                }
                std::thread::sleep(POLL);
            }
            a.finish(session);
        })?;
    Ok(stop)
}

/// Listening TCP sockets now: inode -> (port, address).
fn listening() -> BTreeMap<u64, (u16, String)> {
    let mut out = BTreeMap::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in table.lines().skip(1) {
            if let Some((inode, port)) = parse_line(line, v6) {
                out.insert(inode, port);
            }
        }
    }
    out
}

/// One row of `/proc/net/tcp{,6}`: `(inode, (port, address))` when it listens.
fn parse_line(line: &str, v6: bool) -> Option<(u64, (u16, String))> {
    let f: Vec<&str> = line.split_whitespace().collect();
    // st 0A is TCP_LISTEN.
    if f.len() < 10 || f[3] != "0A" {
        return None;
    }
    let (addr, port) = f[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let address = if v6 {
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        Ipv6Addr::from(bytes).to_string()
    } else {
        let w = u32::from_str_radix(addr, 16).ok()?;
        Ipv4Addr::from(w.to_le_bytes()).to_string()
    };
    Some((f[9].parse().ok()?, (port, address)))
}

/// The pid holding each socket inode of `inodes`, found in `/proc/*/fd`.
fn owners(inodes: &BTreeSet<u64>) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                out.entry(inode).or_insert(pid);
            }
        }
        if out.len() == inodes.len() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_rows() {
        let v4 = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_line(v4, false),
            Some((12345, (8080, "127.0.0.1".to_string())))
        );
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(parse_line(&established, false), None);
        let v6 = "   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_line(v6, true), Some((777, (3000, "::".to_string()))));
        let v6_loopback = v6.replace(
            "00000000000000000000000000000000:0BB8",
            "00000000000000000000000001000000:0BB8",
        );
        assert_eq!(parse_line(&v6_loopback, true).unwrap().1 .1, "::1");
    }

    #[test]
    fn a_listener_here_is_seen_with_its_pid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let now = listening();
        let (inode, _) = now
            .iter()
            .find(|(_, (p, a))| *p == port && a == "127.0.0.1")
            .expect("our listener is listed");
        let owners = owners(&[*inode].into_iter().collect());
        assert_eq!(owners.get(inode), Some(&std::process::id()));
    }
}
