//! Mirror of `tcp_reset.h`: the reset counter key and the per-reset event record.

use std::mem::{offset_of, size_of};

use crate::record::{Netns, Tuple};
use crate::{requires, Condition, Hook, ProbeSpec, Requirement};

/// Where `tcp_send_reset` does not see resets answering packets no socket owns: before Linux
/// 6.10, whose tracepoint passes `(sk, skb)` only (see `tcp_reset.bpf.c`).
const OLD_SEND_RESET: Condition = Condition::TracepointArgsBelow {
    tracepoint: "tcp_send_reset",
    args: 3,
};
const NO_SOCKET_LACKS: &str = "resets sent for packets no socket owns (connects to closed \
    ports) are not counted: this kernel's tcp_send_reset does not see them (it does from Linux \
    6.10) and the kprobe that stands in for it cannot be attached";

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "tcp_reset",
    description: "TCP resets sent and received, with 5-tuple",
    hooks: &[
        Hook::tp_btf("tcp_send_reset", "tcp", "tcp_send_reset"),
        Hook::tp_btf("tcp_receive_reset", "tcp", "tcp_receive_reset"),
        Hook::kprobe_where(
            "tcp_v4_send_reset",
            &["tcp_v4_send_reset"],
            OLD_SEND_RESET,
            NO_SOCKET_LACKS,
        ),
        Hook::kprobe_where(
            "tcp_v6_send_reset",
            &["tcp_v6_send_reset"],
            OLD_SEND_RESET,
            NO_SOCKET_LACKS,
        ),
    ],
    requires: &[
        requires::SOCK_NETNS,
        requires::SOCK_TUPLE,
        requires::SKB_NETNS,
        requires::SKB_TUPLE,
        &[
            Requirement::field("sock", "__sk_common.skc_state"),
            // The kprobes' check for a reset answering a reset.
            Requirement::field("sk_buff", "transport_header"),
        ],
    ],
    counter_map: "resets",
    object: aya::include_bytes_aligned!("tcp_reset.bpf.o"),
};

pub const SENT: u32 = 0;
pub const RECEIVED: u32 = 1;

/// The `direction` label of a reset.
pub fn direction_name(direction: u32) -> &'static str {
    if direction == RECEIVED {
        "received"
    } else {
        "sent"
    }
}

/// `struct tcp_reset_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: Netns,
    pub direction: u32,
    pub pad: u32,
}

/// `struct tcp_reset_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub netns: Netns,
    pub direction: u8,
    pub state: u8,
    pub pad: [u8; 2],
    pub tuple: Tuple,
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Key>() == 24);
    assert!(size_of::<Record>() == 72);
    // sonde_event_start stamps the first field of every record.
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, netns) == 8);
    assert!(offset_of!(Record, direction) == 24);
    assert!(offset_of!(Record, state) == 25);
    assert!(offset_of!(Record, tuple) == 28);
};

// SAFETY: plain C struct of integers.
unsafe impl aya::Pod for Key {}
