//! tcp_rtt: a connection over a link delayed 25 ms each way shows RTTs of at least 50 ms in
//! the histogram of both pods, and sits in the flow table with that srtt until it closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::{
    bulk_transfer, in_netns, poll_until, try_poll_until, Agent, AgentConfig, SlowPodPair,
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
