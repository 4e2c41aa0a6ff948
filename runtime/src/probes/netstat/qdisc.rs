//! Queueing discipline statistics of the calling thread's network namespace: one rtnetlink
//! `RTM_GETQDISC` dump (what `tc -s qdisc` asks) over [`crate::netlink`], and three attributes
//! (`TCA_KIND`, and `TCA_STATS2`'s basic and queue statistics).

use std::io;

use crate::netlink::{self, attrs, u32_at, u64_at};

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
/// `struct tcmsg`.
const TCMSG_LEN: usize = 20;
const TCA_KIND: u16 = 1;
const TCA_STATS2: u16 = 7;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;
const TCA_STATS_PKT64: u16 = 8;
const TC_H_ROOT: u32 = 0xffff_ffff;

/// Every qdisc of the calling thread's network namespace (the socket is made, used and
/// closed here, so it belongs to that namespace). A dump that takes longer than the socket's
/// timeout is abandoned (the namespace's reading fails, not the probe).
pub fn dump() -> io::Result<Vec<Qdisc>> {
    // tcmsg all zero: every family, every interface.
    let mut sock = netlink::Socket::open(0)?;
    Ok(sock
        .dump(RTM_GETQDISC, &[0u8; TCMSG_LEN])?
        .into_iter()
        .filter(|(kind, _)| *kind == RTM_NEWQDISC)
        .filter_map(|(_, body)| parse_qdisc(&body))
        .collect())
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
pub fn parse_qdisc(body: &[u8]) -> Option<Qdisc> {
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
            TCA_KIND => q.kind = netlink::c_string(payload),
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
