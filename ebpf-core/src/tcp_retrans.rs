//! Mirror of `tcp_retrans.h`: the retransmit counter key and the per-retransmit event record.

use std::mem::{offset_of, size_of};

use crate::record::{Netns, Tuple};
use crate::{requires, Hook, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "tcp_retrans",
    description: "TCP segment retransmissions, with 5-tuple and socket state",
    hooks: &[Hook::tp_btf("tcp_retrans", "tcp", "tcp_retransmit_skb")],
    requires: &[
        requires::SOCK_NETNS,
        requires::SOCK_TUPLE,
        &[Requirement::field("sock", "__sk_common.skc_state")],
    ],
    counter_map: "retransmits",
    object: aya::include_bytes_aligned!("tcp_retrans.bpf.o"),
};

/// `struct tcp_retrans_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: Netns,
}

/// `struct tcp_retrans_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub netns: Netns,
    pub state: u8,
    pub pad: [u8; 3],
    pub tuple: Tuple,
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Key>() == 16);
    assert!(size_of::<Record>() == 72);
    // sonde_event_start stamps the first field of every record.
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, netns) == 8);
    assert!(offset_of!(Record, state) == 24);
    assert!(offset_of!(Record, tuple) == 28);
};

// SAFETY: plain C struct of integers.
unsafe impl aya::Pod for Key {}
