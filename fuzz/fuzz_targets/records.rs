//! Ring-buffer records of every probe with events, and what the agent makes of their 5-tuple
//! and interface names: any bytes are a record or none, never a panic.
#![no_main]
use ebpf_core::record::read_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = read_record::<ebpf_core::packet_drop::Record>(data) {
        let _ = sonde::event::Flow::from(&r.tuple);
    }
    let _ = read_record::<ebpf_core::tcp_retrans::Record>(data);
    let _ = read_record::<ebpf_core::tcp_reset::Record>(data);
    let _ = read_record::<ebpf_core::tcp_connect::Record>(data);
    let _ = read_record::<ebpf_core::softirq::Record>(data);
    let _ = read_record::<ebpf_core::netdev_latency::Record>(data);
    let _ = read_record::<ebpf_core::io_latency::Record>(data);
    let _ = read_record::<ebpf_core::stack_latency::Record>(data);
    let _ = read_record::<ebpf_core::virtio_net::Record>(data);
    if let Some(name) = read_record::<ebpf_core::netdev_latency::Name>(data) {
        let _ = ebpf_core::netdev_latency::ifname(&name.0);
    }
});
