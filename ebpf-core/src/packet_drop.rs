//! Mirror of `packet_drop.h`: the drop counter key and the per-drop event record.

use std::mem::{offset_of, size_of};

use crate::record::{Netns, Tuple};
use crate::{requires, Hook, OlderProgram, ProbeSpec};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "packet_drop",
    description:
        "packets the kernel drops, by reason, with the dropping function and optional stack",
    // kfree_skb's signature by kernel: see packet_drop.bpf.c.
    hooks: &[Hook::tp_btf_by_args(
        "packet_drop",
        "skb",
        "kfree_skb",
        4,
        &[
            OlderProgram {
                args: 3,
                program: "packet_drop_reason",
                degraded: None,
            },
            OlderProgram {
                args: 2,
                program: "packet_drop_noreason",
                degraded: Some(
                    "no drop reasons before Linux 5.17: every drop is counted with \
                     reason=\"NOT_SPECIFIED\"",
                ),
            },
        ],
    )],
    requires: &[
        requires::SOCK_NETNS,
        requires::SKB_NETNS,
        requires::SKB_TUPLE,
    ],
    counter_map: "drops",
    object: aya::include_bytes_aligned!("packet_drop.bpf.o"),
};

/// Name of the stack trace map (kernel stacks of dropped packets, when enabled).
pub const STACK_MAP: &str = "stacks";

/// `PACKET_DROP_NO_REASON`: the reason of drops on kernels whose kfree_skb passes none.
pub const NO_REASON: u32 = 0xffff_ffff;

/// `struct packet_drop_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: Netns,
    pub reason: u32,
    pub pad: u32,
}

/// `struct packet_drop_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub location: u64,
    pub netns: Netns,
    pub reason: u32,
    pub stack_id: i32,
    pub tuple: Tuple,
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Key>() == 24);
    assert!(size_of::<Record>() == 80);
    // sonde_event_start stamps the first field of every record.
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, location) == 8);
    assert!(offset_of!(Record, netns) == 16);
    assert!(offset_of!(Record, reason) == 32);
    assert!(offset_of!(Record, stack_id) == 36);
    assert!(offset_of!(Record, tuple) == 40);
};

// SAFETY: plain C struct of integers.
unsafe impl aya::Pod for Key {}
