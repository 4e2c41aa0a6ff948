//! Bundle ConfigMaps as the API watch delivers them (JSON, `binaryData` in base64), made into
//! a bundle as the agent makes them: any object is a bundle or a reason, never a panic.
#![no_main]
use k8s_openapi::api::core::v1::ConfigMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cm) = serde_json::from_slice::<ConfigMap>(data) {
        let _ = sonde::plugin_host::configmap::bundle(&cm);
    }
});
