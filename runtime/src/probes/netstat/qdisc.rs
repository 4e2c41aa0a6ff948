//! Queueing discipline statistics of the calling thread's network namespace: one rtnetlink
//! `RTM_GETQDISC` dump (what `tc -s qdisc` asks) over [`crate::netlink`], and three attributes
//! of its answers as netlink-packet-route parses them (`TCA_KIND`, and `TCA_STATS2`'s basic
//! and queue statistics).

use std::io;

use netlink_packet_core::{Nla, NLA_TYPE_MASK};
use netlink_packet_route::tc::{TcAttribute, TcMessage, TcStats2};

use crate::netlink::{self, RouteNetlinkMessage};

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

/// The 64-bit packet count in `TCA_STATS2`, which the crate leaves unparsed.
const TCA_STATS_PKT64: u16 = 8;
const TC_H_ROOT: u32 = 0xffff_ffff;

/// Every qdisc of the calling thread's network namespace (the socket is made, used and
/// closed here, so it belongs to that namespace). A dump that takes longer than the socket's
/// timeout is abandoned (the namespace's reading fails, not the probe).
pub fn dump() -> io::Result<Vec<Qdisc>> {
    // tcmsg all zero: every family, every interface.
    let mut sock = netlink::Socket::open(0)?;
    Ok(sock
        .dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))?
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) => Some(parse_qdisc(q)),
            _ => None,
        })
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

/// One RTM_NEWQDISC message.
pub fn parse_qdisc(msg: &TcMessage) -> Qdisc {
    let mut q = Qdisc {
        ifindex: msg.header.index as u32,
        handle: tc_handle(msg.header.handle.into()),
        parent: tc_handle(msg.header.parent.into()),
        ..Qdisc::default()
    };
    for attribute in &msg.attributes {
        match attribute {
            TcAttribute::Kind(kind) => q.kind.clone_from(kind),
            TcAttribute::Stats2(stats) => {
                for stat in stats {
                    match stat {
                        TcStats2::Basic(basic) => {
                            q.bytes = basic.bytes;
                            if q.packets == 0 {
                                q.packets = basic.packets as u64;
                            }
                        }
                        // The full packet count when the 32 bits of the basic stats wrapped.
                        TcStats2::Other(nla)
                            if nla.kind() & NLA_TYPE_MASK == TCA_STATS_PKT64
                                && nla.value_len() == 8 =>
                        {
                            let mut value = [0u8; 8];
                            nla.emit_value(&mut value);
                            q.packets = u64::from_ne_bytes(value);
                        }
                        TcStats2::Queue(queue) => {
                            q.qlen = queue.qlen;
                            q.backlog = queue.backlog;
                            q.drops = queue.drops;
                            q.requeues = queue.requeues;
                            q.overlimits = queue.overlimits;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    q
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
    use netlink_packet_core::{DefaultNla, Emitable};
    use netlink_packet_route::tc::{TcStatsBasic, TcStatsQueue};

    #[test]
    fn handles_in_tc_notation() {
        assert_eq!(tc_handle(0), "0:");
        assert_eq!(tc_handle(0x8001_0000), "8001:");
        assert_eq!(tc_handle(0x0001_0002), "1:2");
        assert_eq!(tc_handle(TC_H_ROOT), "root");
    }

    /// A qdisc message as the kernel sends it (`TCA_STATS_BASIC` padded to 16 bytes), read
    /// back as the dump reads it.
    #[test]
    fn parses_a_qdisc_message() {
        let mut basic = TcStatsBasic::default();
        basic.bytes = 1000;
        basic.packets = 10;
        let mut queue = TcStatsQueue::default();
        (
            queue.qlen,
            queue.backlog,
            queue.drops,
            queue.requeues,
            queue.overlimits,
        ) = (1, 2, 3, 4, 5);
        let mut msg = TcMessage::with_index(2);
        msg.header.parent = TC_H_ROOT.into();
        msg.attributes = vec![
            TcAttribute::Kind("fq_codel".into()),
            TcAttribute::Stats2(vec![TcStats2::Basic(basic), TcStats2::Queue(queue)]),
        ];
        let expected = Qdisc {
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
        };
        assert_eq!(parse_qdisc(&round_trip(&msg)), expected);

        // Past 2^32 packets, TCA_STATS_PKT64 has the count (before or after the basic stats).
        let pkt64 = TcStats2::Other(DefaultNla::new(
            TCA_STATS_PKT64,
            (5u64 << 32).to_ne_bytes().to_vec(),
        ));
        for at in [0, 2] {
            let mut msg = msg.clone();
            let TcAttribute::Stats2(stats) = &mut msg.attributes[1] else {
                unreachable!()
            };
            stats.insert(at, pkt64.clone());
            let q = parse_qdisc(&round_trip(&msg));
            assert_eq!(q.packets, 5 << 32);
        }
    }

    fn round_trip(msg: &TcMessage) -> TcMessage {
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.emit(&mut bytes);
        match ebpf_core::netlink::parse_message(libc::RTM_NEWQDISC, &bytes) {
            Some(RouteNetlinkMessage::NewQueueDiscipline(q)) => q,
            other => panic!("{other:?}"),
        }
    }
}
