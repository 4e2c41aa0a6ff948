//! io_latency: direct I/O to a loop device (its own disk, which nothing else touches) gives
//! exactly one write request per block written and at least one read per block read, in the
//! histogram of that device; with a threshold of 0 each request is an event, and the threshold
//! changes while the agent runs without losing counts.

use std::time::Duration;

use serde_json::json;
use sonde_tests::{
    field_str, field_u64, poll_until, Agent, LoopDevice, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const COUNT: &str = "sonde_io_latency_seconds_count";
const SUM: &str = "sonde_io_latency_seconds_sum";
const BLOCKS: usize = 64;

fn config(threshold: &str) -> String {
    format!(
        "node: sonde-test-node\nprobes:\n\
         \x20 packet_drop: {{enabled: false}}\n  tcp_retrans: {{enabled: false}}\n\
         \x20 tcp_reset: {{enabled: false}}\n  tcp_connect: {{enabled: false}}\n\
         \x20 softirq: {{enabled: false}}\n\
         \x20 io_latency:\n    enabled: true\n    slowThreshold: {threshold}\n\
         \x20   events: {{enabled: true, ratePerCpu: 0, burst: 1000}}\n\
         sinks:\n  stdout: {{enabled: true}}\n"
    )
}

#[test]
fn direct_io_is_timed_per_request_on_its_device() {
    let disk = LoopDevice::new();
    let agent = Agent::spawn_yaml(&config("10s"));
    agent.wait_ready(READY_TIMEOUT);
    // udev may still be reading the new device (blkid): only writes are exact.
    let write = [("device", disk.name()), ("op", "write")];
    let read = [("device", disk.name()), ("op", "read")];
    let reads_before = agent.metric(COUNT, &read).unwrap_or(0.0);
    assert_eq!(
        agent.metric(COUNT, &write),
        None,
        "writes before the test wrote"
    );

    disk.dd(true, BLOCKS);
    agent.wait_metric(COUNT, &write, BLOCKS as f64, SETTLE_TIMEOUT);
    // Settled: no write request beyond ours shows up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.metric(COUNT, &write), Some(BLOCKS as f64));
    let sum = agent.metric(SUM, &write).expect("a _sum series");
    assert!(
        sum > 0.0 && sum < BLOCKS as f64,
        "{sum} s for {BLOCKS} writes"
    );

    disk.dd(false, BLOCKS);
    agent.wait_metric(COUNT, &read, reads_before + BLOCKS as f64, SETTLE_TIMEOUT);
    // The backing file's disk has its own series; nothing is labelled with a pod.
    let metrics = agent.metrics();
    let series = sonde_tests::metric_series(&metrics, COUNT);
    assert!(series
        .iter()
        .all(|(labels, _)| labels.iter().all(|(k, _)| k != "pod")));
}

#[test]
fn zero_threshold_makes_every_request_an_event() {
    let disk = LoopDevice::new();
    let agent = Agent::spawn_yaml(&config("0ms"));
    agent.wait_ready(READY_TIMEOUT);
    disk.dd(true, BLOCKS);
    let related = json!({"type": "io_latency", "device": disk.name(), "dev": disk.dev(),
                         "op": "write", "source": "kernel", "severity": "warning"});
    poll_until(SETTLE_TIMEOUT, "an event per write", || {
        let n = agent
            .events()
            .iter()
            .filter(|e| sonde_tests::json_contains(e, &related))
            .count();
        (n >= BLOCKS).then_some(())
    });
    let events: Vec<_> = agent
        .events()
        .into_iter()
        .filter(|e| sonde_tests::json_contains(e, &related))
        .collect();
    assert_eq!(events.len(), BLOCKS, "one event per write");
    let mut sectors: Vec<u64> = events
        .iter()
        .map(|e| {
            assert_eq!(field_u64(e, "bytes"), Some(4096), "{e}");
            assert!(field_str(e, "error").is_none(), "{e}");
            field_u64(e, "sector").expect("sector")
        })
        .collect();
    sectors.sort();
    // Block i of 4 KiB starts at 512-byte sector 8 * i.
    let expected: Vec<u64> = (0..BLOCKS as u64).map(|i| 8 * i).collect();
    assert_eq!(sectors, expected);
}

#[test]
fn threshold_changes_apply_live() {
    let disk = LoopDevice::new();
    let agent = Agent::spawn_yaml(&config("10s"));
    agent.wait_ready(READY_TIMEOUT);
    let write = [("device", disk.name()), ("op", "write")];
    disk.dd(true, BLOCKS);
    agent.wait_metric(COUNT, &write, BLOCKS as f64, SETTLE_TIMEOUT);
    let ours = |e: &serde_json::Value| e["type"] == "io_latency" && e["device"] == disk.name();
    assert!(!agent.events().iter().any(ours), "an event below 10 s");

    agent.rewrite_config(&config("0ms"));
    poll_until(SETTLE_TIMEOUT, "the probe to be reconfigured", || {
        agent
            .stderr_text()
            .contains("probe reconfigured probe=\"io_latency\"")
            .then_some(())
    });
    disk.dd(true, BLOCKS);
    poll_until(
        SETTLE_TIMEOUT,
        "an event per write after the change",
        || (agent.events().iter().filter(|e| ours(e)).count() >= BLOCKS).then_some(()),
    );
    // Reconfigured in place: the counts from before the change are still there.
    agent.wait_metric(COUNT, &write, 2.0 * BLOCKS as f64, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(COUNT, &write), Some(2.0 * BLOCKS as f64));
}
