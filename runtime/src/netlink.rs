//! rtnetlink, by hand: the few requests Sonde makes (qdisc statistics, addresses, links) and
//! the link notifications it follows are one socket, a dump request and a walk over
//! attributes, so they are written here once rather than pulled in as a crate.
//!
//! A socket belongs to the network namespace of the thread that opened it, whichever thread
//! uses it afterwards.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_HDRLEN: usize = 16;

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

/// A request that takes longer than this is abandoned.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// An rtnetlink socket, in the namespace of the thread that opened it.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// One netlink message: its type and its body (after the header).
pub type Message = (u16, Vec<u8>);

impl Socket {
    /// A socket for requests; with `groups`, also subscribed to those multicast groups.
    pub fn open(groups: u32) -> io::Result<Socket> {
        // SAFETY: plain syscall; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = Socket {
            fd,
            seq: 0,
            buf: vec![0u8; 64 << 10],
        };
        sock.set_timeout(RECV_TIMEOUT)?;
        if groups != 0 {
            // SAFETY: zeroed sockaddr_nl is valid; the fields the kernel reads are set.
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = groups;
            // SAFETY: addr outlives the call and its size is passed.
            if unsafe {
                libc::bind(
                    sock.fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            } != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(sock)
    }

    /// How long [`Socket::recv`] waits for a message.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv outlives the call and its size is passed.
        if unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends a dump request of `kind` with `header` as its body and returns every message of
    /// the answer (multicast notifications that arrive meanwhile are left out).
    pub fn dump(&mut self, kind: u16, header: &[u8]) -> io::Result<Vec<Message>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = NLMSG_HDRLEN + header.len();
        let mut req = vec![0u8; len];
        req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&kind.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        req[NLMSG_HDRLEN..].copy_from_slice(header);
        // SAFETY: zeroed sockaddr_nl is the kernel as peer.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and address are valid for their lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        loop {
            for (msg_seq, kind, body) in self.recv_raw()? {
                if msg_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(0);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                    }
                    _ => out.push((kind, body)),
                }
            }
        }
    }

    /// The next batch of multicast notifications; an error of kind `WouldBlock` or
    /// `TimedOut` when none came within the timeout.
    pub fn recv(&mut self) -> io::Result<Vec<Message>> {
        Ok(self
            .recv_raw()?
            .into_iter()
            .filter(|(seq, _, _)| *seq == 0)
            .map(|(_, kind, body)| (kind, body))
            .collect())
    }

    /// One datagram's messages as (seq, type, body).
    fn recv_raw(&mut self) -> io::Result<Vec<(u32, u16, Vec<u8>)>> {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &self.buf[..n as usize];
        let mut out = Vec::new();
        while msgs.len() >= NLMSG_HDRLEN {
            let len = u32_at(msgs, 0) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            let seq = u32_at(msgs, 8);
            if len < NLMSG_HDRLEN || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            out.push((seq, kind, msgs[NLMSG_HDRLEN..len].to_vec()));
            msgs = &msgs[align4(len).min(msgs.len())..];
        }
        Ok(out)
    }
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates the rtattrs of `buf` as (type, payload).
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits.
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((kind, payload))
    })
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap()))
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_ne_bytes(s.try_into().unwrap()))
}

/// A NUL-terminated string attribute.
pub fn c_string(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// The string attribute `kind` of a message's attributes, when there.
pub fn string_attr(attrs_buf: &[u8], kind: u16) -> Option<String> {
    attrs(attrs_buf)
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| c_string(p))
}

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
        let mut a = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
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
