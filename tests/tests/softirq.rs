//! softirq: traffic between two pods runs NET_RX softirqs, which fill the delay and run-time
//! histograms of that vector (and of no other), bounded by the time that passed; with a
//! threshold of 0 every softirq is an event.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde_json::json;
use sonde_tests::{
    bulk_transfer, send_udp, Agent, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const DELAY_COUNT: &str = "sonde_softirq_delay_seconds_count";
const RUN_COUNT: &str = "sonde_softirq_duration_seconds_count";
const RUN_SUM: &str = "sonde_softirq_duration_seconds_sum";

fn config(delay_threshold: &str) -> String {
    format!(
        "node: sonde-test-node\nprobes:\n\
         \x20 packet_drop: {{enabled: false}}\n  tcp_retrans: {{enabled: false}}\n\
         \x20 tcp_reset: {{enabled: false}}\n  tcp_connect: {{enabled: false}}\n\
         \x20 io_latency: {{enabled: false}}\n\
         \x20 softirq:\n    enabled: true\n    delayThreshold: {delay_threshold}\n    durationThreshold: 10s\n\
         \x20   events: {{enabled: true, ratePerCpu: 100, burst: 100}}\n\
         sinks:\n  stdout: {{enabled: true}}\n"
    )
}

#[test]
fn traffic_between_pods_fills_net_rx_histograms() {
    let pods = PodPair::new();
    let agent = Agent::spawn_yaml(&config("10s"));
    agent.wait_ready(READY_TIMEOUT);
    let started = Instant::now();
    let rx = [("vec", "NET_RX")];
    let runs_before = agent.metric(RUN_COUNT, &rx).unwrap_or(0.0);
    let delays_before = agent.metric(DELAY_COUNT, &rx).unwrap_or(0.0);

    // Every segment crosses the veth with netif_rx, which raises NET_RX on the sending CPU.
    bulk_transfer(
        &pods.a,
        &pods.b,
        pods.b_end.ip(IpFamily::V4),
        5201,
        32 << 20,
    );
    agent.wait_metric(RUN_COUNT, &rx, runs_before + 1.0, SETTLE_TIMEOUT);
    agent.wait_metric(DELAY_COUNT, &rx, delays_before + 1.0, SETTLE_TIMEOUT);
    // From one scrape: each run was raised first (a delay) and each delay led to a run, but
    // for runs underway when the counters were read and a few raised before the probe
    // attached, at most one per CPU either way.
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let metrics = agent.metrics();
    let value = |name| sonde_tests::metric_value(&metrics, name, &rx).expect(name);
    let (runs, delays) = (value(RUN_COUNT), value(DELAY_COUNT));
    assert!(
        (delays - runs).abs() <= 2.0 * cpus,
        "{delays} delays vs {runs} runs"
    );
    // The run times add up to less than the wall time this test had on every CPU.
    let sum = value(RUN_SUM);
    let bound = started.elapsed().as_secs_f64() * cpus;
    assert!(
        sum > 0.0 && sum < bound,
        "NET_RX ran {sum} s in {bound} CPU-seconds"
    );
    // Only the two network vectors are timed; no series carries a pod.
    for (labels, _) in sonde_tests::metric_series(&metrics, RUN_COUNT) {
        let vec = labels
            .iter()
            .find(|(k, _)| k == "vec")
            .map(|(_, v)| v.as_str());
        assert!(matches!(vec, Some("NET_RX" | "NET_TX")), "{labels:?}");
        assert!(labels.iter().all(|(k, _)| k != "pod"), "{labels:?}");
    }
}

#[test]
fn zero_threshold_makes_every_delay_an_event() {
    let pods = PodPair::new();
    let agent = Agent::spawn_yaml(&config("0ms"));
    agent.wait_ready(READY_TIMEOUT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999);
    let src: IpAddr = pods.a_end.ip(IpFamily::V4);
    send_udp(&pods.a, src, dst, 200);
    let related = json!({"type": "softirq", "vec": "NET_RX", "stage": "delay",
                         "severity": "warning", "source": "kernel", "pod": ""});
    let event = agent.wait_for_event(SETTLE_TIMEOUT, "a NET_RX delay event", &related, |e| {
        e["duration_seconds"].as_f64().is_some_and(|d| d >= 0.0) && e["cpu"].is_u64()
    });
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(event["cpu"].as_u64().unwrap() < cpus.max(64), "{event}");
    // The run-time threshold (10 s) was never reached.
    assert!(
        !agent
            .events()
            .iter()
            .any(|e| e["type"] == "softirq" && e["stage"] == "run"),
        "a run event below its threshold"
    );
}
