//! Mirror of `netdev_latency.h`: the per-interface qdisc and driver time histogram key, the
//! interface name table, and the event record of a slow transmit.

use std::mem::{offset_of, size_of};

use crate::record::Netns;
use crate::{Hook, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "netdev_latency",
    description: "transmit latency per interface: time in the qdisc and in the driver",
    hooks: &[
        Hook::tp_btf("net_dev_queue", "net", "net_dev_queue"),
        Hook::tp_btf("net_dev_start_xmit", "net", "net_dev_start_xmit"),
        Hook::tp_btf("net_dev_xmit", "net", "net_dev_xmit"),
    ],
    requires: &[&[
        Requirement::field("sk_buff", "head"),
        Requirement::field("sk_buff", "len"),
        Requirement::field("net_device", "nd_net.net"),
        Requirement::field("net_device", "ifindex"),
        Requirement::field("net_device", "name"),
        Requirement::field("net", "ns.inum"),
    ]],
    counter_map: "netdevs",
    object: aya::include_bytes_aligned!("netdev_latency.bpf.o"),
};

/// The kernel table of interface names (`struct netdev_iface` -> `struct netdev_name`).
pub const NAMES_MAP: &str = "ifnames";

pub const STAGE_QUEUE: u8 = 0;
pub const STAGE_XMIT: u8 = 1;

pub const KIND_QUEUE_BUCKET: u8 = 0;
pub const KIND_QUEUE_SUM: u8 = 1;
pub const KIND_XMIT_BUCKET: u8 = 2;
pub const KIND_XMIT_SUM: u8 = 3;

/// Index in `probe_params` of the qdisc time threshold for events, in nanoseconds.
pub const PARAM_QUEUE_NS: usize = 0;
/// Index in `probe_params` of the driver time threshold for events, in nanoseconds.
pub const PARAM_XMIT_NS: usize = 1;
/// Index in `probe_params` of the sampling rate: each stage of a packet is timed with a
/// chance of one in this many (0 or 1: every packet).
pub const PARAM_SAMPLE_EVERY: usize = 2;

/// The `stage` field of an event.
pub fn stage_name(stage: u8) -> &'static str {
    if stage == STAGE_XMIT {
        "xmit"
    } else {
        "queue"
    }
}

/// `struct netdev_iface`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iface {
    pub netns: Netns,
    pub ifindex: u32,
    pub pad: u32,
}

/// `struct netdev_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub iface: Iface,
    pub kind: u8,
    pub slot: u8,
    pub pad: [u8; 6],
}

/// `struct netdev_name`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Name(pub [u8; 16]);

/// `struct netdev_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub duration_ns: u64,
    pub netns: Netns,
    pub ifindex: u32,
    pub len: u32,
    pub stage: u8,
    pub pad: [u8; 3],
    pub name: [u8; 16],
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

/// A NUL-terminated interface name.
pub fn ifname(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

const _: () = {
    assert!(size_of::<Iface>() == 24);
    assert!(size_of::<Key>() == 32);
    assert!(offset_of!(Key, kind) == 24);
    assert!(offset_of!(Key, slot) == 25);
    assert!(size_of::<Name>() == 16);
    assert!(size_of::<Record>() == 64);
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, duration_ns) == 8);
    assert!(offset_of!(Record, netns) == 16);
    assert!(offset_of!(Record, ifindex) == 32);
    assert!(offset_of!(Record, len) == 36);
    assert!(offset_of!(Record, stage) == 40);
    assert!(offset_of!(Record, name) == 44);
};

// SAFETY: plain C structs of integers.
unsafe impl aya::Pod for Iface {}
unsafe impl aya::Pod for Key {}
unsafe impl aya::Pod for Name {}
