//! tcp_state: N connections from pod a to a server in pod b, each sending 1000 bytes, reading
//! 500 back and closed by the client first. Both pods count exactly the states each
//! connection goes through, each connection's end is one event per side (the client's from
//! FIN_WAIT2, the server's from LAST_ACK) with its lifetime and bytes, in the JSON sink and in a
//! plugin's typed delivery alike; a plugin built for 0.1.0 cannot subscribe to the probe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::{
    in_netns, metric_series, only_probes_yaml, poll_until, probe_unavailable, wasm_module,
    write_bundle, Agent, IpFamily, PodPair, TempDir, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const CHANGES: &str = "sonde_tcp_state_changes_total";
const PLUGIN_METRIC: &str = "sonde_test_tcp_state_total";
const N: usize = 20;
const SENT: usize = 1000;
const ANSWER: usize = 500;
const PORT: u16 = 5410;

fn agent(plugins: &std::path::Path) -> Agent {
    Agent::spawn_yaml(&only_probes_yaml(
        "  tcp_state:\n    enabled: true\n    events: {ratePerCpu: 0, ratePerNamespace: 0}\n",
        &format!("plugins:\n  dirs: [{}]\n", plugins.display()),
    ))
}

/// N connections, one after the other: the client sends `SENT` bytes, the server answers
/// `ANSWER`, the client closes, then the server (after reading the end of the stream).
fn converse(pods: &PodPair, dst: SocketAddr) {
    let listener = in_netns(pods.b.name(), || {
        TcpListener::bind(dst).unwrap_or_else(|e| panic!("listen on {dst}: {e}"))
    });
    let server = std::thread::spawn(move || {
        for _ in 0..N {
            let (mut conn, _) = listener.accept().expect("accept in b");
            let mut got = vec![0u8; SENT];
            conn.read_exact(&mut got).expect("the client's bytes");
            conn.write_all(&[7u8; ANSWER]).expect("answer");
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest)
                .expect("the client's end of stream");
            assert!(rest.is_empty());
        }
        // The listener closes here: LISTEN to CLOSE, counted but no connection's end.
    });
    in_netns(pods.a.name(), || {
        for i in 0..N {
            let mut conn = TcpStream::connect_timeout(&dst, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connect {i} to {dst}: {e}"));
            conn.write_all(&[1u8; SENT]).expect("send");
            let mut answer = vec![0u8; ANSWER];
            conn.read_exact(&mut answer).expect("the answer");
        }
    });
    server.join().expect("the server panicked");
}

/// The sum of the test plugin's `fields` counts for `pod` and closing state `key`, by detail
/// (`duration seen:bytes sent:bytes received`).
fn plugin_counts(agent: &Agent, pod: &str, key: &str) -> Vec<(String, f64)> {
    let mut by_detail: Vec<(String, f64)> = Vec::new();
    for (labels, v) in metric_series(&agent.metrics(), PLUGIN_METRIC) {
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("pod") != Some(pod) || get("key") != Some(key) {
            continue;
        }
        assert_eq!(get("probe"), Some("tcp_state"), "{labels:?}");
        let detail = get("detail").unwrap_or_default().to_string();
        match by_detail.iter_mut().find(|(d, _)| *d == detail) {
            Some((_, n)) => *n += v,
            None => by_detail.push((detail, v)),
        }
    }
    by_detail
}

/// The ends of the connections: (pod, state closed from, bytes sent, bytes received, the
/// server's port as `dport` (client) or `sport` (server)). Bytes count sequence space: the
/// client's SYN and FIN each add one to what it sent, the server's FIN one to what the server
/// sent; and each FIN one to what the other end received.
fn ends(pods: &PodPair) -> [(&str, &'static str, usize, usize); 2] {
    [
        (pods.a.name(), "FIN_WAIT2", SENT + 2, ANSWER + 1),
        (pods.b.name(), "LAST_ACK", ANSWER + 1, SENT + 1),
    ]
}

/// An agent with tcp_state on (and the plugins of `plugins`), after the conversation.
fn conversed(plugins: &std::path::Path) -> Option<(PodPair, Agent)> {
    if let Some(why) = probe_unavailable("tcp_state") {
        eprintln!("skipped: {why}");
        return None;
    }
    let pods = PodPair::new();
    let agent = agent(plugins);
    agent.wait_ready(READY_TIMEOUT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    converse(&pods, dst);
    Some((pods, agent))
}

#[test]
fn connections_are_counted_by_state_and_each_end_is_one_event() {
    let plugins = TempDir::new();
    let Some((pods, agent)) = conversed(plugins.path()) else {
        return;
    };
    let n = N as f64;
    let (a, b) = (pods.a.name(), pods.b.name());
    let expected = [
        (a, "SYN_SENT", n),
        (a, "ESTABLISHED", n),
        (a, "FIN_WAIT1", n),
        (a, "FIN_WAIT2", n),
        (a, "CLOSE", n),
        (b, "LISTEN", 1.0),
        (b, "SYN_RECV", n),
        (b, "ESTABLISHED", n),
        (b, "CLOSE_WAIT", n),
        (b, "LAST_ACK", n),
        // The connections, and the listener.
        (b, "CLOSE", n + 1.0),
    ];
    for (pod, state, count) in expected {
        agent.wait_metric_eq(
            CHANGES,
            &[("pod", pod), ("state", state)],
            count,
            SETTLE_TIMEOUT,
        );
    }
    // Nothing else: the states above are every change these connections made.
    for (labels, v) in metric_series(&agent.metrics(), CHANGES) {
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let pod = get("pod").unwrap_or_default();
        if pod == a || pod == b {
            let known = expected
                .iter()
                .any(|(p, s, c)| *p == pod && Some(*s) == get("state") && *c == v);
            assert!(known, "unexpected {labels:?} = {v}");
        }
    }

    // One event per end: the client's from FIN_WAIT2 (its FIN was acknowledged, then the
    // server's came), the server's from LAST_ACK, each with its lifetime and bytes.
    let events = poll_until(SETTLE_TIMEOUT, "2N tcp_state events", || {
        let events: Vec<Value> = agent
            .events()
            .into_iter()
            .filter(|e| e["type"] == "tcp_state" && (e["pod"] == a || e["pod"] == b))
            .collect();
        (events.len() >= 2 * N).then_some(events)
    });
    assert_eq!(events.len(), 2 * N, "{events:?}");
    for (pod, state, sent, received) in ends(&pods) {
        let mine: Vec<&Value> = events.iter().filter(|e| e["pod"] == pod).collect();
        assert_eq!(mine.len(), N, "{pod}: {mine:?}");
        for e in mine {
            assert_eq!(e["state"], state, "{e}");
            assert_eq!(e["protocol"], "tcp", "{e}");
            assert_eq!(e["bytes_sent"], sent as u64, "{e}");
            assert_eq!(e["bytes_received"], received as u64, "{e}");
            let lived = e["duration_seconds"].as_f64().expect("a lifetime");
            assert!(lived > 0.0 && lived < 30.0, "{e}");
            // The local end is the source, and the other end is the peer pod.
            let (other, port_field) = if pod == a { (b, "dport") } else { (a, "sport") };
            assert_eq!(e["peer_pod"], other, "{e}");
            assert_eq!(e[port_field], PORT, "{e}");
        }
    }
}

/// A plugin subscribed to tcp_state gets the same ends, typed: N per end, with the same
/// fields.
#[test]
fn a_plugin_gets_each_end_typed() {
    let plugins = TempDir::new();
    write_bundle(
        &plugins.path().join("typed"),
        "tcp-state-typed",
        &wasm_module("hostile-plugin"),
        &format!(
            "  subscribe: [tcp_state]\n  config: {{mode: fields, metric: {PLUGIN_METRIC}}}\n  \
             capabilities: [metrics]\n"
        ),
    );
    let Some((pods, agent)) = conversed(plugins.path()) else {
        return;
    };
    for (pod, state, sent, received) in ends(&pods) {
        let detail = format!("true:{sent}:{received}");
        poll_until(
            SETTLE_TIMEOUT,
            &format!("the plugin's {N} {state} ends of {pod}"),
            || {
                (plugin_counts(&agent, pod, state) == vec![(detail.clone(), N as f64)])
                    .then_some(())
            },
        );
    }
}

#[test]
fn a_plugin_built_for_0_1_0_cannot_subscribe_to_it() {
    let plugins = TempDir::new();
    write_bundle(
        &plugins.path().join("old"),
        "old",
        &wasm_module("v0-1-plugin"),
        "  subscribe: [tcp_state]\n  capabilities: [metrics]\n",
    );
    let agent = agent(plugins.path());
    agent.wait_ready(READY_TIMEOUT);
    let status = poll_until(SETTLE_TIMEOUT, "the 0.1.0 plugin refused", || {
        let (_, body) = agent.get("/api/v1/plugins");
        let list: Value = serde_json::from_str(&body).ok()?;
        list.as_array()?
            .iter()
            .find(|p| p["name"] == "old" && p["state"] == "refused")
            .cloned()
    });
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(
            "spec.subscribe has tcp_state, which sonde:plugin@0.1.0 has no handler for \
             (rebuild the plugin against @0.2.1)"
        ),
        "{status}"
    );
}
