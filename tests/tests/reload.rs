//! Reload: rewriting the config file switches packet_drop off and on while the agent runs; the
//! other probes keep running and counts already reported are kept.

use std::net::SocketAddr;

use sonde_tests::{
    metric_value, poll_until, refused_connects, send_udp, Agent, AgentConfig, IpFamily, PodPair,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const DROP_PORT: u16 = 9999;
const CLOSED_PORT: u16 = 7777;
const DROPS: &str = "sonde_packet_drops_total";
const RESETS: &str = "sonde_tcp_resets_total";
const UP: &str = "sonde_probe_up";

#[test]
fn packet_drop_off_and_on() {
    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {DROP_PORT} -j DROP"),
    );
    let all_on = AgentConfig::default();
    let agent = Agent::spawn(&all_on);
    agent.wait_ready(READY_TIMEOUT);
    let drops = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    let resets = [("pod", pods.b.name()), ("direction", "sent")];

    // Counting while on, so there is a series to keep.
    let baseline = agent.metric(DROPS, &drops).unwrap_or(0.0);
    send_datagrams(&pods, 50);
    let counted = agent.wait_metric(DROPS, &drops, baseline + 50.0, SETTLE_TIMEOUT);
    assert_eq!(
        counted,
        baseline + 50.0,
        "{DROPS}{drops:?} with packet_drop on"
    );

    agent.rewrite_config(
        &AgentConfig {
            packet_drop: false,
            ..all_on.clone()
        }
        .to_yaml(),
    );
    poll_until(
        SETTLE_TIMEOUT,
        "sonde_probe_up{probe=\"packet_drop\"} to become 0 after the rewrite",
        || {
            let text = agent.metrics();
            let tcp_reset_up = metric_value(&text, UP, &[("probe", "tcp_reset")]);
            assert_eq!(
                tcp_reset_up,
                Some(1.0),
                "{UP}{{probe=\"tcp_reset\"}} while packet_drop is switched off"
            );
            (metric_value(&text, UP, &[("probe", "packet_drop")]) == Some(0.0)).then_some(())
        },
    );

    // Drops while off, then resets: once the resets are counted, the agent has seen the later
    // traffic, so an unchanged drop count is not just a slow one.
    let resets_before = agent.metric(RESETS, &resets).unwrap_or(0.0);
    send_datagrams(&pods, 200);
    refused_connects(
        &pods.a,
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), CLOSED_PORT),
        10,
    );
    agent.wait_metric(RESETS, &resets, resets_before + 10.0, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric(RESETS, &resets),
        Some(resets_before + 10.0),
        "{RESETS}{resets:?} with packet_drop off"
    );
    assert_eq!(
        agent.metric(DROPS, &drops),
        Some(counted),
        "{DROPS}{drops:?} must keep its value while packet_drop is off"
    );
    assert_eq!(
        agent.metric(UP, &[("probe", "tcp_reset")]),
        Some(1.0),
        "{UP}{{probe=\"tcp_reset\"}}"
    );

    agent.rewrite_config(&all_on.to_yaml());
    agent.wait_metric_eq(UP, &[("probe", "packet_drop")], 1.0, SETTLE_TIMEOUT);
    send_datagrams(&pods, 100);
    agent.wait_metric(DROPS, &drops, counted + 100.0, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric(DROPS, &drops),
        Some(counted + 100.0),
        "{DROPS}{drops:?} after switching packet_drop back on"
    );
}

/// `n` UDP datagrams from pod A into pod B's DROP rule.
fn send_datagrams(pods: &PodPair, n: usize) {
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), DROP_PORT),
        n,
    );
}

#[test]
fn broken_config_is_refused_and_running_config_stays() {
    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {DROP_PORT} -j DROP"),
    );
    let agent = Agent::spawn(&AgentConfig::default());
    agent.wait_ready(READY_TIMEOUT);
    let drops = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    let rejected = [("result", "rejected")];

    // An unknown key, then a value of the wrong type: each refused with its reason.
    for (broken, reason) in [
        (
            "probes:\n  packet_drop:\n    enabled: false\n    colour: red\n",
            "colour",
        ),
        (
            "probes:\n  tcp_reset:\n    enabled: maybe\n",
            "tcp_reset.enabled",
        ),
    ] {
        let before = agent
            .metric("sonde_config_reloads_total", &rejected)
            .unwrap_or(0.0);
        agent.rewrite_config(broken);
        agent.wait_metric(
            "sonde_config_reloads_total",
            &rejected,
            before + 1.0,
            SETTLE_TIMEOUT,
        );
        // The agent logs before it counts, but its stderr reaches us through a pipe.
        poll_until(
            SETTLE_TIMEOUT,
            &format!("a config rejection naming {reason} in the log"),
            || {
                agent
                    .stderr_text()
                    .lines()
                    .any(|l| l.contains("config rejected") && l.contains(reason))
                    .then_some(())
            },
        );
    }

    // Everything that ran before still runs and counts.
    for probe in ["packet_drop", "tcp_retrans", "tcp_reset"] {
        assert_eq!(
            agent.metric(UP, &[("probe", probe)]),
            Some(1.0),
            "{probe} up"
        );
    }
    send_datagrams(&pods, 40);
    agent.wait_metric(DROPS, &drops, 40.0, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(DROPS, &drops), Some(40.0));
    refused_connects(
        &pods.a,
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), CLOSED_PORT),
        3,
    );
    let resets = [("pod", pods.b.name()), ("direction", "sent")];
    agent.wait_metric(RESETS, &resets, 3.0, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(RESETS, &resets), Some(3.0));
}
