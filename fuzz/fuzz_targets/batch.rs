//! What one BPF_MAP_LOOKUP_BATCH call leaves in its buffers, unpacked for the key and value
//! types the agent reads in batches: any count, sizes and bytes unpack within the buffers.
//! The input: a count (2 bytes), a value size (1 byte), then keys and values half and half.
#![no_main]
use ebpf_core::batch::{percpu_sum, unpack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [c0, c1, size, rest @ ..] = data else {
        return;
    };
    let count = usize::from(u16::from_le_bytes([*c0, *c1]));
    let value_size = usize::from(*size);
    let (keys, values) = rest.split_at(rest.len() / 2);
    let mut sum = 0u64;
    unpack::<u64>(keys, values, count, value_size, |_, v| {
        sum = sum.wrapping_add(percpu_sum(v))
    });
    unpack::<u32>(keys, values, count, value_size, |_, v| {
        assert_eq!(v.len(), value_size)
    });
    unpack::<ebpf_core::Tuple>(keys, values, count, value_size, |t, _| {
        let _ = sonde::event::Flow::from(&t);
    });
    std::hint::black_box(sum);
});
