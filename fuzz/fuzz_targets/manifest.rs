//! Plugin and script bundle manifests (plugin.yaml, from a folder or a ConfigMap's data).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sonde::plugin_host::manifest::Manifest::parse(text, "plugin.yaml");
    }
});
