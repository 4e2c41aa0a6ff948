//! virtio_net: changing a virtio-net interface's MAC address sends exactly one control command,
//! VIRTIO_NET_CTRL_MAC ADDR_SET, synchronously (when the device offers
//! VIRTIO_NET_F_CTRL_MAC_ADDR, as qemu's does): N changes are N commands in the histogram of
//! that interface, class `mac`, command `addr_set`, and with a threshold of 0 N events. The
//! original address is put back at the end, even when the test fails.
//!
//! Skips (saying why on stderr) where the probe cannot load (no kprobes, no virtio_net
//! module) or the machine has no virtio-net interface. Nothing leaves the machine: a MAC
//! change sends no packet, and the kernel matrix's virtio-net device has a restricted user
//! network behind it.

use std::path::Path;

use serde_json::json;
use sonde_tests::{
    field_str, field_u64, only_probes_yaml, poll_until, run_command, run_sonde, Agent,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const COUNT: &str = "sonde_virtio_net_command_seconds_count";
const ERRORS: &str = "sonde_virtio_net_command_errors_total";
const CHANGES: usize = 8;

/// The first interface (by name) whose driver is virtio_net.
fn virtio_interface() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path().join("device/driver"))
                .ok()
                .and_then(|d| d.file_name().map(|n| n == "virtio_net"))
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Why the virtio_net probe cannot load here, as `sonde probes` says; `None` when it can.
fn why_not_loadable() -> Option<String> {
    let out = run_sonde(
        &["probes", "--output", "json"],
        std::time::Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let probes: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON output");
    let p = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "virtio_net")
        .unwrap_or_else(|| panic!("virtio_net not listed: {probes}"))
        .clone();
    (p["loadable"] != true).then(|| p["reason"].as_str().unwrap_or("?").to_string())
}

fn sys(interface: &str, file: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/class/net").join(interface).join(file))
        .unwrap_or_else(|e| panic!("cannot read {file} of {interface}: {e}"))
        .trim()
        .to_string()
}

/// Puts the interface's MAC address back when dropped.
struct RestoreMac {
    interface: String,
    original: String,
}

impl Drop for RestoreMac {
    fn drop(&mut self) {
        let out = std::process::Command::new("ip")
            .args([
                "link",
                "set",
                "dev",
                &self.interface,
                "address",
                &self.original,
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cannot restore {}'s MAC address {}: {}",
                self.interface,
                self.original,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("cannot run ip to restore {}: {e}", self.interface),
        }
    }
}

#[test]
fn mac_address_changes_are_timed_once_each() {
    let Some(interface) = virtio_interface() else {
        eprintln!("skipped: this machine has no virtio-net interface");
        return;
    };
    if let Some(why) = why_not_loadable() {
        eprintln!("skipped: the virtio_net probe cannot load here: {why}");
        return;
    }
    let ifindex: u64 = sys(&interface, "ifindex").parse().unwrap();
    let agent = Agent::spawn_yaml(&only_probes_yaml(
        "  virtio_net:\n    enabled: true\n    slowThreshold: 0ms\n\
         \x20   events: {enabled: true, ratePerCpu: 0, burst: 1000}\n",
        "",
    ));
    agent.wait_ready(READY_TIMEOUT);
    agent.wait_metric_eq(
        "sonde_probe_up",
        &[("probe", "virtio_net")],
        1.0,
        SETTLE_TIMEOUT,
    );
    let labels = [
        ("interface", interface.as_str()),
        ("class", "mac"),
        ("command", "addr_set"),
    ];
    assert_eq!(agent.metric(COUNT, &labels), None, "commands before ours");

    let _restore = RestoreMac {
        original: sys(&interface, "address"),
        interface: interface.clone(),
    };
    for i in 0..CHANGES {
        // Locally administered unicast addresses.
        run_command(&format!(
            "ip link set dev {interface} address 02:53:6f:6e:64:{:02x}",
            0x10 + i
        ));
        assert_eq!(
            sys(&interface, "address"),
            format!("02:53:6f:6e:64:{:02x}", 0x10 + i)
        );
    }

    let seen = agent.wait_metric(COUNT, &labels, CHANGES as f64, SETTLE_TIMEOUT);
    assert_eq!(seen, CHANGES as f64, "one command per change");
    assert_eq!(agent.metric(ERRORS, &labels), None, "a command failed");
    let sum = agent
        .metric("sonde_virtio_net_command_seconds_sum", &labels)
        .expect("a _sum series");
    assert!(sum > 0.0 && sum < CHANGES as f64, "{sum} s for {CHANGES}");

    let ours = json!({"type": "virtio_net", "source": "kernel", "interface": interface,
                      "class": "mac", "command": "addr_set"});
    let matching = || {
        agent
            .events()
            .into_iter()
            .filter(|e| sonde_tests::json_contains(e, &ours))
            .collect::<Vec<_>>()
    };
    poll_until(SETTLE_TIMEOUT, "an event per change", || {
        (matching().len() >= CHANGES).then_some(())
    });
    let events = matching();
    assert_eq!(events.len(), CHANGES, "one event per change");
    for e in &events {
        assert_eq!(field_u64(e, "ifindex"), Some(ifindex), "{e}");
        assert_eq!(e["ok"], true, "{e}");
        assert_eq!(field_str(e, "severity"), Some("warning"), "{e}");
        let d = e["duration_seconds"].as_f64().expect("duration_seconds");
        assert!(d > 0.0 && d < SETTLE_TIMEOUT.as_secs_f64(), "{e}");
    }
    // The count stays exact once the events are in.
    assert_eq!(agent.metric(COUNT, &labels), Some(CHANGES as f64));
}
