//! Kubernetes objects as the watches deliver them (pods, nodes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<sonde::topology::kube::PodView>(data);
    let _ = serde_json::from_slice::<sonde::topology::kube::NodeView>(data);
});
