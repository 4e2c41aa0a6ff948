//! tcp_connect: handshakes between two pods are observed exactly once per side, refused and
//! timed-out connects are counted by cause, and a delayed link shows in the histogram and as
//! slow-handshake events.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sonde_tests::{
    connect_and_close, field_ip, field_u64, refused_connects, run_command, timed_out_connect,
    Agent, AgentConfig, IpFamily, PodPair, SlowPodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const DURATION: &str = "sonde_tcp_connect_duration_seconds";
const COUNT: &str = "sonde_tcp_connect_duration_seconds_count";
const BUCKET: &str = "sonde_tcp_connect_duration_seconds_bucket";
const FAILURES: &str = "sonde_tcp_connect_failures_total";
const CONNECTS: usize = 20;

/// Waits until `name{labels}` reaches `expected`, then asserts it is exactly that.
#[track_caller]
fn assert_exactly(agent: &Agent, name: &str, labels: &[(&str, &str)], expected: f64) {
    agent.wait_metric(name, labels, expected, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric(name, labels),
        Some(expected),
        "{name}{labels:?}"
    );
}

#[test]
fn each_handshake_is_observed_once_per_side() {
    let pods = PodPair::new();
    let agent = Agent::spawn(&AgentConfig::default());
    agent.wait_ready(READY_TIMEOUT);

    for family in [IpFamily::V4, IpFamily::V6] {
        let dst = SocketAddr::new(pods.b_end.ip(family), 8080);
        connect_and_close(&pods.a, &pods.b, dst, CONNECTS);
    }
    let both = 2.0 * CONNECTS as f64;
    assert_exactly(
        &agent,
        COUNT,
        &[("pod", pods.a.name()), ("side", "connect")],
        both,
    );
    assert_exactly(
        &agent,
        COUNT,
        &[("pod", pods.b.name()), ("side", "accept")],
        both,
    );
    // Neither pod did the other side's part, and nothing failed.
    assert_eq!(
        agent.metric(COUNT, &[("pod", pods.a.name()), ("side", "accept")]),
        None
    );
    assert_eq!(
        agent.metric(COUNT, &[("pod", pods.b.name()), ("side", "connect")]),
        None
    );
    assert_eq!(agent.metric(FAILURES, &[("pod", pods.a.name())]), None);
    // The +Inf bucket is the count; the sum is positive and below a second per handshake.
    let metrics = agent.metrics();
    let labels = [("pod", pods.a.name()), ("side", "connect"), ("le", "+Inf")];
    assert_eq!(
        sonde_tests::metric_value(&metrics, BUCKET, &labels),
        Some(both)
    );
    let sum = sonde_tests::metric_value(
        &metrics,
        &format!("{DURATION}_sum"),
        &[("pod", pods.a.name()), ("side", "connect")],
    )
    .expect("a _sum series");
    assert!(sum > 0.0 && sum < both, "sum {sum}");
}

#[test]
fn refused_connects_are_counted_by_cause() {
    let pods = PodPair::new();
    let agent = Agent::spawn(&AgentConfig::default());
    agent.wait_ready(READY_TIMEOUT);

    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 7777);
    refused_connects(&pods.a, dst, CONNECTS);
    let refused = [
        ("pod", pods.a.name()),
        ("side", "connect"),
        ("cause", "refused"),
    ];
    assert_exactly(&agent, FAILURES, &refused, CONNECTS as f64);
    assert_eq!(agent.metric(COUNT, &[("pod", pods.a.name())]), None);

    let related = json!({"type": "tcp_connect", "pod": pods.a.name(), "side": "connect",
                         "cause": "refused", "error": "ECONNREFUSED", "severity": "info"});
    agent.wait_for_event(SETTLE_TIMEOUT, "a refused connect event", &related, |e| {
        field_ip(e, "daddr") == Some(dst.ip())
            && field_u64(e, "dport") == Some(7777)
            && field_u64(e, "sport").is_some_and(|p| p != 0)
    });
}

#[test]
fn unanswered_syns_time_out() {
    let pods = PodPair::new();
    // One SYN retransmission: the kernel gives up after about 3 s.
    run_command(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.tcp_syn_retries=1",
        pods.a.name()
    ));
    pods.b
        .iptables(IpFamily::V4, "-A INPUT -p tcp --dport 7070 -j DROP");
    let agent = Agent::spawn(&AgentConfig::default());
    agent.wait_ready(READY_TIMEOUT);

    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 7070);
    timed_out_connect(&pods.a, dst);
    let timeout = [
        ("pod", pods.a.name()),
        ("side", "connect"),
        ("cause", "timeout"),
    ];
    assert_exactly(&agent, FAILURES, &timeout, 1.0);
    let related = json!({"type": "tcp_connect", "pod": pods.a.name(), "cause": "timeout",
                         "error": "ETIMEDOUT", "severity": "warning"});
    let event = agent.wait_for_event(SETTLE_TIMEOUT, "a timed-out connect event", &related, |e| {
        field_u64(e, "dport") == Some(7070) && field_u64(e, "sport").is_some_and(|p| p != 0)
    });
    // The SYN was sent again at least once (the timer may resend it once more just as the
    // retry budget, counted in time rather than in SYNs, runs out).
    let resent = field_u64(&event, "retransmits").expect("retransmits");
    assert!((1..=2).contains(&resent), "{event}");
    let took = event["duration_seconds"]
        .as_f64()
        .expect("duration_seconds");
    assert!((2.5..10.0).contains(&took), "timed out after {took} s");
}

#[test]
fn slow_handshakes_show_in_buckets_and_events() {
    // 25 ms each way: every handshake takes one 50 ms round trip on both sides.
    let pods = SlowPodPair::new(Duration::from_millis(25));
    let agent = Agent::spawn(&AgentConfig {
        tcp_connect_slow_threshold: "40ms".into(),
        // Every log2 bound, for the 32.8 ms one below.
        pod_histogram_buckets: "fine",
        ..AgentConfig::default()
    });
    agent.wait_ready(READY_TIMEOUT);

    const SLOW: usize = 5;
    let dst = SocketAddr::new(pods.b_ip.into(), 8080);
    connect_and_close(&pods.a, &pods.b, dst, SLOW);
    for (pod, side) in [(pods.a.name(), "connect"), (pods.b.name(), "accept")] {
        assert_exactly(&agent, COUNT, &[("pod", pod), ("side", side)], SLOW as f64);
        // 2^15 us = 32.768 ms: no handshake fits below it, all fit below 2^17 us = 131 ms.
        for (le, expected) in [("0.032768", 0.0), ("0.131072", SLOW as f64)] {
            assert_eq!(
                agent.metric(BUCKET, &[("pod", pod), ("side", side), ("le", le)]),
                Some(expected),
                "{side} handshakes of {pod} at or below {le} s"
            );
        }
        let related = json!({"type": "tcp_connect", "pod": pod, "side": side,
                             "severity": "warning"});
        let event = agent.wait_for_event(
            SETTLE_TIMEOUT,
            &format!("a slow {side} event"),
            &related,
            |e| e.get("cause").is_none(),
        );
        let took = event["duration_seconds"]
            .as_f64()
            .expect("duration_seconds");
        assert!((0.045..0.131).contains(&took), "{side} took {took} s");
    }
}
