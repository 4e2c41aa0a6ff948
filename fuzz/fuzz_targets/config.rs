//! The agent's config file: any text is a config or a one-line reason, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = sonde::config::AgentConfig::parse(text, "fuzz.yaml") {
            assert!(!e.to_string().is_empty());
        }
    }
});
