//! Resident scripts (`kind: Script` bundles) under real traffic: they add to /metrics and emit
//! events exactly as the traffic says, survive a reload (a broken one is refused and the old
//! version keeps counting), and a failing script is restarted and quarantined while the others
//! lose nothing.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};
use sonde_tests::{
    poll_until, run_sonde, send_udp, write_script_bundle, Agent, IpFamily, PodPair, TempDir,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 9998;
const DROPS: &str = "sonde_script_drops_total";

/// Counts drops per pod and reason, and emits one `drop_burst` event per pod at the 100th.
const COUNTER: &str = r#"
let burst = 100;

fn on_packet_drop(e) {
    metric_inc("sonde_script_drops_total", #{pod: e.pod, reason: e.reason});
    count("seen", e.pod);
    if lookup("seen", e.pod) == 100 {
        emit("drop_burst", "warning", `${e.pod} dropped 100 packets`, #{netns: e.netns, drops: 100, port: e.dport});
    }
}
"#;

fn agent(plugins: &Path) -> Agent {
    Agent::spawn_yaml(&format!(
        "probes:\n  packet_drop:\n    events: {{enabled: true, ratePerCpu: 0}}\n  tcp_retrans: {{enabled: false}}\n  \
         tcp_reset: {{enabled: false}}\nplugins:\n  dirs: [{}]\n",
        plugins.display()
    ))
}

fn plugin_status(agent: &Agent, name: &str) -> Option<Value> {
    let (status, body) = agent.get("/api/v1/plugins");
    assert_eq!(status, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).expect("a JSON list");
    list.into_iter().find(|p| p["name"] == name)
}

#[test]
fn resident_script_counts_emits_and_survives_reload() {
    let dir = TempDir::new();
    let bundle = dir.path().join("drops");
    let spec = "  subscribe: [packet_drop]\n  capabilities: [metrics, events]\n";
    write_script_bundle(&bundle, "drop-counter", COUNTER, spec);
    let pods = PodPair::dropping_udp(PORT);
    let agent = agent(dir.path());
    agent.wait_ready(READY_TIMEOUT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    let src = pods.a_end.ip(IpFamily::V4);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];

    send_udp(&pods.a, src, dst, 300);
    agent.wait_metric(DROPS, &labels, 300.0, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(DROPS, &labels), Some(300.0));
    // The event: the script's fields, B's workload filled in from the netns it named.
    let event = agent.wait_for_event(
        SETTLE_TIMEOUT,
        "the script's drop_burst event",
        &json!({"type": "drop_burst", "pod": pods.b.name()}),
        |_| true,
    );
    assert_eq!(event["source"], "script:drop-counter", "{event}");
    assert_eq!(event["severity"], "warning", "{event}");
    assert_eq!(event["drops"], 100, "{event}");
    assert_eq!(event["port"], PORT, "{event}");
    assert_eq!(event["netns"], pods.b.inode(), "{event}");
    assert_eq!(
        event["message"],
        format!("{} dropped 100 packets", pods.b.name())
    );
    let bursts = agent
        .events()
        .into_iter()
        .filter(|e| e["type"] == "drop_burst" && e["pod"] == pods.b.name())
        .count();
    assert_eq!(bursts, 1, "one event at the 100th drop");
    let v1 = plugin_status(&agent, "drop-counter").expect("listed")["version"].clone();

    // A broken replacement (a syntax error) is refused, with its line and column; the
    // running version keeps counting.
    std::fs::write(
        bundle.join("script.rhai"),
        "fn on_packet_drop(e) {\n  let x = ;\n}\n",
    )
    .unwrap();
    poll_until(SETTLE_TIMEOUT, "the broken script to be refused", || {
        agent
            .metric(
                "sonde_plugin_errors_total",
                &[("plugin", "drop-counter"), ("kind", "module")],
            )
            .filter(|v| *v >= 1.0)
    });
    let p = plugin_status(&agent, "drop-counter").expect("still listed");
    assert_eq!(
        (p["state"].as_str(), &p["version"]),
        (Some("running"), &v1),
        "{p}"
    );
    let error = p["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("script.rhai:2:"),
        "the error names the line: {p}"
    );
    send_udp(&pods.a, src, dst, 50);
    agent.wait_metric(DROPS, &labels, 350.0, SETTLE_TIMEOUT);

    // A good new version is swapped in and counts from zero.
    std::fs::write(
        bundle.join("script.rhai"),
        COUNTER.replace("let burst = 100;", ""),
    )
    .unwrap();
    poll_until(SETTLE_TIMEOUT, "the new version to run", || {
        plugin_status(&agent, "drop-counter")
            .filter(|p| p["version"] != v1 && p["state"] == "running")
    });
    send_udp(&pods.a, src, dst, 40);
    agent.wait_metric(DROPS, &labels, 40.0, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(DROPS, &labels), Some(40.0));
}

#[test]
fn failing_scripts_are_quarantined_and_the_others_lose_nothing() {
    let dir = TempDir::new();
    let spec = "  subscribe: [packet_drop]\n  capabilities: [metrics, events]\n";
    write_script_bundle(&dir.path().join("good"), "drop-counter", COUNTER, spec);
    write_script_bundle(
        &dir.path().join("divides"),
        "divides",
        "fn on_packet_drop(e) {\n  let x = e.dport / 0;\n}\n",
        spec,
    );
    write_script_bundle(
        &dir.path().join("spins"),
        "spins",
        "fn on_packet_drop(e) {\n  loop { }\n}\n",
        spec,
    );
    // Not granted: emitting stops the handler with the reason.
    write_script_bundle(
        &dir.path().join("ungranted"),
        "ungranted",
        "fn on_packet_drop(e) { emit(\"x\", #{}); }\n",
        "  subscribe: [packet_drop]\n",
    );
    let pods = PodPair::dropping_udp(PORT);
    let agent = agent(dir.path());
    agent.wait_ready(READY_TIMEOUT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    let src = pods.a_end.ip(IpFamily::V4);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    // Failures restart a script with backoff (0.2 s, 0.4 s, ...) until the fifth in five
    // minutes quarantines it: keep drops coming until all three are quarantined.
    let mut sent = 0;
    poll_until(
        std::time::Duration::from_secs(60),
        "the failing scripts to be quarantined",
        || {
            send_udp(&pods.a, src, dst, 10);
            sent += 10;
            ["divides", "spins", "ungranted"]
                .iter()
                .all(|n| plugin_status(&agent, n).is_some_and(|p| p["state"] == "quarantined"))
                .then_some(())
        },
    );
    let kinds = [
        ("divides", "script"),
        ("spins", "limit"),
        ("ungranted", "script"),
    ];
    for (name, kind) in kinds {
        let p = plugin_status(&agent, name).expect("listed");
        let failures = agent
            .metric(
                "sonde_plugin_errors_total",
                &[("plugin", name), ("kind", kind)],
            )
            .unwrap_or(0.0);
        assert!(
            failures >= 5.0,
            "{name}: {failures} failures of kind {kind}: {p}"
        );
        let error = p["last_error"].as_str().unwrap_or_default();
        let expect = match name {
            "divides" => "script.rhai:2:",
            "spins" => "operations",
            _ => "capability events",
        };
        assert!(error.contains(expect), "{name}: {p}");
    }
    // The refused call itself is counted by its kind too.
    assert!(
        agent
            .metric(
                "sonde_plugin_errors_total",
                &[("plugin", "ungranted"), ("kind", "not_granted")],
            )
            .is_some_and(|n| n >= 5.0),
        "ungranted: not_granted counted"
    );
    let ungranted = plugin_status(&agent, "ungranted").expect("listed");
    assert!(
        ungranted["last_refusal"]
            .as_str()
            .is_some_and(|r| r.starts_with("not_granted: capability events")),
        "{ungranted}"
    );
    // The well-behaved script saw every drop.
    agent.wait_metric(DROPS, &labels, sent as f64, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(DROPS, &labels), Some(sent as f64));
    assert_eq!(
        plugin_status(&agent, "drop-counter").expect("listed")["state"],
        "running"
    );
}

#[test]
fn plugin_check_validates_script_bundles() {
    let dir = TempDir::new();
    let spec = "  subscribe: [packet_drop]\n  capabilities: [metrics, events]\n";
    let good = dir.path().join("good");
    write_script_bundle(&good, "drop-counter", COUNTER, spec);
    let out = run_sonde(
        &["plugin", "check", &good.display().to_string()],
        READY_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("script drop-counter is valid"),
        "{}",
        out.stdout
    );

    let cases = [
        (
            "syntax",
            "fn on_packet_drop(e) {\n  let = 1;\n}\n",
            spec,
            "script.rhai:2:",
        ),
        (
            "unsubscribed",
            "fn on_tcp_reset(e) { }\n",
            spec,
            "spec.subscribe: the script handles tcp_reset",
        ),
        ("handler", "fn on_packets(e) { }\n", spec, "on_packets"),
        (
            "capability",
            COUNTER,
            "  subscribe: [packet_drop]\n  capabilities: [maps]\n",
            "not available to scripts",
        ),
    ];
    for (name, source, spec, reason) in cases {
        let bundle = dir.path().join(name);
        write_script_bundle(&bundle, name, source, spec);
        let out = run_sonde(
            &["plugin", "check", &bundle.display().to_string()],
            READY_TIMEOUT,
        );
        assert!(!out.status.success(), "{name}: {}", out.stdout);
        assert!(out.stderr.contains(reason), "{name}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{name}: {}",
            out.stderr
        );
    }
}
