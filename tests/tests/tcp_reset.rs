//! tcp_reset: connects to a closed port in pod B are refused; B's sent resets, B's NO_SOCKET
//! drops and A's received resets are counted exactly, and the sent resets are reported as events.

use std::net::SocketAddr;

use serde_json::json;
use sonde_tests::{
    drop_reason, field_ip, field_u64, refused_connects, Agent, AgentConfig, IpFamily, PodPair,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const CLOSED_PORT: u16 = 7777;
const CONNECTS: usize = 20;
const RESETS: &str = "sonde_tcp_resets_total";
const DROPS: &str = "sonde_packet_drops_total";

#[test]
fn connects_to_closed_port() {
    let pods = PodPair::new();
    let agent = Agent::spawn(&AgentConfig::default());
    agent.wait_ready(READY_TIMEOUT);

    let sent = [("pod", pods.b.name()), ("direction", "sent")];
    let received = [("pod", pods.a.name()), ("direction", "received")];
    let no_socket = [("pod", pods.b.name()), ("reason", drop_reason("NO_SOCKET"))];
    let series = [(RESETS, &sent), (RESETS, &received), (DROPS, &no_socket)];
    let baselines: Vec<f64> = series
        .iter()
        .map(|(name, labels)| agent.metric(name, &labels[..]).unwrap_or(0.0))
        .collect();

    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), CLOSED_PORT);
    refused_connects(&pods.a, dst, CONNECTS);

    for ((name, labels), baseline) in series.iter().zip(&baselines) {
        agent.wait_metric(
            name,
            &labels[..],
            baseline + CONNECTS as f64,
            SETTLE_TIMEOUT,
        );
    }
    for ((name, labels), baseline) in series.iter().zip(&baselines) {
        let expected = baseline + CONNECTS as f64;
        assert_eq!(
            agent.metric(name, &labels[..]),
            Some(expected),
            "{name}{labels:?} after {CONNECTS} refused connects"
        );
    }

    let related = json!({"type": "tcp_reset", "pod": pods.b.name(), "direction": "sent"});
    agent.wait_for_event(
        SETTLE_TIMEOUT,
        &format!("a tcp_reset event sent by {dst}"),
        &related,
        |e| {
            field_ip(e, "saddr") == Some(dst.ip())
                && field_u64(e, "sport") == Some(CLOSED_PORT.into())
                && field_ip(e, "daddr") == Some(pods.a_end.ip(IpFamily::V4))
        },
    );
}
