//! Mirror of `tcp_rtt.h`: the RTT histogram key and a row of the per-flow table.

use std::mem::{offset_of, size_of};

use crate::record::{Netns, Tuple};
use crate::{requires, Hook, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "tcp_rtt",
    description: "TCP smoothed RTT per pod, and a table of live flows with srtt, cwnd and windows",
    hooks: &[
        Hook::tp_btf("tcp_rtt", "tcp", "tcp_probe"),
        Hook::tp_btf("tcp_rtt_forget", "tcp", "tcp_destroy_sock"),
    ],
    requires: &[
        requires::SOCK_NETNS,
        requires::SOCK_TUPLE,
        &[
            Requirement::field("tcp_sock", "srtt_us"),
            Requirement::field("tcp_sock", "mdev_us"),
            Requirement::field("tcp_sock", "rtt_min"),
            Requirement::field("tcp_sock", "snd_cwnd"),
            Requirement::field("tcp_sock", "snd_wnd"),
            Requirement::field("tcp_sock", "rcv_wnd"),
            Requirement::field("tcp_sock", "mss_cache"),
        ],
    ],
    counter_map: "rtts",
    object: aya::include_bytes_aligned!("tcp_rtt.bpf.o"),
};

pub const KIND_BUCKET: u8 = 0;
pub const KIND_SUM: u8 = 1;

/// Index in `probe_params` of the per-flow sample interval in nanoseconds.
pub const PARAM_SAMPLE_NS: usize = 0;
/// Index in `probe_params` of N: past a connection's first [`FIRST_SEGMENTS`], one segment in
/// N is looked at (drawn at random); 0 or 1 for every segment.
pub const PARAM_SAMPLE_EVERY: usize = 1;
/// A connection's first segments, always looked at (`TCP_RTT_FIRST_SEGMENTS`), as is every
/// segment before it has received or had acknowledged any data.
pub const FIRST_SEGMENTS: u32 = 4;

/// `struct tcp_rtt_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: Netns,
    pub kind: u8,
    pub slot: u8,
    pub pad: [u8; 6],
}

/// `struct tcp_rtt_flow`: a row of the `flows` table, keyed by socket address (u64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow {
    pub updated_ns: u64,
    pub sampled_ns: u64,
    pub segments: u64,
    pub netns: Netns,
    pub srtt_us: u32,
    pub rttvar_us: u32,
    pub min_rtt_us: u32,
    pub snd_cwnd: u32,
    pub snd_wnd: u32,
    pub rcv_wnd: u32,
    pub mss: u32,
    pub tuple: Tuple,
}

const _: () = {
    assert!(size_of::<Key>() == 24);
    assert!(offset_of!(Key, kind) == 16);
    assert!(offset_of!(Key, slot) == 17);
    assert!(size_of::<Flow>() == 112);
    assert!(offset_of!(Flow, segments) == 16);
    assert!(offset_of!(Flow, netns) == 24);
    assert!(offset_of!(Flow, srtt_us) == 40);
    assert!(offset_of!(Flow, min_rtt_us) == 48);
    assert!(offset_of!(Flow, snd_cwnd) == 52);
    assert!(offset_of!(Flow, rcv_wnd) == 60);
    assert!(offset_of!(Flow, mss) == 64);
    assert!(offset_of!(Flow, tuple) == 68);
};

// SAFETY: plain C structs of integers.
unsafe impl aya::Pod for Key {}
unsafe impl aya::Pod for Flow {}
