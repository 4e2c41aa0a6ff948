//! Mirror of `softirq.h`: the NET_RX/NET_TX delay and run-time histogram key and the event
//! record of a softirq that waited or ran too long.

use std::mem::{offset_of, size_of};

use crate::{Hook, ProbeSpec};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "softirq",
    description: "NET_RX and NET_TX softirq schedule delay (raise to run) and run time",
    hooks: &[
        Hook::tp_btf("softirq_raise", "irq", "softirq_raise"),
        Hook::tp_btf("softirq_entry", "irq", "softirq_entry"),
        Hook::tp_btf("softirq_exit", "irq", "softirq_exit"),
    ],
    requires: &[],
    counter_map: "softirqs",
    object: aya::include_bytes_aligned!("softirq.bpf.o"),
};

pub const NET_TX: u8 = 2;
pub const NET_RX: u8 = 3;

pub const KIND_DELAY_BUCKET: u8 = 0;
pub const KIND_DELAY_SUM: u8 = 1;
pub const KIND_RUN_BUCKET: u8 = 2;
pub const KIND_RUN_SUM: u8 = 3;

pub const STAGE_DELAY: u8 = 0;
pub const STAGE_RUN: u8 = 1;

/// Index in `probe_params` of the delay threshold for events, in nanoseconds.
pub const PARAM_DELAY_NS: usize = 0;
/// Index in `probe_params` of the run-time threshold for events, in nanoseconds.
pub const PARAM_RUN_NS: usize = 1;

/// The `vec` label: the vector's name as /proc/softirqs shows it.
pub fn vec_name(vec: u8) -> &'static str {
    match vec {
        NET_TX => "NET_TX",
        NET_RX => "NET_RX",
        _ => "OTHER",
    }
}

/// Counters per vector and kind in the `softirqs` array (`SOFTIRQ_SLOTS`).
pub const SLOTS: usize = crate::record::LOG2_SLOTS + 1;
/// Entries of the `softirqs` array (`SOFTIRQ_COUNTERS`).
pub const COUNTERS: usize = 2 * 4 * SLOTS;

/// What index `i` of the `softirqs` array counts (the inverse of `SOFTIRQ_INDEX`).
pub fn key_of(i: usize) -> Key {
    let (vec_kind, slot) = (i / SLOTS, i % SLOTS);
    Key {
        vec: if vec_kind / 4 == 1 { NET_RX } else { NET_TX },
        kind: (vec_kind % 4) as u8,
        slot: slot as u8,
        pad: 0,
    }
}

/// `struct softirq_key`: what a counter of the `softirqs` array counts.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub vec: u8,
    pub kind: u8,
    pub slot: u8,
    pub pad: u8,
}

/// `struct softirq_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub duration_ns: u64,
    pub cpu: u32,
    pub vec: u8,
    pub stage: u8,
    pub pad: [u8; 2],
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Key>() == 4);
    assert!(offset_of!(Key, kind) == 1);
    assert!(offset_of!(Key, slot) == 2);
    assert!(size_of::<Record>() == 24);
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, duration_ns) == 8);
    assert!(offset_of!(Record, cpu) == 16);
    assert!(offset_of!(Record, vec) == 20);
    assert!(offset_of!(Record, stage) == 21);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_decode_as_softirq_index_encodes() {
        // SOFTIRQ_INDEX(vec, kind, slot) = ((vec & 1) * 4 + kind) * SLOTS + slot
        let k = key_of((4 + KIND_RUN_BUCKET as usize) * SLOTS + 5);
        assert_eq!((k.vec, k.kind, k.slot), (NET_RX, KIND_RUN_BUCKET, 5));
        let k = key_of(KIND_DELAY_SUM as usize * SLOTS);
        assert_eq!((k.vec, k.kind, k.slot), (NET_TX, KIND_DELAY_SUM, 0));
        assert_eq!(key_of(COUNTERS - 1).vec, NET_RX);
    }
}
