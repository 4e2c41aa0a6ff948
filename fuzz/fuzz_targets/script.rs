//! rhai scripts as `sonde trace -e` takes them: compiled under the default limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(source) = std::str::from_utf8(data) {
        let _ = sonde::script::Script::compile(
            source,
            "-e",
            &["packet_drop", "tcp_reset"],
            sonde::script::Limits::default(),
            std::sync::Arc::new(|_: &str| {}),
        );
    }
});
