//! Mirror of `stack_latency.h`: the per-stage latency counters and the event record of a
//! packet slow in one stage of the kernel's IP layer.

use std::mem::{offset_of, size_of};

use crate::record::{Netns, Tuple};
use crate::{requires, Hook, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "stack_latency",
    description: "time received IPv4 packets spend in each stage of the IP layer \
        (receive, forward); packets slow in one stage",
    hooks: &[
        Hook::fentry("ip_rcv_core_exit", "ip_rcv_core", true),
        Hook::fentry("ip_local_deliver_entry", "ip_local_deliver", false),
        Hook::fentry("ip_forward_entry", "ip_forward", false),
        Hook::fentry("ip_output_entry", "ip_output", false),
        Hook::kprobe_instead("ip_rcv_core_kretprobe", &["ip_rcv_core"], true),
        Hook::kprobe_instead("ip_local_deliver_kprobe", &["ip_local_deliver"], false),
        Hook::kprobe_instead("ip_forward_kprobe", &["ip_forward"], false),
        Hook::kprobe_instead("ip_output_kprobe", &["ip_output"], false),
        Hook::tp_btf("kfree_skb", "skb", "kfree_skb"),
    ],
    requires: &[
        requires::SKB_NETNS,
        requires::SOCK_NETNS,
        requires::SKB_TUPLE,
        &[Requirement::field("net_device", "ifindex")],
    ],
    counter_map: "stages",
    object: aya::include_bytes_aligned!("stack_latency.bpf.o"),
};

pub const STAGE_RECEIVE_LOCAL: u8 = 0;
pub const STAGE_RECEIVE_FORWARD: u8 = 1;
pub const STAGE_FORWARD: u8 = 2;
pub const STAGES: usize = 3;

pub const KIND_BUCKET: u8 = 0;
pub const KIND_SUM: u8 = 1;

/// Index in `probe_params` of the slow-packet threshold in nanoseconds.
pub const PARAM_SLOW_NS: usize = 0;

/// Counters per stage and kind in the `stages` array (`STACK_SLOTS`).
pub const SLOTS: usize = crate::record::LOG2_SLOTS + 1;
/// Length of the `stages` array (`STACK_COUNTERS`).
pub const COUNTERS: usize = STAGES * 2 * SLOTS;

/// The `stage` label.
pub fn stage_name(stage: u8) -> &'static str {
    match stage {
        STAGE_RECEIVE_LOCAL => "receive_local",
        STAGE_RECEIVE_FORWARD => "receive_forward",
        STAGE_FORWARD => "forward",
        _ => "unknown",
    }
}

/// What slot `i` of the `stages` array counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub stage: u8,
    pub kind: u8,
    pub slot: u8,
}

/// The key of slot `i` of the `stages` array:
/// `STACK_INDEX(stage, kind, slot) = (stage * 2 + kind) * SLOTS + slot`.
pub fn key_of(i: usize) -> Key {
    let (stage_kind, slot) = (i / SLOTS, i % SLOTS);
    Key {
        stage: (stage_kind / 2) as u8,
        kind: (stage_kind % 2) as u8,
        slot: slot as u8,
    }
}

/// `struct stack_latency_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub duration_ns: u64,
    pub tuple: Tuple,
    pub netns: Netns,
    pub ifindex: u32,
    pub stage: u8,
    pub pad: [u8; 3],
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Record>() == 80);
    assert!(offset_of!(Record, duration_ns) == 8);
    assert!(offset_of!(Record, tuple) == 16);
    assert!(offset_of!(Record, netns) == 56);
    assert!(offset_of!(Record, ifindex) == 72);
    assert!(offset_of!(Record, stage) == 76);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_slots_map_to_stage_kind_and_slot() {
        // STACK_INDEX(2, 1, 0): the forward stage's sum.
        let i = (2 * 2 + 1) * SLOTS;
        assert_eq!(
            key_of(i),
            Key {
                stage: STAGE_FORWARD,
                kind: KIND_SUM,
                slot: 0
            }
        );
        assert_eq!(key_of(SLOTS - 1).slot as usize, SLOTS - 1);
        assert_eq!(key_of(COUNTERS - 1).stage as usize, STAGES - 1);
        assert_eq!(stage_name(STAGE_RECEIVE_FORWARD), "receive_forward");
    }
}
