//! dns: a test DNS server (UDP and TCP, a fixed delay, NXDOMAIN, SERVFAIL and silent names)
//! in one pod, queries from another, both attached to a bridge through host-side veths that
//! the agent watches (only this test's).
//!
//! N queries answered after D show as exactly N observations above D in the client pod's
//! histogram; NXDOMAIN responses are counted by rcode exactly, with the programs attached as
//! TCX links and as filters on a clsact qdisc (`attach: clsact`); a query never answered becomes
//! a `timeout` event (which `sonde trace` scripts get as `on_dns`, and plugins as `on-dns`,
//! typed or packed); SERVFAILs above the configured rate become a `servfail` event.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sonde_tests::{
    auto_attach_mode, only_probes_yaml, sonde_filters, tcp_query, try_poll_until, udp_query,
    wasm_module, write_bundle, Agent, DnsAnswers, DnsServer, IpFamily, NodePods, TempDir, Trace,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const COUNT: &str = "sonde_dns_query_duration_seconds_count";
const BUCKET: &str = "sonde_dns_query_duration_seconds_bucket";
const RESPONSES: &str = "sonde_dns_responses_total";

fn agent_yaml(pattern: &str, plugins: &std::path::Path) -> String {
    only_probes_yaml(
        &format!(
            "  dns:\n    enabled: true\n    interfaces: [\"{pattern}\"]\n    timeout: 1s\n    \
             errorRate: 5\n"
        ),
        // Every log2 bound of the pods' histograms, for the 32.8 ms one the tests read.
        &format!(
            "plugins:\n  dirs: [{}]\nmetrics:\n  podHistogramBuckets: fine\n",
            plugins.display()
        ),
    )
}

/// The kernel matrix's DNS check (no plugins, which an emulated CPU compiles slowly): N
/// answered and NX NXDOMAIN queries over UDP are counted by rcode for the client pod, exactly.
#[test]
fn rcodes_are_counted_per_pod() {
    rcodes_are_counted(None);
}

/// The same through filters on a clsact qdisc, as on a kernel without TCX.
#[test]
fn rcodes_are_counted_per_pod_through_clsact_filters() {
    rcodes_are_counted(Some("clsact"));
}

/// `attach`: the probe's `attach` setting, or `None` for its default (`auto`: TCX where the
/// kernel has it; the kernel matrix runs this on kernels without, and without `tc`).
fn rcodes_are_counted(attach: Option<&'static str>) {
    const N: u16 = 4;
    const NX: u16 = 3;
    let node = NodePods::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let _dns = DnsServer::start(
        server.name(),
        server.ip(IpFamily::V4),
        DnsAnswers {
            delay: Duration::ZERO,
            nxdomain: vec!["nx.sonde.test".into()],
            servfail: vec![],
            silent: vec![],
        },
    );
    let attach_line = attach
        .map(|a| format!("    attach: {a}\n"))
        .unwrap_or_default();
    let agent = Agent::spawn_yaml(&only_probes_yaml(
        &format!(
            "  dns:\n    enabled: true\n    interfaces: [\"{}\"]\n{attach_line}",
            node.interface_pattern()
        ),
        "",
    ));
    agent.wait_ready(READY_TIMEOUT);
    let mode = wait_attached(&agent);
    assert_eq!(mode, attach.unwrap_or_else(auto_attach_mode));
    // clsact asked for: a filter on each hook of each interface, named for this agent.
    let pid = agent.pid();
    let ours = [
        format!("sonde-dns-egress-{pid}"),
        format!("sonde-dns-ingress-{pid}"),
    ];
    if attach.is_some() {
        for pod in [client, server] {
            assert_eq!(sonde_filters(&pod.host_if), ours, "{}", pod.host_if);
        }
    }
    let dst = SocketAddr::new(server.ip(IpFamily::V4), 53);
    let wait = Duration::from_secs(5);
    for id in 0..N {
        assert_eq!(
            udp_query(client.name(), dst, 100 + id, "ok.sonde.test", wait),
            Some(0)
        );
    }
    for id in 0..NX {
        assert_eq!(
            udp_query(client.name(), dst, 200 + id, "nx.sonde.test", wait),
            Some(3)
        );
    }
    let ok = [("pod", client.name()), ("rcode", "NOERROR")];
    let nx = [("pod", client.name()), ("rcode", "NXDOMAIN")];
    agent.wait_metric_eq(RESPONSES, &ok, N as f64, SETTLE_TIMEOUT);
    agent.wait_metric_eq(RESPONSES, &nx, NX as f64, SETTLE_TIMEOUT);
    agent.wait_metric_eq(
        COUNT,
        &[("pod", client.name())],
        (N + NX) as f64,
        SETTLE_TIMEOUT,
    );
    drop(agent);
    if attach.is_some() {
        for pod in [client, server] {
            assert_eq!(
                sonde_filters(&pod.host_if),
                Vec::<String>::new(),
                "{}",
                pod.host_if
            );
        }
    }
}

/// Waits until the agent's dns probe is attached to both pods' host-side interfaces, and
/// returns how (`tcx`, `clsact`).
fn wait_attached(agent: &Agent) -> String {
    let attached = try_poll_until(SETTLE_TIMEOUT, || {
        let (_, body) = agent.get("/api/v1/probes");
        let probes: serde_json::Value = serde_json::from_str(&body).ok()?;
        let dns = probes.as_array()?.iter().find(|p| p["name"] == "dns")?;
        (dns["interfaces"].as_array()?.len() == 2)
            .then(|| dns["attach"].as_str().unwrap_or_default().to_string())
    });
    attached.expect("dns never attached to both interfaces")
}

#[test]
fn latency_rcodes_and_timeouts_per_pod() {
    const N: u16 = 5;
    const NX: u16 = 3;
    const DELAY: Duration = Duration::from_millis(50);
    let node = NodePods::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let _dns = DnsServer::start(
        server.name(),
        server.ip(IpFamily::V4),
        DnsAnswers {
            delay: DELAY,
            nxdomain: vec!["nx.sonde.test".into()],
            servfail: vec!["broken.sonde.test".into()],
            silent: vec!["silent.sonde.test".into()],
        },
    );
    // Plugins get the events typed and packed (the test plugin counts them).
    let plugins = TempDir::new();
    let module = wasm_module("hostile-plugin");
    write_bundle(
        &plugins.path().join("typed"),
        "dns-typed",
        &module,
        "  subscribe: [dns]\n  config: {mode: count}\n  capabilities: [metrics]\n",
    );
    write_bundle(
        &plugins.path().join("packed"),
        "dns-packed",
        &module,
        "  subscribe: [dns]\n  delivery: packed\n  \
         config: {mode: fields, metric: sonde_test_dns_packed_total}\n  capabilities: [metrics]\n",
    );
    let agent = Agent::spawn_yaml(&agent_yaml(&node.interface_pattern(), plugins.path()));
    agent.wait_ready(READY_TIMEOUT);
    wait_attached(&agent);

    let dst = SocketAddr::new(server.ip(IpFamily::V4), 53);
    let wait = Duration::from_secs(5);
    let pod = [("pod", client.name())];
    for id in 0..N {
        assert_eq!(
            udp_query(client.name(), dst, 100 + id, "ok.sonde.test", wait),
            Some(0)
        );
    }
    agent.wait_metric_eq(COUNT, &pod, N as f64, SETTLE_TIMEOUT);
    // 2^15 us = 32.8 ms: every answer took at least 50 ms.
    assert_eq!(
        agent.metric(BUCKET, &[("pod", client.name()), ("le", "0.032768")]),
        Some(0.0),
        "answers faster than {DELAY:?}"
    );

    for id in 0..NX {
        assert_eq!(
            udp_query(client.name(), dst, 200 + id, "nx.sonde.test", wait),
            Some(3)
        );
    }
    // Over TCP too.
    assert_eq!(tcp_query(client.name(), dst, 300, "ok.sonde.test"), 0);
    let nx = [("pod", client.name()), ("rcode", "NXDOMAIN")];
    agent.wait_metric_eq(RESPONSES, &nx, NX as f64, SETTLE_TIMEOUT);
    let ok = [("pod", client.name()), ("rcode", "NOERROR")];
    agent.wait_metric_eq(RESPONSES, &ok, (N + 1) as f64, SETTLE_TIMEOUT);
    agent.wait_metric_eq(COUNT, &pod, (N + NX + 1) as f64, SETTLE_TIMEOUT);

    // Never answered: a timeout event after the probe's 1 s, which scripts get too
    // (`sonde trace` through the agent's event stream).
    let url = format!("http://{}", agent.addr());
    let mut trace = Trace::start(&[
        "--agent",
        &url,
        "-e",
        r#"fn on_dns(e) { count("dns", [e.pod, e.outcome, e.id]); }"#,
        "--duration",
        "6s",
        "--output",
        "json",
    ]);
    trace.wait_attached(READY_TIMEOUT);
    assert_eq!(
        udp_query(
            client.name(),
            dst,
            400,
            "silent.sonde.test",
            Duration::from_millis(100)
        ),
        None
    );
    let event = agent.wait_for_event(
        SETTLE_TIMEOUT,
        "a dns timeout event",
        &json!({"type": "dns", "outcome": "timeout", "pod": client.name(), "id": 400}),
        |_| true,
    );
    assert_eq!(event["daddr"], server.ipv4.to_string(), "{event}");
    assert_eq!(event["dport"], 53, "{event}");
    assert!(
        event["duration_seconds"].as_f64().unwrap() >= 1.0,
        "{event}"
    );
    agent.wait_metric_eq("sonde_dns_timeouts_total", &pod, 1.0, SETTLE_TIMEOUT);
    let seen = [
        ("probe", "dns"),
        ("pod", client.name()),
        ("reason", "timeout"),
    ];
    agent.wait_metric_eq("sonde_test_events_seen_total", &seen, 1.0, SETTLE_TIMEOUT);
    let packed = [
        ("probe", "dns"),
        ("pod", client.name()),
        ("key", "timeout"),
        ("daddr", &server.ipv4.to_string()),
        ("dport", "53"),
        ("detail", "400:true:none:false"),
    ];
    agent.wait_metric_eq("sonde_test_dns_packed_total", &packed, 1.0, SETTLE_TIMEOUT);
    let done = trace.finish(SETTLE_TIMEOUT);
    assert!(done.status.success(), "trace failed: {}", done.stderr);
    let doc: serde_json::Value = serde_json::from_str(&done.stdout).expect("trace JSON");
    assert_eq!(
        doc["maps"]["dns"],
        json!([{"key": [client.name(), "timeout", 400], "value": 1}]),
        "{doc}"
    );

    // SERVFAILs faster than 5 a second: an event says so.
    for id in 0..20 {
        udp_query(client.name(), dst, 500 + id, "broken.sonde.test", wait);
    }
    agent.wait_for_event(
        SETTLE_TIMEOUT,
        "a dns servfail event",
        &json!({"type": "dns", "outcome": "servfail", "pod": client.name()}),
        |e| e["count"].as_u64().is_some_and(|c| c >= 1),
    );
}
