//! Queueing discipline statistics of the calling thread's network namespace: one rtnetlink
//! `RTM_GETQDISC` dump (what `tc -s qdisc` asks), written by hand because it is one request
//! and three attributes (`TCA_KIND`, and `TCA_STATS2`'s basic and queue statistics).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// One qdisc's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qdisc {
    pub ifindex: u32,
    pub kind: String,
    /// `tc`'s notation: `8001:`, `0:`.
    pub handle: String,
    /// `root`, or the parent class (`1:2`).
    pub parent: String,
    pub bytes: u64,
    pub packets: u64,
    pub qlen: u32,
    pub backlog: u32,
    pub drops: u32,
    pub requeues: u32,
    pub overlimits: u32,
}

const RTM_NEWQDISC: u16 = 36;
const RTM_GETQDISC: u16 = 38;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct tcmsg`.
const TCMSG_LEN: usize = 20;
const TCA_KIND: u16 = 1;
const TCA_STATS2: u16 = 7;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;
const TCA_STATS_PKT64: u16 = 8;
const TC_H_ROOT: u32 = 0xffff_ffff;
/// A dump that takes longer than this is abandoned (the namespace's reading fails, not the
/// probe).
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// Every qdisc of the calling thread's network namespace (the socket is made, used and
/// closed here, so it belongs to that namespace).
pub fn dump() -> io::Result<Vec<Qdisc>> {
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
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: tv outlives the call and its size is passed.
    if unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }

    let seq: u32 = 1;
    let mut req = [0u8; NLMSG_HDRLEN + TCMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + TCMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETQDISC.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // tcmsg all zero: every family, every interface.
    // SAFETY: the buffer is valid for its length; the kernel is the peer (unconnected
    // netlink socket, destination defaults to the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
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

    let mut qdiscs = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
            let msg_seq = u32::from_ne_bytes(msgs[8..12].try_into().unwrap());
            if len < NLMSG_HDRLEN || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            let body = &msgs[NLMSG_HDRLEN..len];
            msgs = &msgs[align4(len).min(msgs.len())..];
            if msg_seq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(qdiscs),
                NLMSG_ERROR => {
                    let errno = body
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .unwrap_or(0);
                    if errno == 0 {
                        continue;
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                RTM_NEWQDISC => {
                    if let Some(q) = parse_qdisc(body) {
                        qdiscs.push(q);
                    }
                }
                _ => {}
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates the rtattrs of `buf` as (type, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
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

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap()))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_ne_bytes(s.try_into().unwrap()))
}

/// `tc`'s notation for a handle: `maj:` or `maj:min`, in hex.
fn tc_handle(h: u32) -> String {
    if h == TC_H_ROOT {
        return "root".into();
    }
    let (major, minor) = (h >> 16, h & 0xffff);
    if minor == 0 {
        format!("{major:x}:")
    } else {
        format!("{major:x}:{minor:x}")
    }
}

/// One RTM_NEWQDISC body: `struct tcmsg` then attributes.
fn parse_qdisc(body: &[u8]) -> Option<Qdisc> {
    if body.len() < TCMSG_LEN {
        return None;
    }
    let mut q = Qdisc {
        ifindex: u32_at(body, 4),
        handle: tc_handle(u32_at(body, 8)),
        parent: tc_handle(u32_at(body, 12)),
        ..Qdisc::default()
    };
    for (kind, payload) in attrs(&body[TCMSG_LEN..]) {
        match kind {
            TCA_KIND => {
                let end = payload
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(payload.len());
                q.kind = String::from_utf8_lossy(&payload[..end]).into_owned();
            }
            TCA_STATS2 => {
                for (stat, p) in attrs(payload) {
                    match stat {
                        // struct gnet_stats_basic { __u64 bytes; __u32 packets; }
                        TCA_STATS_BASIC => {
                            q.bytes = u64_at(p, 0);
                            if q.packets == 0 {
                                q.packets = u32_at(p, 8) as u64;
                            }
                        }
                        // The full packet count when the 32 bits of the basic stats wrapped.
                        TCA_STATS_PKT64 => q.packets = u64_at(p, 0),
                        // struct gnet_stats_queue { qlen, backlog, drops, requeues, overlimits }
                        TCA_STATS_QUEUE => {
                            q.qlen = u32_at(p, 0);
                            q.backlog = u32_at(p, 4);
                            q.drops = u32_at(p, 8);
                            q.requeues = u32_at(p, 12);
                            q.overlimits = u32_at(p, 16);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(q)
}

/// The name of interface `ifindex` in the calling thread's namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_in_tc_notation() {
        assert_eq!(tc_handle(0), "0:");
        assert_eq!(tc_handle(0x8001_0000), "8001:");
        assert_eq!(tc_handle(0x0001_0002), "1:2");
        assert_eq!(tc_handle(TC_H_ROOT), "root");
    }

    #[test]
    fn parses_a_qdisc_message() {
        let mut body = vec![0u8; TCMSG_LEN];
        body[4..8].copy_from_slice(&2u32.to_ne_bytes());
        body[12..16].copy_from_slice(&TC_H_ROOT.to_ne_bytes());
        // TCA_KIND "fq_codel\0" (len 4 + 9 = 13, padded to 16)
        body.extend_from_slice(&13u16.to_ne_bytes());
        body.extend_from_slice(&TCA_KIND.to_ne_bytes());
        body.extend_from_slice(b"fq_codel\0\0\0\0");
        // TCA_STATS2 { BASIC (4 + 12 = 16), QUEUE (4 + 20 = 24) }
        let mut stats = Vec::new();
        stats.extend_from_slice(&16u16.to_ne_bytes());
        stats.extend_from_slice(&TCA_STATS_BASIC.to_ne_bytes());
        stats.extend_from_slice(&1000u64.to_ne_bytes());
        stats.extend_from_slice(&10u32.to_ne_bytes());
        stats.extend_from_slice(&24u16.to_ne_bytes());
        stats.extend_from_slice(&TCA_STATS_QUEUE.to_ne_bytes());
        for v in [1u32, 2, 3, 4, 5] {
            stats.extend_from_slice(&v.to_ne_bytes());
        }
        body.extend_from_slice(&((4 + stats.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&(TCA_STATS2 | 0x8000).to_ne_bytes());
        body.extend_from_slice(&stats);
        let q = parse_qdisc(&body).unwrap();
        assert_eq!(
            q,
            Qdisc {
                ifindex: 2,
                kind: "fq_codel".into(),
                handle: "0:".into(),
                parent: "root".into(),
                bytes: 1000,
                packets: 10,
                qlen: 1,
                backlog: 2,
                drops: 3,
                requeues: 4,
                overlimits: 5,
            }
        );
    }
}
