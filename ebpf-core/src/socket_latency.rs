//! Mirror of `socket_latency.h`: the key of the per-namespace read latency histogram and
//! overflow counters.

use std::mem::{offset_of, size_of};

use crate::record::Netns;
use crate::{requires, Hook, OlderProgram, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "socket_latency",
    description: "time from a packet's arrival to the application reading it, and socket receive buffer overflows, per pod",
    hooks: &[
        Hook::tp_btf("socklat_arrive", "net", "netif_receive_skb"),
        Hook::tp_btf("socklat_tcp_read", "skb", "skb_copy_datagram_iovec"),
        // UDP is timed from the queueing to the read; kernels without these tracepoints (6.1
        // and older have no sk_data_ready) time TCP only.
        Hook::tp_btf("socklat_udp_queued", "sock", "sk_data_ready").optional(UDP_UNTIMED),
        Hook::tp_btf_by_args("socklat_udp_read", "sock", "sock_recv_length", 3, &[])
            .optional(UDP_UNTIMED),
        Hook::tp_btf("socklat_rcvqueue_full", "sock", "sock_rcvqueue_full"),
        Hook::tp_btf_by_args(
            "socklat_udp_rcvbuf_full",
            "udp",
            "udp_fail_queue_rcv_skb",
            3,
            &[OlderProgram {
                args: 2,
                program: "socklat_udp_rcvbuf_full_noskb",
                degraded: None,
            }],
        ),
        Hook::tp_btf("socklat_exceed_buf_limit", "sock", "sock_exceed_buf_limit"),
    ],
    requires: &[
        requires::SOCK_NETNS,
        &[
            Requirement::field("sk_buff", "head"),
            Requirement::field("sk_buff", "protocol"),
            Requirement::field("sk_buff", "sk"),
            Requirement::field("sock", "sk_protocol"),
            Requirement::field("sock", "sk_receive_queue.qlen"),
            Requirement::field("sock", "sk_receive_queue.prev"),
            Requirement::field("sock_common", "skc_family"),
            Requirement::TracepointArgs {
                tracepoint: "sock_exceed_buf_limit",
                args: 4,
            },
        ],
    ],
    counter_map: "sockets",
    object: aya::include_bytes_aligned!("socket_latency.bpf.o"),
};

/// What socket_latency lacks on a kernel without the UDP tracepoints.
const UDP_UNTIMED: &str = "UDP reads are not timed: this kernel has no sock/sk_data_ready or \
     sock/sock_recv_length tracepoint (TCP reads and overflows are)";

/// Index in `probe_params` of the sampling rate: each pass of a packet through
/// netif_receive_skb is stamped with a chance of one in this many (0 or 1: every pass).
pub const PARAM_SAMPLE_EVERY: usize = 0;

pub const KIND_BUCKET: u8 = 0;
pub const KIND_SUM: u8 = 1;
pub const KIND_RCVQUEUE_FULL: u8 = 2;
pub const KIND_EXCEED_BUF_LIMIT: u8 = 3;

/// The `kind` label of an overflow counter slot, `None` for histogram slots.
pub fn overflow_kind(kind: u8) -> Option<&'static str> {
    match kind {
        KIND_RCVQUEUE_FULL => Some("rcvqueue_full"),
        KIND_EXCEED_BUF_LIMIT => Some("exceed_buf_limit"),
        _ => None,
    }
}

/// `struct socket_latency_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: Netns,
    pub kind: u8,
    pub slot: u8,
    pub pad: [u8; 6],
}

const _: () = {
    assert!(size_of::<Key>() == 24);
    assert!(offset_of!(Key, kind) == 16);
    assert!(offset_of!(Key, slot) == 17);
};

// SAFETY: a plain C struct of integers.
unsafe impl aya::Pod for Key {}
