//! The /proc/net files netstat reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::probes::netstat::procfs;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = procfs::sections(text);
        let _ = procfs::snmp6(text);
        let _ = procfs::dev(text);
        let _ = procfs::sockstat(text);
        let _ = procfs::softnet(text);
        let _ = procfs::conntrack_stat(text);
    }
});
