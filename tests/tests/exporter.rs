//! The HTTP endpoints: /metrics passes `promtool check metrics` with labelled series present,
//! gzip-compressed when asked for, /healthz and /readyz answer, /api/v1/probes shows every probe running.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;

use sonde_tests::{
    assert_promtool_clean, bulk_transfer, free_local_addr, http_get_with, send_udp, sonde_bin,
    Agent, AgentConfig, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

/// `sonde run` on its embedded default config (the README's command) becomes ready: every
/// probe the default turns on loads on this kernel. The kernel matrix runs this on each kernel.
#[test]
fn default_config_is_ready() {
    let addr = free_local_addr();
    let argv = [
        sonde_bin().display().to_string(),
        "run".into(),
        "--listen".into(),
        addr.to_string(),
    ];
    let agent = Agent::spawn_argv(&argv, addr, std::path::PathBuf::new());
    agent.wait_ready(READY_TIMEOUT);
    let (status, body) = agent.get("/api/v1/probes");
    assert_eq!(status, 200);
    let probes: serde_json::Value = serde_json::from_str(&body).expect("/api/v1/probes is JSON");
    let down: Vec<&serde_json::Value> = probes
        .as_array()
        .expect("a list")
        .iter()
        .filter(|p| p["state"] == "failed")
        .collect();
    assert!(down.is_empty(), "probes that failed: {down:?}");
    // Off by default: virtio_net needs kprobes and the virtio_net module.
    let virtio = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "virtio_net")
        .expect("virtio_net listed");
    assert_eq!(virtio["state"], "disabled", "{virtio}");
}

#[test]
fn metrics_pass_promtool_and_endpoints_answer() {
    let pods = PodPair::new();
    pods.b
        .iptables(IpFamily::V4, "-A INPUT -p udp --dport 9999 -j DROP");
    let agent = Agent::spawn(&AgentConfig {
        tcp_rtt: true,
        socket_latency: true,
        ..AgentConfig::default()
    });
    agent.wait_ready(READY_TIMEOUT);

    // Labelled series exist once something was counted.
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9999),
        10,
    );
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    agent.wait_metric("sonde_packet_drops_total", &labels, 10.0, SETTLE_TIMEOUT);
    // Kernel-bucketed histograms have series once a connection has carried data.
    bulk_transfer(
        &pods.a,
        &pods.b,
        pods.b_end.ip(IpFamily::V4),
        5001,
        64 << 10,
    );
    for (name, labels) in [
        (
            "sonde_tcp_connect_duration_seconds_count",
            [("pod", pods.a.name()), ("side", "connect")],
        ),
        (
            "sonde_tcp_rtt_seconds_count",
            [("pod", pods.b.name()), ("namespace", "")],
        ),
        (
            "sonde_socket_read_latency_seconds_count",
            [("pod", pods.b.name()), ("namespace", "")],
        ),
    ] {
        agent.wait_metric(name, &labels, 1.0, SETTLE_TIMEOUT);
    }
    // The traffic ran NET_RX softirqs (on in the tests' config).
    agent.wait_metric(
        "sonde_softirq_duration_seconds_count",
        &[("vec", "NET_RX")],
        1.0,
        SETTLE_TIMEOUT,
    );

    // netstat (on by default, not eBPF) has read the pods' namespaces: its families are in
    // the exposition promtool checks below.
    agent.wait_metric(
        "sonde_netstat_tcp_ext_total",
        &[("pod", pods.b.name()), ("counter", "ListenOverflows")],
        0.0,
        SETTLE_TIMEOUT,
    );
    let body = agent.metrics();
    // Workload counters appear with their first series (retransmits and resets have their
    // own tests); self-metrics are there from the start.
    for name in [
        "sonde_packet_drops_total",
        "sonde_probe_up",
        "sonde_events_lost_total",
        "sonde_build_info",
        "sonde_tcp_connect_duration_seconds",
        "sonde_tcp_rtt_seconds",
        "sonde_socket_read_latency_seconds",
        "sonde_softirq_delay_seconds",
        "sonde_softirq_duration_seconds",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{body}"
        );
    }
    for probe in [
        "packet_drop",
        "tcp_retrans",
        "tcp_reset",
        "tcp_connect",
        "tcp_rtt",
        "softirq",
        "socket_latency",
        "io_latency",
    ] {
        assert_eq!(
            agent.metric("sonde_probe_up", &[("probe", probe)]),
            Some(1.0),
            "{probe} up"
        );
    }

    // virtio_net is off unless asked for (it needs kprobes and the virtio_net module).
    assert_eq!(
        agent.metric("sonde_probe_up", &[("probe", "virtio_net")]),
        Some(0.0),
        "virtio_net is off by default"
    );

    assert_promtool_clean(&body);

    // Prometheus asks for gzip: the same exposition, compressed; a client that refuses gzip
    // (or does not ask) gets it plain.
    let gz = http_get_with(agent.addr(), "/metrics", &[("Accept-Encoding", "gzip")]).unwrap();
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz.body.as_slice())
        .read_to_string(&mut text)
        .expect("a gzip body");
    let series = |exposition: &str| -> HashSet<String> {
        exposition
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
            .collect()
    };
    let missing: Vec<String> = series(&body).difference(&series(&text)).cloned().collect();
    assert!(
        missing.is_empty(),
        "series missing from the gzip body: {missing:?}"
    );
    assert!(
        gz.body.len() * 4 < body.len(),
        "gzip body of {} bytes for {} plain",
        gz.body.len(),
        body.len()
    );
    assert_promtool_clean(&text);
    let refused = http_get_with(
        agent.addr(),
        "/metrics",
        &[("Accept-Encoding", "gzip;q=0, identity")],
    )
    .unwrap();
    assert_eq!(refused.header("content-encoding"), None);
    assert!(String::from_utf8(refused.body)
        .unwrap()
        .contains("# TYPE sonde_build_info "));

    assert_eq!(agent.get("/healthz").0, 200);
    assert_eq!(agent.get("/readyz").0, 200);
    let (status, api) = agent.get("/api/v1/probes");
    assert_eq!(status, 200);
    let probes: serde_json::Value = serde_json::from_str(&api).expect("/api/v1/probes is JSON");
    let states: Vec<(String, String)> = probes
        .as_array()
        .expect("a list of probes")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for probe in ["packet_drop", "tcp_retrans", "tcp_reset"] {
        assert!(
            states.contains(&(probe.to_string(), "running".to_string())),
            "{probe} not running in {states:?}"
        );
    }
}
