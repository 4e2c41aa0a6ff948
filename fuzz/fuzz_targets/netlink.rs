//! rtnetlink replies: link messages and attribute lists.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sonde::netlink::parse_link(data);
    for (kind, payload) in ebpf_core::netlink::attrs(data) {
        let _ = (kind, payload.len());
    }
    let _ = sonde::probes::netstat::qdisc::parse_qdisc(data);
});
