//! packet_drop: UDP datagrams dropped by an iptables rule in pod B are counted exactly, with
//! reason NETFILTER_DROP (NOT_SPECIFIED on kernels without drop reasons), and reported as events with their 5-tuple and drop location.

use std::net::SocketAddr;

use serde_json::json;
use sonde_tests::{
    drop_reason, field_ip, field_str, field_u64, send_udp, Agent, AgentConfig, IpFamily, PodPair,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 9999;
const DATAGRAMS: usize = 500;
const DROPS: &str = "sonde_packet_drops_total";

#[test]
fn udp_into_drop_rule_ipv4() {
    udp_into_drop_rule(IpFamily::V4);
}

#[test]
fn udp_into_drop_rule_ipv6() {
    udp_into_drop_rule(IpFamily::V6);
}

fn udp_into_drop_rule(family: IpFamily) {
    let pods = PodPair::new();
    pods.b
        .iptables(family, &format!("-A INPUT -p udp --dport {PORT} -j DROP"));
    let agent = Agent::spawn(&AgentConfig::default());
    agent.wait_ready(READY_TIMEOUT);

    let reason = drop_reason("NETFILTER_DROP");
    let labels = [("pod", pods.b.name()), ("reason", reason)];
    let baseline = agent.metric(DROPS, &labels).unwrap_or(0.0);
    let dst = SocketAddr::new(pods.b_end.ip(family), PORT);
    let sport = send_udp(&pods.a, pods.a_end.ip(family), dst, DATAGRAMS);

    let target = baseline + DATAGRAMS as f64;
    agent.wait_metric(DROPS, &labels, target, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric(DROPS, &labels),
        Some(target),
        "{DROPS}{labels:?} after {DATAGRAMS} drops"
    );

    let related = json!({"type": "packet_drop", "pod": pods.b.name(), "reason": reason});
    agent.wait_for_event(
        SETTLE_TIMEOUT,
        &format!("a packet_drop event for UDP {sport} -> {dst}"),
        &related,
        |e| {
            field_str(e, "protocol") == Some("udp")
                && field_ip(e, "saddr") == Some(pods.a_end.ip(family))
                && field_u64(e, "sport") == Some(sport.into())
                && field_ip(e, "daddr") == Some(dst.ip())
                && field_u64(e, "dport") == Some(PORT.into())
                && field_str(e, "location").is_some_and(|l| !l.is_empty())
        },
    );
}
