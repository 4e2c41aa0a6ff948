//! Mirror of `flow.h`: a row of the flow table and the slots of the probe's own counters.

use std::mem::{offset_of, size_of};

use crate::{Hook, ProbeSpec, TcDirection};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "flow",
    description: "packets and bytes per 5-tuple (IPv4 and IPv6) through the node's host-side interfaces, by pod pair",
    hooks: &[
        Hook::tc("flow_ingress", TcDirection::Ingress),
        Hook::tc("flow_egress", TcDirection::Egress),
    ],
    requires: &[],
    counter_map: "flow_counts",
    object: aya::include_bytes_aligned!("flow.bpf.o"),
};

/// `flow_counts` slot: rows added to the table.
pub const COUNT_INSERTED: usize = 0;
/// `flow_counts` slot: packets that were neither IPv4 nor IPv6.
pub const COUNT_UNPARSED: usize = 1;

/// `struct flow_row`: a row of the `flows` table, keyed by the packet's [`crate::Tuple`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Row {
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub ifindex: u32,
    pub pad: u32,
}

const _: () = {
    assert!(size_of::<Row>() == 40);
    assert!(offset_of!(Row, bytes) == 8);
    assert!(offset_of!(Row, first_ns) == 16);
    assert!(offset_of!(Row, last_ns) == 24);
    assert!(offset_of!(Row, ifindex) == 32);
};

// SAFETY: a plain C struct of integers.
unsafe impl aya::Pod for Row {}
