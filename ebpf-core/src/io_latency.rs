//! Mirror of `io_latency.h`: the block request latency histogram key and the event record of
//! a slow request.

use std::mem::{offset_of, size_of};

use crate::{Hook, ProbeSpec, Requirement};

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "io_latency",
    description: "block I/O request latency per disk and operation; slow requests (IO hangs)",
    hooks: &[
        Hook::tp_btf("block_rq_issue", "block", "block_rq_issue"),
        Hook::tp_btf("block_rq_complete", "block", "block_rq_complete"),
    ],
    requires: &[&[
        Requirement::field("request", "q"),
        Requirement::field("request", "cmd_flags"),
        Requirement::field("request", "__sector"),
        Requirement::field("gendisk", "major"),
        Requirement::field("gendisk", "first_minor"),
        Requirement::TracepointArgs {
            tracepoint: "block_rq_complete",
            args: 3,
        },
    ]],
    counter_map: "ios",
    object: aya::include_bytes_aligned!("io_latency.bpf.o"),
};

pub const OP_READ: u8 = 0;
pub const OP_WRITE: u8 = 1;
pub const OP_OTHER: u8 = 2;

pub const KIND_BUCKET: u8 = 0;
pub const KIND_SUM: u8 = 1;

/// Index in `probe_params` of the slow-request threshold in nanoseconds.
pub const PARAM_SLOW_NS: usize = 0;

/// The `op` label.
pub fn op_name(op: u8) -> &'static str {
    match op {
        OP_READ => "read",
        OP_WRITE => "write",
        _ => "other",
    }
}

/// Major and minor numbers of a dev_t as the kernel packs it inside (`MINORBITS` = 20).
pub fn dev_major_minor(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & ((1 << 20) - 1))
}

/// `struct io_latency_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub dev: u32,
    pub op: u8,
    pub kind: u8,
    pub slot: u8,
    pub pad: u8,
}

/// `struct io_latency_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub timestamp_ns: u64,
    pub duration_ns: u64,
    pub sector: u64,
    pub dev: u32,
    pub bytes: u32,
    pub error: i32,
    pub op: u8,
    pub pad: [u8; 3],
}

// SAFETY: a #[repr(C)] struct of integers (and of plain records): every bit pattern is a value.
unsafe impl aya::Pod for Record {}

const _: () = {
    assert!(size_of::<Key>() == 8);
    assert!(offset_of!(Key, op) == 4);
    assert!(offset_of!(Key, kind) == 5);
    assert!(offset_of!(Key, slot) == 6);
    assert!(size_of::<Record>() == 40);
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, duration_ns) == 8);
    assert!(offset_of!(Record, sector) == 16);
    assert!(offset_of!(Record, dev) == 24);
    assert!(offset_of!(Record, bytes) == 28);
    assert!(offset_of!(Record, error) == 32);
    assert!(offset_of!(Record, op) == 36);
};

// SAFETY: plain C struct of integers.
unsafe impl aya::Pod for Key {}

#[cfg(test)]
mod tests {
    #[test]
    fn dev_numbers_unpack() {
        assert_eq!(super::dev_major_minor(7 << 20 | 3), (7, 3));
    }
}
