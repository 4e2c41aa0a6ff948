//! The first-party plugins (built by `cargo xtask plugins` into target/bundles), each loaded
//! by the agent and driven by known traffic between pods: the metrics and events their
//! READMEs promise.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;
use sonde_tests::{
    bulk_transfer, copy_bundle, field_str, first_party_bundle, poll_until, refused_connects,
    send_udp, Agent, IpFamily, PodPair, TempDir, READY_TIMEOUT, SETTLE_TIMEOUT,
};

/// Copies a built bundle into `plugins/<name>`, with `spec.config` replaced by `config`.
fn install(plugins: &Path, name: &str, config: &str) {
    let to = plugins.join(name);
    copy_bundle(&first_party_bundle(name), &to).unwrap();
    let manifest = std::fs::read_to_string(to.join("plugin.yaml")).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in manifest.lines() {
        if line.starts_with("  config:") {
            out += &format!("  config: {config}\n");
            skipping = true;
            continue;
        }
        if skipping && line.starts_with("    ") {
            continue;
        }
        skipping = false;
        out += line;
        out.push('\n');
    }
    std::fs::write(to.join("plugin.yaml"), out).unwrap();
}

fn agent(plugins: &Path) -> Agent {
    let agent = Agent::spawn_yaml(&format!(
        "node: sonde-test-node\nprobes:\n  packet_drop: {{events: {{ratePerCpu: 0}}}}\n  tcp_retrans: {{events: {{ratePerCpu: 0}}}}\n  \
         tcp_reset: {{events: {{ratePerCpu: 0}}}}\nplugins:\n  dirs: [{}]\n",
        plugins.display()
    ));
    agent.wait_ready(READY_TIMEOUT);
    agent
}

fn events_of<'a>(events: &'a [Value], kind: &str, pod: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| field_str(e, "type") == Some(kind) && field_str(e, "pod") == Some(pod))
        .collect()
}

#[test]
fn drop_explainer_explains_netfilter_and_closed_ports() {
    let dir = TempDir::new();
    install(dir.path(), "drop-explainer", "{maxEventsPerTick: 100}");
    let pods = PodPair::new();
    pods.b
        .iptables(IpFamily::V4, "-A INPUT -p udp --dport 9999 -j DROP");
    let agent = agent(dir.path());
    let b = pods.b_end.ip(IpFamily::V4);
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(b, 9999),
        40,
    );
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(b, 5353),
        10,
    );

    let netfilter = [("pod", pods.b.name()), ("rule_class", "netfilter")];
    agent.wait_metric(
        "sonde_plugin_drops_explained_total",
        &netfilter,
        40.0,
        SETTLE_TIMEOUT,
    );
    assert_eq!(
        agent.metric("sonde_plugin_drops_explained_total", &netfilter),
        Some(40.0)
    );
    // Explanations are aggregated per tick: their counts add up to the drops.
    let sum = |reason: &str| {
        events_of(&agent.events(), "drop_explained", pods.b.name())
            .iter()
            .filter(|e| field_str(e, "reason") == Some(reason))
            .map(|e| e["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    poll_until(
        SETTLE_TIMEOUT,
        "explanations of the 40 netfilter drops",
        || (sum("NETFILTER_DROP") == 40).then_some(()),
    );
    poll_until(
        SETTLE_TIMEOUT,
        "explanations of the 10 drops at a closed port",
        || (sum("NO_SOCKET") == 10).then_some(()),
    );
    let events = agent.events();
    let explained = events_of(&events, "drop_explained", pods.b.name());
    let closed = explained
        .iter()
        .find(|e| field_str(e, "reason") == Some("NO_SOCKET"))
        .expect("a NO_SOCKET explanation");
    assert_eq!(field_str(closed, "rule_class"), Some("socket"), "{closed}");
    assert!(
        field_str(closed, "advice").is_some_and(|a| a.contains("udp port 5353")),
        "{closed}"
    );
    assert_eq!(
        field_str(closed, "source"),
        Some("plugin:drop-explainer"),
        "{closed}"
    );
    let nf = explained
        .iter()
        .find(|e| field_str(e, "reason") == Some("NETFILTER_DROP"))
        .expect("a NETFILTER_DROP explanation");
    assert_eq!(field_str(nf, "rule_class"), Some("netfilter"), "{nf}");
    assert!(
        field_str(nf, "advice").is_some_and(|a| a.contains("iptables")),
        "{nf}"
    );
}

#[test]
fn retrans_storm_reports_a_storm_once() {
    let dir = TempDir::new();
    install(
        dir.path(),
        "retrans-storm",
        "{windowSeconds: 10, threshold: 5}",
    );
    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        "-A INPUT -p tcp --dport 8080 -m statistic --mode random --probability 0.1 -j DROP",
    );
    let agent = agent(dir.path());
    bulk_transfer(
        &pods.a,
        &pods.b,
        pods.b_end.ip(IpFamily::V4),
        8080,
        16 << 20,
    );

    let a = [("pod", pods.a.name())];
    agent.wait_metric("sonde_tcp_retransmits_total", &a, 5.0, SETTLE_TIMEOUT);
    agent.wait_metric("sonde_plugin_retrans_storm_total", &a, 1.0, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric("sonde_plugin_retrans_storm_total", &a),
        Some(1.0),
        "one storm started"
    );
    assert_eq!(
        agent.metric("sonde_plugin_retrans_storm_active", &a),
        Some(1.0)
    );
    let event = poll_until(SETTLE_TIMEOUT, "a retrans_storm event for pod A", || {
        events_of(&agent.events(), "retrans_storm", pods.a.name())
            .first()
            .map(|e| (*e).clone())
    });
    assert!(
        event["retransmits"].as_u64().is_some_and(|n| n >= 5),
        "{event}"
    );
    assert_eq!(event["window_seconds"].as_u64(), Some(10), "{event}");
    assert_eq!(field_str(&event, "severity"), Some("warning"), "{event}");
}

#[test]
fn label_enricher_labels_a_pods_events() {
    let dir = TempDir::new();
    install(
        dir.path(),
        "label-enricher",
        "{rules: [{pod: \"sonde-t-*-b\", labels: {app: checkout, tier: backend}}]}",
    );
    let pods = PodPair::new();
    pods.b
        .iptables(IpFamily::V4, "-A INPUT -p udp --dport 9999 -j DROP");
    let agent = agent(dir.path());
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999);
    // The first events of a workload go out before the plugin's answer arrives.
    let labelled = poll_until(SETTLE_TIMEOUT, "a drop event of pod B with labels", || {
        send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 1);
        events_of(&agent.events(), "packet_drop", pods.b.name())
            .into_iter()
            .find(|e| e.get("labels").is_some())
            .cloned()
    });
    assert_eq!(
        labelled["labels"],
        serde_json::json!({"app": "checkout", "tier": "backend"})
    );
    // Pod A matches no rule: no labels.
    assert!(agent
        .events()
        .iter()
        .filter(|e| field_str(e, "pod") == Some(pods.a.name()))
        .all(|e| e.get("labels").is_none()));
}

#[test]
fn reset_report_py_counts_every_reset() {
    let dir = TempDir::new();
    install(dir.path(), "reset-report-py", "{threshold: 5}");
    let pods = PodPair::new();
    let agent = agent(dir.path());
    refused_connects(
        &pods.a,
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), 7777),
        20,
    );
    let sent = [("pod", pods.b.name()), ("direction", "sent")];
    agent.wait_metric(
        "sonde_plugin_resets_reported_total",
        &sent,
        20.0,
        SETTLE_TIMEOUT,
    );
    assert_eq!(
        agent.metric("sonde_plugin_resets_reported_total", &sent),
        Some(20.0)
    );
    let received = [("pod", pods.a.name()), ("direction", "received")];
    agent.wait_metric(
        "sonde_plugin_resets_reported_total",
        &received,
        20.0,
        SETTLE_TIMEOUT,
    );
    assert_eq!(
        agent.metric("sonde_plugin_resets_reported_total", &received),
        Some(20.0)
    );
    poll_until(SETTLE_TIMEOUT, "a reset_report event for pod B", || {
        events_of(&agent.events(), "reset_report", pods.b.name())
            .first()
            .map(|_| ())
    });
}

#[test]
fn drop_budget_js_flags_a_pod_over_budget() {
    let dir = TempDir::new();
    install(dir.path(), "drop-budget-js", "{budget: 10}");
    let pods = PodPair::new();
    pods.b
        .iptables(IpFamily::V4, "-A INPUT -p udp --dport 9999 -j DROP");
    let agent = agent(dir.path());
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999),
        100,
    );
    let event = poll_until(
        SETTLE_TIMEOUT,
        "a drop_budget_exceeded event for pod B",
        || {
            events_of(&agent.events(), "drop_budget_exceeded", pods.b.name())
                .first()
                .map(|e| (*e).clone())
        },
    );
    assert_eq!(event["budget"].as_u64(), Some(10), "{event}");
    assert!(
        event["drops"]
            .as_u64()
            .is_some_and(|d| d > 10 && d <= 100 + 20),
        "{event}"
    );
    assert_eq!(
        field_str(&event, "source"),
        Some("plugin:drop-budget-js"),
        "{event}"
    );
    // Namespace inodes are above 2^31, which componentize-js 0.23.0 lowers wrongly into `emit`
    // (the low half of a double) unless the plugin's build.mjs works around it: exact value.
    assert_eq!(event["netns"].as_u64(), Some(pods.b.inode()), "{event}");
    let used = agent
        .metric("sonde_plugin_drop_budget_used", &[("pod", pods.b.name())])
        .expect("the budget gauge of pod B");
    assert!(used > 0.0, "{used}");
}
