//! Static IPv4 configuration through the classic ioctls (no `ip` binary needed in the
//! image): address, netmask, link up, default route.

use std::io;
use std::net::Ipv4Addr;

use crate::sys::cvt;

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
const SIOCADDRT: libc::c_ulong = 0x890b;

/// `struct ifreq`: a name and a 24-byte union (here a `sockaddr` or the flags).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

/// `struct rtentry` (x86-64 layout).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr is plain data; all-zero is valid.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_INET as libc::sa_family_t;
    let o = ip.octets();
    // sa_data: port (2 bytes, zero) then the address in network order.
    for (i, b) in o.iter().enumerate() {
        sa.sa_data[2 + i] = *b as libc::c_char;
    }
    sa
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    if name.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name `{name}` is too long"),
        ));
    }
    let mut r = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(r)
}

struct Sock(i32);
impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn sock() -> io::Result<Sock> {
    // SAFETY: plain socket call.
    cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }).map(Sock)
}

fn ioctl<T>(s: &Sock, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: arg points to a struct of the layout the request expects.
    cvt(unsafe { libc::ioctl(s.0, req as _, arg as *mut T) }).map(|_| ())
}

fn set_sockaddr(r: &mut IfReq, ip: Ipv4Addr) {
    let sa = sockaddr(ip);
    // SAFETY: sockaddr is 16 bytes of plain data and fits in the 24-byte union.
    let bytes: [u8; 16] = unsafe { std::mem::transmute(sa) };
    r.data[..16].copy_from_slice(&bytes);
}

/// Sets the link up.
pub fn link_up(name: &str) -> io::Result<()> {
    let s = sock()?;
    let mut r = ifreq(name)?;
    ioctl(&s, SIOCGIFFLAGS, &mut r)?;
    let flags =
        i16::from_ne_bytes([r.data[0], r.data[1]]) | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&s, SIOCSIFFLAGS, &mut r)
}

/// Gives `name` the address `ip/prefix` and sets it up.
pub fn configure(name: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let s = sock()?;
    let mut r = ifreq(name)?;
    set_sockaddr(&mut r, ip);
    ioctl(&s, SIOCSIFADDR, &mut r)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32) as u32)
    };
    let mut r = ifreq(name)?;
    set_sockaddr(&mut r, Ipv4Addr::from(mask));
    ioctl(&s, SIOCSIFNETMASK, &mut r)?;
    link_up(name)
}

/// Adds the default route through `gw`.
pub fn default_route(gw: Ipv4Addr) -> io::Result<()> {
    let s = sock()?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gw),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match ioctl(&s, SIOCADDRT, &mut rt) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Parses `a.b.c.d/prefix`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, p) = s.split_once('/').unwrap_or((s, "24"));
    let prefix: u8 = p.parse().ok()?;
    (prefix <= 32).then_some(())?;
    Some((ip.parse().ok()?, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        assert_eq!(
            parse_cidr("10.0.2.15/24"),
            Some((Ipv4Addr::new(10, 0, 2, 15), 24))
        );
        assert_eq!(
            parse_cidr("10.0.2.15"),
            Some((Ipv4Addr::new(10, 0, 2, 15), 24))
        );
        assert_eq!(parse_cidr("10.0.2.15/33"), None);
        assert_eq!(parse_cidr("nope/8"), None);
    }

    #[test]
    fn struct_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }
}
