//! Events on stdout: every line is one JSON object with the common fields of the event contract,
//! and kernel events name the pod and network namespace they happened in.

use std::net::SocketAddr;

use serde_json::{json, Value};
use sonde_tests::{
    field_str, field_u64, is_rfc3339, refused_connects, send_udp, unique_suffix, Agent,
    AgentConfig, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const DROP_PORT: u16 = 9999;
const CLOSED_PORT: u16 = 7777;
const KERNEL_TYPES: [&str; 3] = ["packet_drop", "tcp_retrans", "tcp_reset"];

#[test]
fn every_line_is_a_json_event() {
    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {DROP_PORT} -j DROP"),
    );
    let node = format!("sonde-json-{}", unique_suffix());
    let agent = Agent::spawn(&AgentConfig {
        node: node.clone(),
        ..AgentConfig::default()
    });
    agent.wait_ready(READY_TIMEOUT);

    let b_ip = pods.b_end.ip(IpFamily::V4);
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(b_ip, DROP_PORT),
        10,
    );
    refused_connects(&pods.a, SocketAddr::new(b_ip, CLOSED_PORT), 3);
    for kind in ["packet_drop", "tcp_reset"] {
        let related = json!({"type": kind, "pod": pods.b.name()});
        agent.wait_for_event(
            SETTLE_TIMEOUT,
            &format!("a {kind} event in pod B"),
            &related,
            |_| true,
        );
    }

    let lines = agent.stdout_lines();
    let b_netns = pods.b.inode();
    for (i, line) in lines.iter().enumerate() {
        let at = format!("stdout line {}: {line}", i + 1);
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}) at {at}"));
        assert!(event.is_object(), "not a JSON object at {at}");
        for key in ["type", "severity", "namespace", "pod", "source"] {
            assert!(
                field_str(&event, key).is_some(),
                "`{key}` missing or not a string at {at}"
            );
        }
        assert!(
            field_str(&event, "time").is_some_and(is_rfc3339),
            "`time` is not RFC 3339 at {at}"
        );
        assert_eq!(
            field_str(&event, "node"),
            Some(node.as_str()),
            "`node` at {at}"
        );
        assert!(
            field_u64(&event, "netns").is_some(),
            "`netns` missing or not a number at {at}"
        );
        if field_str(&event, "type").is_some_and(|t| KERNEL_TYPES.contains(&t)) {
            assert_eq!(
                field_str(&event, "source"),
                Some("kernel"),
                "`source` of a kernel event at {at}"
            );
        }
        if field_str(&event, "pod") == Some(pods.b.name()) {
            assert_eq!(
                field_str(&event, "namespace"),
                Some(""),
                "`namespace` of a named netns at {at}"
            );
            assert_eq!(
                field_u64(&event, "netns"),
                Some(b_netns),
                "`netns` of pod B (inode {b_netns}) at {at}"
            );
        }
    }
}
