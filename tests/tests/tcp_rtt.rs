//! tcp_rtt: a connection over a link delayed 25 ms each way shows RTTs of at least 50 ms in
//! the histogram of both pods, and sits in the flow table with that srtt until it closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::{
    bulk_transfer, in_netns, poll_until, try_poll_until, Agent, AgentConfig, PodPair, SlowPodPair,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const COUNT: &str = "sonde_tcp_rtt_seconds_count";
const BUCKET: &str = "sonde_tcp_rtt_seconds_bucket";

fn flows(agent: &Agent) -> Vec<Value> {
    let (status, body) = agent.get("/api/v1/tcp_rtt");
    assert_eq!(status, 200, "GET /api/v1/tcp_rtt: {body}");
    serde_json::from_str::<Vec<Value>>(&body).expect("a JSON array of flows")
}

#[test]
fn delayed_link_shows_in_histogram_and_flow_table() {
    let pods = SlowPodPair::new(Duration::from_millis(25));
    let agent = Agent::spawn(&AgentConfig {
        tcp_rtt: true,
        // Every log2 bound, for the 32.8 ms one below.
        pod_histogram_buckets: "fine",
        ..AgentConfig::default()
    });
    agent.wait_ready(READY_TIMEOUT);

    bulk_transfer(&pods.a, &pods.b, pods.b_ip.into(), 5001, 256 << 10);
    for pod in [pods.a.name(), pods.b.name()] {
        let count = agent.wait_metric(COUNT, &[("pod", pod)], 1.0, SETTLE_TIMEOUT);
        // 2^15 us = 32.8 ms: every sample of a 50 ms round trip is above it.
        assert_eq!(
            agent.metric(BUCKET, &[("pod", pod), ("le", "0.032768")]),
            Some(0.0),
            "RTT samples of {pod} at or below 32.8 ms (of {count})"
        );
    }

    // A connection kept open: both ends are in the table with the link's RTT.
    let dst = SocketAddr::new(pods.b_ip.into(), 5002);
    let listener = in_netns(pods.b.name(), || {
        TcpListener::bind(dst).expect("listen in b")
    });
    let mut client = in_netns(pods.a.name(), || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(10)).expect("connect to b")
    });
    let (mut server, _) = listener.accept().expect("accept in b");
    let client_port = client.local_addr().unwrap().port();
    let mut byte = [0u8; 1];
    for _ in 0..5 {
        client.write_all(b"x").unwrap();
        server.read_exact(&mut byte).unwrap();
        server.write_all(b"y").unwrap();
        client.read_exact(&mut byte).unwrap();
    }
    let ours = |f: &Value, pod: &str, sport: u16, dport: u16| {
        f["pod"] == pod && f["sport"] == sport && f["dport"] == dport
    };
    for (pod, sport, dport) in [
        (pods.a.name(), client_port, 5002),
        (pods.b.name(), 5002, client_port),
    ] {
        let row = poll_until(
            SETTLE_TIMEOUT,
            &format!("{pod}'s end in the flow table"),
            || {
                flows(&agent)
                    .into_iter()
                    .find(|f| ours(f, pod, sport, dport))
            },
        );
        let srtt = row["srtt_seconds"].as_f64().expect("srtt_seconds");
        assert!((0.045..1.0).contains(&srtt), "{row}");
        assert!(row["snd_cwnd"].as_u64().unwrap() > 0, "{row}");
        assert!(row["rcv_wnd"].as_u64().unwrap() > 0, "{row}");
    }

    // Closed and destroyed: both rows go.
    drop(client);
    drop(server);
    let gone = try_poll_until(SETTLE_TIMEOUT, || {
        let rows = flows(&agent);
        (!rows.iter().any(|f| {
            ours(f, pods.a.name(), client_port, 5002) || ours(f, pods.b.name(), 5002, client_port)
        }))
        .then_some(())
    });
    assert!(gone.is_some(), "rows still there: {:?}", flows(&agent));
}

/// A connection of `exchanges` one-byte round trips from pod A to pod B (each its own
/// segment: NODELAY, and each answered before the next is sent), kept open; the server end's
/// row in the flow table after the last exchange. The kernel updates the row while it
/// processes a segment, before the data reaches the socket, so the row is current once the
/// server has read the last byte.
fn ping_pong_row(agent: &Agent, pods: &PodPair, port: u16, exchanges: usize) -> Value {
    let dst = SocketAddr::new(pods.b_end.ipv4.into(), port);
    let listener = in_netns(pods.b.name(), || {
        TcpListener::bind(dst).expect("listen in b")
    });
    let mut client = in_netns(pods.a.name(), || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(10)).expect("connect to b")
    });
    client.set_nodelay(true).unwrap();
    let (mut server, _) = listener.accept().expect("accept in b");
    server.set_nodelay(true).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let mut byte = [0u8; 1];
    for _ in 0..exchanges {
        client.write_all(b"x").unwrap();
        server.read_exact(&mut byte).unwrap();
        server.write_all(b"y").unwrap();
        client.read_exact(&mut byte).unwrap();
    }
    poll_until(SETTLE_TIMEOUT, "the server's end in the flow table", || {
        flows(agent)
            .into_iter()
            .find(|f| f["pod"] == pods.b.name() && f["sport"] == port && f["dport"] == client_port)
    })
}

#[test]
fn past_its_first_segments_one_segment_in_sample_segments_is_looked_at() {
    const EXCHANGES: usize = 40;
    let pods = PodPair::new();
    let config = |every: u32| {
        format!(
            "node: sonde-test-node\n\
             probes:\n  tcp_rtt:\n    enabled: true\n    sampleInterval: 0ms\n    \
             sampleSegments: {every}\n\
             topology:\n  netnsDir: /run/netns\n"
        )
    };
    // One segment in 65536: past the first four, a sample is all but never taken (about
    // 36 chances in 65536), so the row holds the segment count of an early sample.
    let agent = Agent::spawn_yaml(&config(65536));
    agent.wait_ready(READY_TIMEOUT);
    // A bulk receiver's first data comes as GRO packets of dozens of segments each, past
    // its fourth segment already: it is looked at all the same (nothing received yet), so
    // the connection has its sample.
    bulk_transfer(&pods.a, &pods.b, pods.b_end.ipv4.into(), 5005, 1 << 20);
    agent.wait_metric(COUNT, &[("pod", pods.b.name())], 1.0, SETTLE_TIMEOUT);
    let row = ping_pong_row(&agent, &pods, 5003, EXCHANGES);
    let segments = row["segments"].as_u64().expect("segments");
    assert!(
        (1..=ebpf_core::tcp_rtt::FIRST_SEGMENTS.into()).contains(&segments),
        "sampled past the first segments: {row}"
    );
    drop(agent);

    // Every segment: the row follows the connection to its last segment.
    let agent = Agent::spawn_yaml(&config(1));
    agent.wait_ready(READY_TIMEOUT);
    let row = ping_pong_row(&agent, &pods, 5004, EXCHANGES);
    let segments = row["segments"].as_u64().expect("segments");
    assert!(segments >= EXCHANGES as u64, "{row}");
}
