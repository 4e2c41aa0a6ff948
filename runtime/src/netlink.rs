//! The agent's rtnetlink requests (links, addresses; qdisc statistics in `netstat`) and the
//! link notifications it follows, on the socket and attribute readers of
//! `ebpf_core::netlink`, which the TC filters use too.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ebpf_core::netlink::{attrs, c_string, string_attr, u32_at, u64_at, Message, Socket};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// `RTMGRP_LINK`: the multicast group of link changes.
pub const GROUP_LINK: u32 = 1;
/// `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
/// `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RT_SCOPE_HOST: u8 = 254;

/// A link as `RTM_NEWLINK` / `RTM_DELLINK` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
}

/// The link of an `RTM_NEWLINK` or `RTM_DELLINK` body.
pub fn parse_link(body: &[u8]) -> Option<Link> {
    if body.len() < IFINFOMSG_LEN {
        return None;
    }
    Some(Link {
        ifindex: u32_at(body, 4),
        name: string_attr(&body[IFINFOMSG_LEN..], IFLA_IFNAME)?,
    })
}

/// Every link of the socket's namespace.
pub fn links(sock: &mut Socket) -> io::Result<Vec<Link>> {
    Ok(sock
        .dump(RTM_GETLINK, &[0u8; IFINFOMSG_LEN])?
        .into_iter()
        .filter(|(kind, _)| *kind == RTM_NEWLINK)
        .filter_map(|(_, body)| parse_link(&body))
        .collect())
}

/// The addresses of the calling thread's namespace, loopback (host scope) ones left out:
/// every pod has 127.0.0.1, so it names none.
pub fn addresses() -> io::Result<Vec<IpAddr>> {
    Ok(Socket::open(0)?
        .dump(RTM_GETADDR, &[0u8; IFADDRMSG_LEN])?
        .into_iter()
        .filter(|(kind, _)| *kind == RTM_NEWADDR)
        .filter_map(|(_, body)| parse_address(&body))
        .collect())
}

/// `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`: the multicast groups of address changes.
const GROUPS_ADDRESSES: u32 = 0x10 | 0x100;

/// A non-blocking rtnetlink socket of the calling thread's namespace that receives a
/// notification whenever an address is added or removed there; [`drain`] it, then read the
/// addresses. Only its fd is kept (a [`Socket`] carries a 64 KiB buffer). It holds a
/// reference on the namespace: close it when the namespace is to go.
pub fn subscribe_addresses() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid; the fields the kernel reads are set.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = GROUPS_ADDRESSES;
    // SAFETY: addr outlives the call and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads and discards whatever a non-blocking socket holds; whether anything was there (an
/// overrun, `ENOBUFS`, counts: notifications were lost).
pub fn drain(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    use std::os::fd::AsRawFd;
    let mut any = false;
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            any = true;
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            _ if n == 0 => return any,
            Some(libc::EINTR) => continue,
            Some(libc::ENOBUFS) => any = true,
            _ => return any,
        }
    }
}

/// The address of an `RTM_NEWADDR` body (`IFA_LOCAL`, else `IFA_ADDRESS`), unless host-scoped.
fn parse_address(body: &[u8]) -> Option<IpAddr> {
    if body.len() < IFADDRMSG_LEN || body[3] == RT_SCOPE_HOST {
        return None;
    }
    let family = body[0] as i32;
    let mut found = None;
    for (kind, p) in attrs(&body[IFADDRMSG_LEN..]) {
        let ip = match (family, p.len()) {
            (libc::AF_INET, 4) => IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3])),
            (libc::AF_INET6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(p).unwrap())),
            _ => continue,
        };
        match kind {
            IFA_LOCAL => return Some(ip),
            IFA_ADDRESS => found = Some(ip),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        ebpf_core::netlink::put_attr(&mut a, kind, payload);
        a
    }

    #[test]
    fn parses_links_and_addresses() {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&7u32.to_ne_bytes());
        body.extend(attr(IFLA_IFNAME, b"veth1\0"));
        assert_eq!(
            parse_link(&body),
            Some(Link {
                ifindex: 7,
                name: "veth1".into()
            })
        );

        let mut v4 = vec![libc::AF_INET as u8, 24, 0, 0, 7, 0, 0, 0];
        v4.extend(attr(IFA_ADDRESS, &[10, 0, 0, 9]));
        v4.extend(attr(IFA_LOCAL, &[10, 0, 0, 1]));
        assert_eq!(parse_address(&v4), Some("10.0.0.1".parse().unwrap()));
        let mut lo = vec![libc::AF_INET as u8, 8, 0, RT_SCOPE_HOST, 1, 0, 0, 0];
        lo.extend(attr(IFA_LOCAL, &[127, 0, 0, 1]));
        assert_eq!(parse_address(&lo), None);
        let mut v6 = vec![libc::AF_INET6 as u8, 64, 0, 0, 7, 0, 0, 0];
        let ip: Ipv6Addr = "fd00::1".parse().unwrap();
        v6.extend(attr(IFA_ADDRESS, &ip.octets()));
        assert_eq!(parse_address(&v6), Some(IpAddr::V6(ip)));
    }
}
