//! Mirror of `tcp_connect.h`: the handshake counter key (histogram slots, sums, failures) and
//! the event record of a slow or failed handshake.

use std::mem::{offset_of, size_of};

use crate::record::{Netns, Tuple};
use crate::{requires, Hook, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "tcp_connect",
    description: "TCP handshake latency (connect and accept) and failed handshakes by cause",
    hooks: &[Hook::tp_btf("tcp_connect", "sock", "inet_sock_set_state")],
    requires: &[
        requires::SOCK_NETNS,
        requires::SOCK_TUPLE,
        &[
            Requirement::field("sock", "sk_err"),
            Requirement::field("tcp_sock", "srtt_us"),
            Requirement::field("tcp_sock", "total_retrans"),
            Requirement::field("tcp_sock", "inet_conn.icsk_inet.inet_sport"),
        ],
    ],
    counter_map: "connects",
    object: aya::include_bytes_aligned!("tcp_connect.bpf.o"),
};

pub const SIDE_CONNECT: u8 = 0;
pub const SIDE_ACCEPT: u8 = 1;

pub const KIND_BUCKET: u8 = 0;
pub const KIND_SUM: u8 = 1;
pub const KIND_FAILURE: u8 = 2;

pub const ESTABLISHED: u8 = 0;
pub const REFUSED: u8 = 1;
pub const TIMEOUT: u8 = 2;
pub const OTHER: u8 = 3;

/// Index in `probe_params` of the slow-handshake threshold in nanoseconds.
pub const PARAM_SLOW_NS: usize = 0;

/// The `side` label.
pub fn side_name(side: u8) -> &'static str {
    if side == SIDE_ACCEPT {
        "accept"
    } else {
        "connect"
    }
}

/// The `cause` label of a failure.
pub fn cause_name(cause: u8) -> &'static str {
    match cause {
        REFUSED => "refused",
        TIMEOUT => "timeout",
        _ => "other",
    }
}

/// `struct tcp_connect_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: Netns,
    pub side: u8,
    pub kind: u8,
    pub value: u8,
    pub pad: [u8; 5],
}

/// `struct tcp_connect_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub duration_ns: u64,
    pub netns: Netns,
    pub side: u8,
    pub cause: u8,
    pub retransmits: u8,
    pub pad: u8,
    pub error: i32,
    pub tuple: Tuple,
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Key>() == 24);
    assert!(offset_of!(Key, side) == 16);
    assert!(offset_of!(Key, kind) == 17);
    assert!(offset_of!(Key, value) == 18);
    assert!(size_of::<Record>() == 80);
    // sonde_event_start stamps the first field of every record.
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, duration_ns) == 8);
    assert!(offset_of!(Record, netns) == 16);
    assert!(offset_of!(Record, side) == 32);
    assert!(offset_of!(Record, cause) == 33);
    assert!(offset_of!(Record, retransmits) == 34);
    assert!(offset_of!(Record, error) == 36);
    assert!(offset_of!(Record, tuple) == 40);
};

// SAFETY: plain C struct of integers.
unsafe impl aya::Pod for Key {}
