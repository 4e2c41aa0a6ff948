//! BTF, as /sys/kernel/btf/vmlinux or btf.path gives it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(types) = ebpf_core::btf::TypeIndex::parse(data.to_vec()) {
        let _ = types.tracepoint_args("kfree_skb");
    }
});
