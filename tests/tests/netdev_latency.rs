//! netdev_latency: datagrams a pod sends through its veth are timed in the qdisc and the
//! driver of that interface, labelled with the pod and `eth0`; a rate-limiting qdisc shows
//! as qdisc time and as events above the threshold; with thresholds of 0 each packet is an
//! event naming the interface; with `samplePackets: N` about one packet in N is timed in
//! each stage.

use std::net::SocketAddr;

use serde_json::json;
use sonde_tests::{
    field_str, field_u64, metric_value, poll_until, run_command, send_udp, Agent, IpFamily,
    PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const QUEUE_COUNT: &str = "sonde_netdev_queue_seconds_count";
const XMIT_COUNT: &str = "sonde_netdev_xmit_seconds_count";
const XMIT_SUM: &str = "sonde_netdev_xmit_seconds_sum";
const DATAGRAMS: usize = 500;
/// Packets besides ours a fresh pod may send in the meantime (IPv6 MLD reports).
const NOISE: f64 = 10.0;

fn config(threshold: &str) -> String {
    config_with(threshold, threshold)
}

/// Every packet timed (`samplePackets: 1`), with these thresholds.
fn config_with(queue_threshold: &str, xmit_threshold: &str) -> String {
    config_sampled(queue_threshold, xmit_threshold, 1)
}

fn config_sampled(queue_threshold: &str, xmit_threshold: &str, sample_packets: u32) -> String {
    format!(
        "node: sonde-test-node\nprobes:\n\
         \x20 packet_drop: {{enabled: false}}\n  tcp_retrans: {{enabled: false}}\n\
         \x20 tcp_reset: {{enabled: false}}\n  tcp_connect: {{enabled: false}}\n\
         \x20 io_latency: {{enabled: false}}\n  softirq: {{enabled: false}}\n\
         \x20 netdev_latency:\n    enabled: true\n    queueThreshold: {queue_threshold}\n    xmitThreshold: {xmit_threshold}\n\
         \x20   samplePackets: {sample_packets}\n\
         \x20   events: {{enabled: true, ratePerCpu: 0, burst: 1000}}\n\
         sinks:\n  stdout: {{enabled: true}}\n\
         metrics:\n  podHistogramBuckets: fine\n"
    )
}

#[test]
fn datagrams_are_timed_on_the_pods_veth() {
    let pods = PodPair::new();
    let agent = Agent::spawn_yaml(&config("10s"));
    agent.wait_ready(READY_TIMEOUT);
    let eth0 = [("pod", pods.a.name()), ("interface", "eth0")];
    let before = agent.metric(XMIT_COUNT, &eth0).unwrap_or(0.0);

    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, DATAGRAMS);
    let target = before + DATAGRAMS as f64;
    let xmits = agent.wait_metric(XMIT_COUNT, &eth0, target, SETTLE_TIMEOUT);
    assert!(
        xmits <= target + NOISE,
        "{xmits} transmits for {DATAGRAMS} datagrams"
    );
    // veth has no qdisc (noqueue), but each packet still passes net_dev_queue.
    agent.wait_metric(QUEUE_COUNT, &eth0, target, SETTLE_TIMEOUT);
    // Both counts from one scrape: a noise packet may arrive between two scrapes, and one
    // may be between the two hooks at the moment of reading.
    let text = agent.metrics();
    let queued = metric_value(&text, QUEUE_COUNT, &eth0).expect("queue count");
    let xmits = metric_value(&text, XMIT_COUNT, &eth0).expect("xmit count");
    assert!(
        queued <= target + NOISE && xmits <= target + NOISE,
        "{queued} queued and {xmits} sent for {DATAGRAMS} datagrams"
    );
    assert!(
        (queued - xmits).abs() <= 1.0,
        "{queued} queued vs {xmits} sent"
    );
    let sum = agent.metric(XMIT_SUM, &eth0).expect("a _sum series");
    assert!(
        sum > 0.0 && sum < 1.0,
        "{sum} s in the driver for {xmits} packets"
    );
    // The pod that only received sent nothing but the answers of its stack (ICMP port
    // unreachable, rate-limited): far fewer packets.
    let b = agent
        .metric(XMIT_COUNT, &[("pod", pods.b.name()), ("interface", "eth0")])
        .unwrap_or(0.0);
    assert!(b < DATAGRAMS as f64 / 2.0, "pod b sent {b}");
    assert!(agent
        .metrics()
        .contains("sonde_netdev_xmit_seconds_bucket{"));
}

#[test]
fn zero_thresholds_make_every_packet_an_event() {
    let pods = PodPair::new();
    let agent = Agent::spawn_yaml(&config("0ms"));
    agent.wait_ready(READY_TIMEOUT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 20);
    for stage in ["queue", "xmit"] {
        let related = json!({"type": "netdev_latency", "pod": pods.a.name(),
                             "interface": "eth0", "stage": stage, "source": "kernel"});
        let e = agent.wait_for_event(SETTLE_TIMEOUT, "a transmit event", &related, |e| {
            // 22 bytes of payload in UDP, IPv4 and Ethernet headers.
            field_u64(e, "bytes") == Some(22 + 8 + 20 + 14)
                && field_u64(e, "ifindex").is_some_and(|i| i > 1)
                && e["duration_seconds"].as_f64().is_some_and(|d| d < 1.0)
        });
        assert_eq!(field_str(&e, "severity"), Some("warning"), "{e}");
    }
}

#[test]
fn a_shaping_qdisc_shows_as_queue_time() {
    let pods = PodPair::new();
    // 1 Mbit/s with a 1600-byte bucket: after the first ~25 datagrams of 64 bytes on the
    // wire, each waits about 0.5 ms more than the one before it.
    run_command(&format!(
        "ip netns exec {} tc qdisc add dev eth0 root tbf rate 1mbit burst 1600 latency 1s",
        pods.a.name()
    ));
    let agent = Agent::spawn_yaml(&config_with("20ms", "10s"));
    agent.wait_ready(READY_TIMEOUT);
    let eth0 = [("pod", pods.a.name()), ("interface", "eth0")];
    const SHAPED: usize = 150;
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, SHAPED);

    let queued = agent.wait_metric(QUEUE_COUNT, &eth0, SHAPED as f64, SETTLE_TIMEOUT);
    assert!(queued <= SHAPED as f64 + NOISE, "{queued} queued");
    let metrics = agent.metrics();
    let bucket = |le| {
        let labels = [eth0[0], eth0[1], ("le", le)];
        sonde_tests::metric_value(&metrics, "sonde_netdev_queue_seconds_bucket", &labels)
            .unwrap_or(0.0)
    };
    // Most waited more than 1 ms (2^10 us), and the longest tens of milliseconds.
    assert!(
        bucket("0.001024") < queued / 2.0,
        "{} of {queued} within 1 ms",
        bucket("0.001024")
    );
    assert!(bucket("0.016384") < queued, "none waited over 16 ms");
    let sum = sonde_tests::metric_value(&metrics, "sonde_netdev_queue_seconds_sum", &eth0)
        .expect("a _sum series");
    assert!((1.0..60.0).contains(&sum), "{sum} s in the qdisc");
    // Only the packets that waited at least 20 ms are events, and only in the qdisc.
    let related = json!({"type": "netdev_latency", "pod": pods.a.name(), "interface": "eth0",
                         "stage": "queue"});
    poll_until(SETTLE_TIMEOUT, "queue events", || {
        agent
            .events()
            .iter()
            .any(|e| sonde_tests::json_contains(e, &related))
            .then_some(())
    });
    for e in agent
        .events()
        .iter()
        .filter(|e| e["type"] == "netdev_latency")
    {
        assert_eq!(e["stage"], "queue", "{e}");
        assert!(e["duration_seconds"].as_f64().unwrap() >= 0.02, "{e}");
    }
}

/// With `samplePackets: 8`, each stage of a packet is timed with a chance of one in 8: of
/// 2000 datagrams, about 250 in each histogram (a standard deviation of 15), and never all.
#[test]
fn one_packet_in_sample_packets_is_timed_in_each_stage() {
    const SENT: usize = 2000;
    const EVERY: usize = 8;
    let pods = PodPair::new();
    let agent = Agent::spawn_yaml(&config_sampled("10s", "10s", EVERY as u32));
    agent.wait_ready(READY_TIMEOUT);
    let eth0 = [("pod", pods.a.name()), ("interface", "eth0")];
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, SENT);

    // Counters are read from the kernel at each scrape, and the programs ran in the sends.
    let expected = (SENT / EVERY) as f64;
    let text = agent.metrics();
    for count in [QUEUE_COUNT, XMIT_COUNT] {
        let timed = metric_value(&text, count, &eth0).unwrap_or(0.0);
        assert!(
            (expected / 2.0..=expected * 2.0 + NOISE).contains(&timed),
            "{count}: {timed} packets timed of {SENT} sent at one in {EVERY}"
        );
    }
}
