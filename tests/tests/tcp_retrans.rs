//! tcp_retrans: a bulk transfer from pod A into pod B through 10 % random loss makes A retransmit;
//! the retransmits are counted for A and reported as events with the flow's 5-tuple and state.

use std::net::SocketAddr;

use serde_json::json;
use sonde_tests::{
    bulk_transfer, field_ip, field_str, field_u64, Agent, AgentConfig, IpFamily, PodPair,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 5201;
// Veth segments are up to 64 KiB (GSO): 16 MiB is a few hundred of them, so at 10 % loss some
// are certain to be dropped.
const BYTES: usize = 16 << 20;
const RETRANSMITS: &str = "sonde_tcp_retransmits_total";

#[test]
fn bulk_transfer_through_loss() {
    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        &format!(
            "-A INPUT -p tcp --dport {PORT} -m statistic --mode random --probability 0.1 -j DROP"
        ),
    );
    let agent = Agent::spawn(&AgentConfig::default());
    agent.wait_ready(READY_TIMEOUT);

    let labels = [("pod", pods.a.name())];
    let baseline = agent.metric(RETRANSMITS, &labels).unwrap_or(0.0);

    let server_addr = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    let client_port = bulk_transfer(&pods.a, &pods.b, server_addr.ip(), PORT, BYTES);

    agent.wait_metric(RETRANSMITS, &labels, baseline + 1.0, SETTLE_TIMEOUT);

    let related = json!({"type": "tcp_retrans", "pod": pods.a.name()});
    let what = format!(
        "a tcp_retrans event for {}:{client_port} -> {server_addr} in state ESTABLISHED",
        pods.a_end.ipv4
    );
    agent.wait_for_event(SETTLE_TIMEOUT, &what, &related, |e| {
        field_ip(e, "saddr") == Some(pods.a_end.ip(IpFamily::V4))
            && field_u64(e, "sport") == Some(client_port.into())
            && field_ip(e, "daddr") == Some(server_addr.ip())
            && field_u64(e, "dport") == Some(PORT.into())
            && field_str(e, "state") == Some("ESTABLISHED")
    });
}
