//! The in-kernel event rate limit: it counts what it suppresses and never touches the counts.
//!
//! Alone in its test binary (cargo runs test binaries one after another), because the token
//! bucket is per CPU for all drops on the machine: drops made by concurrent tests would spend
//! its tokens.

use std::net::SocketAddr;

use sonde_tests::{send_udp, Agent, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT};

const DROPS: &str = "sonde_packet_drops_total";

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

    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 500);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    agent.wait_metric(DROPS, &labels, 500.0, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric(DROPS, &labels),
        Some(500.0),
        "counting ignores the rate limit"
    );

    // Every drop of pod B is either emitted or counted as suppressed for it: its own series,
    // as drops elsewhere on the machine spend the per-CPU bucket too.
    let (emitted, suppressed_now) =
        agent.wait_drops_emitted_or_suppressed(pods.b.name(), Some("NETFILTER_DROP"), 500.0);
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
