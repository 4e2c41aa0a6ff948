//! Mirror of `tcp_reset.h`: the reset counter key and the per-reset event record.

use std::mem::{offset_of, size_of};

use crate::record::Tuple;
use crate::{requires, Hook, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "tcp_reset",
    description: "TCP resets sent and received, with 5-tuple",
    hooks: &[
        Hook::tp_btf("tcp_send_reset", "tcp", "tcp_send_reset"),
        Hook::tp_btf("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ],
    requires: &[
        requires::SOCK_NETNS,
        requires::SOCK_TUPLE,
        requires::SKB_NETNS,
        requires::SKB_TUPLE,
        &[Requirement::field("sock", "__sk_common.skc_state")],
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
    pub netns: u32,
    pub direction: u32,
}

/// `struct tcp_reset_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub netns: u32,
    pub direction: u8,
    pub state: u8,
    pub pad: [u8; 2],
    pub tuple: Tuple,
}

const _: () = {
    assert!(size_of::<Key>() == 8);
    assert!(size_of::<Record>() == 56);
    // sonde_event_start stamps the first field of every record.
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, netns) == 8);
    assert!(offset_of!(Record, direction) == 12);
    assert!(offset_of!(Record, state) == 13);
    assert!(offset_of!(Record, tuple) == 16);
};

// SAFETY: plain C struct of integers.
unsafe impl aya::Pod for Key {}
