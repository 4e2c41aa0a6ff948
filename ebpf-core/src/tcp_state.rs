//! Mirror of `tcp_state.h`: the state-change counter key and the event record of a connection
//! that ended.

use std::mem::{offset_of, size_of};

use crate::record::{Netns, Tuple};
use crate::{requires, Hook, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "tcp_state",
    description: "TCP state changes per pod, and connections closing with their lifetime and bytes",
    hooks: &[Hook::tp_btf("tcp_state", "sock", "inet_sock_set_state")],
    requires: &[
        requires::SOCK_NETNS,
        requires::SOCK_TUPLE,
        &[
            Requirement::field("tcp_sock", "bytes_acked"),
            Requirement::field("tcp_sock", "bytes_received"),
            Requirement::field("tcp_sock", "inet_conn.icsk_inet.inet_sport"),
        ],
    ],
    counter_map: "changes",
    object: aya::include_bytes_aligned!("tcp_state.bpf.o"),
};

/// `Record::duration_ns` when the connection's start was not seen (`TCP_STATE_NO_DURATION`):
/// it began before the probe was loaded.
pub const NO_DURATION: u64 = u64::MAX;

/// `struct tcp_state_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: Netns,
    /// The new TCP state.
    pub state: u32,
    pub pad: u32,
}

/// `struct tcp_state_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub netns: Netns,
    /// The state the connection left for CLOSE.
    pub from: u8,
    pub pad: [u8; 7],
    pub tuple: Tuple,
    /// Its lifetime, or [`NO_DURATION`].
    pub duration_ns: u64,
    /// `tcp_sock.bytes_acked`; like `bytes_received`, in sequence space: a SYN or FIN counts one.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Key>() == 24);
    assert!(offset_of!(Key, state) == 16);
    assert!(size_of::<Record>() == 96);
    // sonde_event_start stamps the first field of every record.
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, netns) == 8);
    assert!(offset_of!(Record, from) == 24);
    assert!(offset_of!(Record, pad) == 25);
    assert!(offset_of!(Record, tuple) == 32);
    assert!(offset_of!(Record, duration_ns) == 72);
    assert!(offset_of!(Record, bytes_sent) == 80);
    assert!(offset_of!(Record, bytes_received) == 88);
};

// SAFETY: plain C struct of integers.
unsafe impl aya::Pod for Key {}
