//! /proc/kallsyms, and looking addresses up in it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let symbols = sonde::kallsyms::Kallsyms::parse(text);
        for ip in [0, 1, u64::MAX, 0xffff_ffff_8100_0000] {
            let _ = symbols.name(ip);
            let _ = symbols.frame(ip);
        }
    }
});
