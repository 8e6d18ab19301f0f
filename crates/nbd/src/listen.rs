//! Where a server listens: a unix socket path or a TCP address, parsed from
//! `unix:PATH` / `tcp:HOST:PORT` and turned into the NBD URI clients use.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use crate::NbdError;

/// A listen address for the NBD server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix domain socket at this path.
    Unix(PathBuf),
    /// A TCP address (port 0 picks a free port; see `BoundServer::local_addr`).
    Tcp(SocketAddr),
}

impl Listen {
    /// The NBD URI of the default export (`""`) at this address, as understood
    /// by libnbd (nbdinfo, fio, nbdcopy) and QEMU.
    pub fn uri(&self) -> String {
        self.export_uri("")
    }

    /// The NBD URI of the named export at this address.
    pub fn export_uri(&self, export: &str) -> String {
        match self {
            Listen::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
            Listen::Tcp(a) => format!("nbd://{a}/{export}"),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl FromStr for Listen {
    type Err = NbdError;

    /// Parses `unix:PATH` or `tcp:HOST:PORT` (HOST an IP address, `[v6]`, or
    /// `localhost`).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NbdError::ListenAddress {
            input: input.to_owned(),
            reason,
        };
        if let Some(path) = input.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the unix socket path is empty"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = input.strip_prefix("tcp:") {
            if let Ok(a) = addr.parse::<SocketAddr>() {
                return Ok(Listen::Tcp(a));
            }
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| bad("expected tcp:HOST:PORT"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
            let ip = match host {
                "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                "" | "*" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                _ => return Err(bad("the host must be an IP address or localhost")),
            };
            return Ok(Listen::Tcp(SocketAddr::new(ip, port)));
        }
        Err(bad("expected unix:PATH or tcp:HOST:PORT"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_tcp() {
        assert_eq!(
            "unix:/run/x.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:10809".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:10809".parse().unwrap())
        );
        assert_eq!(
            "tcp:[::1]:1".parse::<Listen>().unwrap(),
            Listen::Tcp("[::1]:1".parse().unwrap())
        );
        assert_eq!(
            "tcp:localhost:0".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:0".parse().unwrap())
        );
    }

    #[test]
    fn errors_name_the_bad_input() {
        for bad in [
            "",
            "unix:",
            "tcp:1.2.3.4",
            "tcp:host:1",
            "tcp:1.2.3.4:99999",
            "udp:x",
        ] {
            let e = bad.parse::<Listen>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn display_round_trips_and_uris() {
        for s in ["unix:/tmp/a.sock", "tcp:127.0.0.1:5"] {
            assert_eq!(s.parse::<Listen>().unwrap().to_string(), s);
        }
        assert_eq!(
            Listen::Unix("/tmp/a".into()).export_uri("d"),
            "nbd+unix:///d?socket=/tmp/a"
        );
        assert_eq!(
            Listen::Tcp("127.0.0.1:5".parse().unwrap()).uri(),
            "nbd://127.0.0.1:5/"
        );
    }
}
