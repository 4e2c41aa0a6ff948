//! The Loki sink against a local receiver that speaks Loki's push API: real drops arrive as
//! exact log lines in streams labelled `{job="sonde", node, type}`; a receiver that fails is
//! retried without losing events; one that is away costs at most `maxBuffer` events, the
//! oldest, counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sonde_tests::{
    free_local_addr, poll_until, send_udp, Agent, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 9997;

/// A Loki push endpoint on loopback: records every push, and answers 500 to the first
/// `failures` ones.
struct Receiver {
    addr: SocketAddr,
    pushes: Arc<Mutex<Vec<Value>>>,
    failed: Arc<AtomicUsize>,
}

impl Receiver {
    fn start(addr: SocketAddr, failures: usize) -> Receiver {
        let listener = TcpListener::bind(addr).expect("bind the receiver");
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let (p, f) = (Arc::clone(&pushes), Arc::clone(&failed));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut r = BufReader::new(conn);
                let mut request_line = String::new();
                if r.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0;
                let mut content_type = String::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if let Some(v) = lower.strip_prefix("content-type:") {
                        content_type = v.trim().to_string();
                    }
                }
                let mut body = vec![0; length];
                let _ = r.read_exact(&mut body);
                let ok = request_line.starts_with("POST /loki/api/v1/push ")
                    && content_type == "application/json";
                let status = if !ok {
                    "400 Bad Request"
                } else if f.load(Ordering::SeqCst) < failures {
                    f.fetch_add(1, Ordering::SeqCst);
                    "500 Internal Server Error"
                } else {
                    p.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).expect("the push body is JSON"));
                    "204 No Content"
                };
                let _ = r.get_mut().write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        Receiver {
            addr,
            pushes,
            failed,
        }
    }

    /// The lines of the test's drops (pod `pod`, port PORT) received so far, with their
    /// stream labels. (New namespaces also drop IPv6 housekeeping packets of their own.)
    fn drops_of(&self, pod: &str) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for push in self.pushes.lock().unwrap().iter() {
            for stream in push["streams"].as_array().expect("streams") {
                for v in stream["values"].as_array().expect("values") {
                    let line: Value =
                        serde_json::from_str(v[1].as_str().expect("a line")).expect("JSON line");
                    if line["type"] == "packet_drop" && line["pod"] == pod && line["dport"] == PORT
                    {
                        out.push((stream["stream"].clone(), v.clone()));
                    }
                }
            }
        }
        out
    }
}

fn agent(loki: SocketAddr, extra: &str) -> Agent {
    Agent::spawn_yaml(&format!(
        "node: loki-test-node\nprobes:\n  packet_drop:\n    events: {{enabled: true, ratePerCpu: 0}}\n  \
         tcp_retrans: {{enabled: false}}\n  tcp_reset: {{enabled: false}}\n  tcp_connect: {{enabled: false}}\n\
         sinks:\n  stdout: {{enabled: false}}\n  loki:\n    url: http://{loki}/loki/api/v1/push\n    \
         batchWait: 200ms\n{extra}"
    ))
}

#[test]
fn drops_arrive_in_loki_streams_exactly_even_through_failures() {
    // The first three pushes fail: the sink retries them, losing nothing.
    let receiver = Receiver::start(free_local_addr(), 3);
    let pods = PodPair::dropping_udp(PORT);
    let agent = agent(receiver.addr, "");
    agent.wait_ready(READY_TIMEOUT);
    let src = pods.a_end.ip(IpFamily::V4);
    send_udp(
        &pods.a,
        src,
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT),
        250,
    );
    let drops = poll_until(SETTLE_TIMEOUT, "250 drops of pod B in Loki", || {
        let d = receiver.drops_of(pods.b.name());
        (d.len() >= 250).then_some(d)
    });
    assert_eq!(drops.len(), 250, "no duplicates either");
    assert_eq!(
        receiver.failed.load(Ordering::SeqCst),
        3,
        "the failing pushes were retried"
    );
    for (labels, value) in &drops {
        assert_eq!(
            labels,
            &serde_json::json!({"job": "sonde", "node": "loki-test-node", "type": "packet_drop"})
        );
        let ns: u128 = value[0]
            .as_str()
            .expect("a timestamp")
            .parse()
            .expect("nanoseconds");
        assert!(ns > 1_700_000_000_000_000_000, "{value}");
        let line: Value = serde_json::from_str(value[1].as_str().unwrap()).unwrap();
        assert_eq!(line["reason"], "NETFILTER_DROP");
        assert_eq!(line["dport"], PORT);
    }
    assert!(agent.metric("sonde_sink_events_sent_total", &[("sink", "loki")]) >= Some(250.0));
    assert!(agent.metric("sonde_sink_push_errors_total", &[("sink", "loki")]) >= Some(3.0));
}

#[test]
fn loki_away_costs_at_most_max_buffer_events_the_oldest() {
    // Nothing listens at the address at first: every push fails.
    let addr = free_local_addr();
    let pods = PodPair::dropping_udp(PORT);
    let agent = agent(
        addr,
        "    maxBuffer: 100\n    batchSize: 50\n    maxBackoff: 1s\n",
    );
    agent.wait_ready(READY_TIMEOUT);
    let src = pods.a_end.ip(IpFamily::V4);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    send_udp(&pods.a, src, dst, 300);
    poll_until(SETTLE_TIMEOUT, "the sink to drop what does not fit", || {
        agent
            .metric("sonde_sink_events_dropped_total", &[("sink", "loki")])
            .filter(|d| *d >= 200.0)
    });
    // The agent keeps serving while Loki is away.
    assert_eq!(agent.get("/healthz").0, 200);
    // Loki comes back: what the buffer kept arrives (at most 100 events; other tests' pods
    // drop packets too, and their events share the buffer), then new events as they come.
    let receiver = Receiver::start(addr, 0);
    let mut sent_after = 0;
    poll_until(SETTLE_TIMEOUT, "drops of pod B in Loki again", || {
        send_udp(&pods.a, src, dst, 20);
        sent_after += 20;
        (!receiver.drops_of(pods.b.name()).is_empty()).then_some(())
    });
    let delivered = receiver.drops_of(pods.b.name()).len();
    assert!(
        delivered <= 100 + sent_after,
        "{delivered} of B's drops in Loki: more than maxBuffer kept"
    );
    let dropped = agent
        .metric("sonde_sink_events_dropped_total", &[("sink", "loki")])
        .unwrap_or(0.0);
    // At most 100 of B's first 300 drops could be kept: the rest were dropped and counted.
    assert!(dropped >= 200.0, "{dropped} dropped");
}
