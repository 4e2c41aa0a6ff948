//! The in-kernel event rate limit: it counts what it suppresses and never touches the counts.
//!
//! Alone in its test binary (cargo runs test binaries one after another), because the token
//! bucket is per CPU for all drops on the machine: drops made by concurrent tests would spend
//! its tokens.

use std::net::SocketAddr;

use serde_json::Value;
use sonde_tests::{
    field_str, poll_until, send_udp, Agent, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const DROPS: &str = "sonde_packet_drops_total";

fn drop_events_for(events: &[Value], pod: &str) -> usize {
    events
        .iter()
        .filter(|e| field_str(e, "type") == Some("packet_drop") && field_str(e, "pod") == Some(pod))
        .filter(|e| field_str(e, "reason") == Some("NETFILTER_DROP"))
        .count()
}

#[test]
fn rate_limit_suppresses_events_but_not_counts() {
    let pods = PodPair::new();
    pods.b
        .iptables(IpFamily::V4, "-A INPUT -p udp --dport 9999 -j DROP");
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999);
    let agent = Agent::spawn_yaml(
        "probes:\n  packet_drop:\n    events: {enabled: true, ratePerCpu: 5, burst: 5}\n  \
         tcp_retrans: {enabled: false}\n  tcp_reset: {enabled: false}\n",
    );
    agent.wait_ready(READY_TIMEOUT);
    // Pod B's own series: drops elsewhere on the machine (the host's, other tests') spend the
    // per-CPU bucket too and are counted as suppressed, but under their own namespace.
    let suppressed = [("probe", "packet_drop"), ("pod", pods.b.name())];

    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 500);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    agent.wait_metric(DROPS, &labels, 500.0, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric(DROPS, &labels),
        Some(500.0),
        "counting ignores the rate limit"
    );

    // Every drop of pod B is either emitted or counted as suppressed for it. The pod's own
    // bucket starts full, so some events get through; they reach the sink a little after the
    // suppressed count reaches the metrics, hence both in the condition.
    let (emitted, suppressed_now) = poll_until(
        SETTLE_TIMEOUT,
        "events and suppressed counts of pod B to cover its 500 drops",
        || {
            let emitted = drop_events_for(&agent.events(), pods.b.name()) as f64;
            let s = agent
                .metric("sonde_events_suppressed_total", &suppressed)
                .unwrap_or(0.0);
            (emitted >= 1.0 && emitted + s >= 500.0).then_some((emitted, s))
        },
    );
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    // A burst of 5 per CPU plus 5/s per CPU over the few seconds the test takes.
    assert!(
        emitted <= cpus * (5.0 + 5.0 * 30.0),
        "{emitted} events emitted"
    );
    assert!(
        suppressed_now >= 500.0 - emitted,
        "{suppressed_now} suppressed, {emitted} emitted"
    );
}
