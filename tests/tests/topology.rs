//! Standalone topology: a network namespace created after the agent started is a pod as soon
//! as traffic shows up in it, with no restart.

use std::net::SocketAddr;

use serde_json::json;
use sonde_tests::{send_udp, Agent, AgentConfig, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT};

#[test]
fn namespaces_created_while_running_are_pods() {
    let agent = Agent::spawn(&AgentConfig::default());
    agent.wait_ready(READY_TIMEOUT);

    // The pods exist only after the agent has started.
    let pods = PodPair::new();
    pods.b
        .iptables(IpFamily::V4, "-A INPUT -p udp --dport 9999 -j DROP");
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999),
        50,
    );
    let labels = [
        ("pod", pods.b.name()),
        ("namespace", ""),
        ("reason", "NETFILTER_DROP"),
    ];
    agent.wait_metric("sonde_packet_drops_total", &labels, 50.0, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric("sonde_packet_drops_total", &labels),
        Some(50.0)
    );
    agent.wait_for_event(
        SETTLE_TIMEOUT,
        "a drop event labelled with the new pod",
        &json!({"type": "packet_drop", "pod": pods.b.name(), "namespace": ""}),
        |e| e["netns"].as_u64() == Some(pods.b.inode()),
    );
}
