//! The Loki sink against a local receiver that speaks Loki's push API: real drops arrive as
//! exact log lines in streams labelled `{job="sonde", node, type}`; a receiver that fails is
//! retried without losing events; one that is away costs at most `maxBuffer` events, the
//! oldest, counted. Over HTTPS the sink trusts `caFile` and sends the token of
//! `bearerTokenFile`; a receiver whose certificate it does not trust gets nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sonde_tests::pki::TestCa;
use sonde_tests::{
    free_local_addr, poll_until, send_udp, Agent, IpFamily, PodPair, TempDir, READY_TIMEOUT,
    SETTLE_TIMEOUT,
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
        Receiver::start_with(addr, failures, None, None)
    }

    /// With `tls`, over HTTPS; with `token`, pushes without `Authorization: Bearer TOKEN`
    /// are answered 401.
    fn start_with(
        addr: SocketAddr,
        failures: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
        token: Option<&str>,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).expect("bind the receiver");
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let (p, f) = (Arc::clone(&pushes), Arc::clone(&failed));
        let want = token.map(|t| format!("bearer {t}"));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let stream: Box<dyn ReadWrite> = match &tls {
                    None => Box::new(conn),
                    Some(config) => {
                        let Ok(server) = rustls::ServerConnection::new(Arc::clone(config)) else {
                            continue;
                        };
                        Box::new(rustls::StreamOwned::new(server, conn))
                    }
                };
                let mut r = BufReader::new(stream);
                let mut request_line = String::new();
                if r.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0;
                let mut content_type = String::new();
                let mut authorization = String::new();
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
                    if let Some(v) = lower.strip_prefix("authorization:") {
                        authorization = v.trim().to_string();
                    }
                }
                let mut body = vec![0; length];
                let _ = r.read_exact(&mut body);
                let ok = request_line.starts_with("POST /loki/api/v1/push ")
                    && content_type == "application/json";
                let status = if !ok {
                    "400 Bad Request"
                } else if want.as_ref().is_some_and(|w| *w != authorization) {
                    "401 Unauthorized"
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
                let _ = r.get_mut().flush();
            }
        });
        Receiver {
            addr,
            pushes,
            failed,
        }
    }

    /// Sends `n` datagrams from pod A into pod B's DROP rule and waits until at least `n` of
    /// B's drops have arrived; returns them.
    fn drops_sent(&self, pods: &PodPair, n: usize) -> Vec<(Value, Value)> {
        let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
        send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, n);
        poll_until(
            SETTLE_TIMEOUT,
            &format!("{n} drops of pod B in Loki"),
            || {
                let d = self.drops_of(pods.b.name());
                (d.len() >= n).then_some(d)
            },
        )
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

/// A connection the receiver reads and answers, plain or TLS.
trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn agent(loki: SocketAddr, extra: &str) -> Agent {
    agent_at(&format!("http://{loki}"), extra)
}

fn agent_at(base: &str, extra: &str) -> Agent {
    Agent::spawn_yaml(&format!(
        "node: loki-test-node\nprobes:\n  packet_drop:\n    events: {{enabled: true, ratePerCpu: 0}}\n  \
         tcp_retrans: {{enabled: false}}\n  tcp_reset: {{enabled: false}}\n  tcp_connect: {{enabled: false}}\n\
         sinks:\n  stdout: {{enabled: false}}\n  loki:\n    url: {base}/loki/api/v1/push\n    \
         batchWait: 200ms\n{extra}"
    ))
}

/// A TLS server config with a certificate for 127.0.0.1 from `ca`.
fn tls_server(ca: &TestCa, dir: &std::path::Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let issued = ca.issue(dir, "loki", &["127.0.0.1"]);
    let chain = CertificateDer::pem_file_iter(&issued.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&issued.key).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    )
}

#[test]
fn pushes_over_https_with_a_ca_and_a_bearer_token() {
    let dir = TempDir::new();
    let ca = TestCa::new("loki CA");
    let ca_pem = ca.write_cert(&dir.path().join("ca.crt"));
    let token = dir.write("token", "loki-secret\n");
    let receiver = Receiver::start_with(
        free_local_addr(),
        0,
        Some(tls_server(&ca, dir.path())),
        Some("loki-secret"),
    );
    let pods = PodPair::dropping_udp(PORT);
    let agent = agent_at(
        &format!("https://{}", receiver.addr),
        &format!(
            "    caFile: {}\n    bearerTokenFile: {}\n",
            ca_pem.display(),
            token.display()
        ),
    );
    agent.wait_ready(READY_TIMEOUT);
    let drops = receiver.drops_sent(&pods, 50);
    assert_eq!(drops.len(), 50);
    assert_eq!(receiver.failed.load(Ordering::SeqCst), 0);
}

#[test]
fn a_receiver_whose_certificate_is_not_trusted_gets_nothing() {
    let dir = TempDir::new();
    let theirs = TestCa::new("loki CA");
    let ours = TestCa::new("another CA").write_cert(&dir.path().join("ca.crt"));
    let receiver = Receiver::start_with(
        free_local_addr(),
        0,
        Some(tls_server(&theirs, dir.path())),
        None,
    );
    let pods = PodPair::dropping_udp(PORT);
    let agent = agent_at(
        &format!("https://{}", receiver.addr),
        &format!("    caFile: {}\n", ours.display()),
    );
    agent.wait_ready(READY_TIMEOUT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 10);
    poll_until(SETTLE_TIMEOUT, "failed pushes counted", || {
        agent
            .metric("sonde_sink_push_errors_total", &[("sink", "loki")])
            .filter(|n| *n >= 2.0)
    });
    assert!(receiver.pushes.lock().unwrap().is_empty());
    assert!(
        agent.stderr_text().contains("push to Loki failed"),
        "{}",
        agent.stderr_text()
    );
}

#[test]
fn drops_arrive_in_loki_streams_exactly_even_through_failures() {
    // The first three pushes fail: the sink retries them, losing nothing.
    let receiver = Receiver::start(free_local_addr(), 3);
    let pods = PodPair::dropping_udp(PORT);
    let agent = agent(receiver.addr, "");
    agent.wait_ready(READY_TIMEOUT);
    let drops = receiver.drops_sent(&pods, 250);
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
            .metric(
                "sonde_sink_events_dropped_total",
                &[("sink", "loki"), ("reason", "buffer_full")],
            )
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
        .metric(
            "sonde_sink_events_dropped_total",
            &[("sink", "loki"), ("reason", "buffer_full")],
        )
        .unwrap_or(0.0);
    // At most 100 of B's first 300 drops could be kept: the rest were dropped and counted.
    assert!(dropped >= 200.0, "{dropped} dropped");
}
