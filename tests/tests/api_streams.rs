//! `/api/v1/events` under clients that hold on and never read: streams are capped, a stream
//! that falls behind is ended and counted, the agent's memory stays bounded, and opening a
//! stream changes nothing for the sinks unless it asks for `unlimited`.
//!
//! Its own test binary: the in-kernel per-CPU event bucket is shared by every drop on the
//! machine.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use sonde_tests::bench::memory_kib;
use sonde_tests::{
    http_get, poll_until, send_udp, Agent, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 9999;
const DROPS: &str = "sonde_packet_drops_total";
const OPEN: &str = "sonde_api_streams";
const CLOSED: &str = "sonde_api_streams_closed_total";

/// Opens an event stream and never reads from it.
/// Held by each test that sends drops: every agent's packet_drop probe sees every drop on the
/// host, so one test's flood would empty the other agent's per-CPU event budget (5 a second
/// here) and none of its own pod's drops would reach the sinks.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn silent_stream(agent: &Agent, query: &str) -> TcpStream {
    let mut s = TcpStream::connect(agent.addr()).expect("connect to the agent");
    write!(
        s,
        "GET /api/v1/events?{query} HTTP/1.1\r\nHost: {}\r\n\r\n",
        agent.addr()
    )
    .expect("send the request");
    s
}

#[test]
fn streams_are_capped_and_change_nothing_for_the_sinks() {
    let _one_flood = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let pods = PodPair::dropping_udp(PORT);
    // The limit under test is the pod's own (its namespace's bucket), not the per-CPU one:
    // drops elsewhere on the machine spend the per-CPU bucket, and a per-CPU limit of a few
    // events could leave none for this pod.
    let agent = Agent::spawn_yaml(
        "probes:\n  packet_drop:\n    events: {enabled: true, ratePerNamespace: 5, \
         burstPerNamespace: 5}\n  tcp_retrans: {enabled: false}\n  tcp_reset: {enabled: false}\n\
         api:\n  maxStreams: 8\n",
    );
    agent.wait_ready(READY_TIMEOUT);
    let streams: Vec<TcpStream> = (0..8)
        .map(|_| silent_stream(&agent, "probes=packet_drop"))
        .collect();
    agent.wait_metric(OPEN, &[], 8.0, SETTLE_TIMEOUT);

    // The ninth is refused, with the reason, and counted.
    let (status, body) = http_get(agent.addr(), "/api/v1/events?probes=packet_drop").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("api.maxStreams"), "{body}");
    assert_eq!(agent.metric(CLOSED, &[("reason", "over_cap")]), Some(1.0));
    // The rest of the API still answers.
    assert_eq!(http_get(agent.addr(), "/healthz").unwrap().0, 200);

    // The streams asked for nothing unlimited: the sinks get what the rate limit lets
    // through, as without them, and every drop is either emitted or suppressed.
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 500);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    agent.wait_metric(DROPS, &labels, 500.0, SETTLE_TIMEOUT);
    let (emitted, s) = agent.wait_drops_emitted_or_suppressed(pods.b.name(), None, 500.0);
    // A burst of 5 and 5/s over the few seconds the test takes, for all CPUs together.
    assert!(
        emitted <= 5.0 + 5.0 * 30.0 && s >= 500.0 - emitted,
        "{emitted} events emitted, {s} suppressed: open streams lifted the rate limit"
    );
    // One series for all streams' losses, none per stream.
    let text = agent.metrics();
    assert!(
        !text.contains("consumer=\"api:events:"),
        "a series per stream"
    );
    drop(streams);
}

#[test]
fn a_stream_that_falls_behind_is_ended_and_memory_stays_bounded() {
    let _one_flood = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let pods = PodPair::dropping_udp(PORT);
    let agent = Agent::spawn_yaml(
        "probes:\n  packet_drop:\n    events: {enabled: true}\n  tcp_retrans: {enabled: false}\n  \
         tcp_reset: {enabled: false}\nsinks:\n  stdout: {enabled: false}\napi:\n  streamQueue: 64Ki\n",
    );
    agent.wait_ready(READY_TIMEOUT);
    // Eight streams asking for every event, never read.
    let streams: Vec<TcpStream> = (0..8)
        .map(|_| silent_stream(&agent, "probes=packet_drop&unlimited=1m"))
        .collect();
    agent.wait_metric(OPEN, &[], 8.0, SETTLE_TIMEOUT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    let mut sent = 0;
    // Rounds of drops until every stream has fallen behind (its socket buffers full, then
    // 64 KiB of events queued), at most 20 rounds.
    for _ in 0..20 {
        send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 20_000);
        sent += 20_000;
        agent.wait_metric(DROPS, &labels, sent as f64, SETTLE_TIMEOUT);
        if agent.metric(CLOSED, &[("reason", "behind")]) == Some(8.0) {
            break;
        }
    }
    assert_eq!(
        agent.metric(DROPS, &labels),
        Some(sent as f64),
        "counting is exact"
    );
    poll_until(SETTLE_TIMEOUT, "every slow stream ended", || {
        (agent.metric(CLOSED, &[("reason", "behind")]) == Some(8.0)).then_some(())
    });
    agent.wait_metric_eq(OPEN, &[], 0.0, SETTLE_TIMEOUT);
    assert!(
        agent
            .metric(
                "sonde_consumer_events_dropped_total",
                &[("consumer", "api:events")]
            )
            .unwrap_or(0.0)
            >= 8.0,
        "the events the ended streams lost are counted"
    );
    // The README's bound: 64 MiB for the agent, and each stream's queue and socket buffers.
    let (_, peak_kib) = memory_kib(agent.pid());
    assert!(
        peak_kib < 128 << 10,
        "agent peak RSS {} MiB with 8 unread streams",
        peak_kib >> 10
    );
    // A stream's place is free again.
    let s = silent_stream(&agent, "probes=packet_drop");
    agent.wait_metric(OPEN, &[], 1.0, SETTLE_TIMEOUT);
    drop((s, streams));
}

#[test]
fn silent_connections_are_let_go_and_connections_are_capped() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let agent = Agent::spawn_yaml(
        "probes:\n  tcp_retrans: {enabled: false}\n  tcp_reset: {enabled: false}\n\
         api:\n  maxConnections: 1\n  headerTimeout: 1s\n",
    );
    agent.wait_ready(READY_TIMEOUT);
    // A connection that sends nothing holds the one slot, until its headers are overdue.
    let mut silent = TcpStream::connect(agent.addr()).expect("connect");
    silent
        .set_read_timeout(Some(SETTLE_TIMEOUT))
        .expect("a read timeout");
    let started = Instant::now();
    // Meanwhile a request waits in the backlog: it is answered once the slot is free.
    let waiting = std::thread::spawn({
        let addr = agent.addr();
        move || http_get(addr, "/healthz").map(|(status, _)| (status, Instant::now()))
    });
    let mut buf = [0u8; 64];
    let ended = silent.read(&mut buf);
    let held = started.elapsed();
    assert!(
        matches!(ended, Ok(0)) || ended.is_err() && held < SETTLE_TIMEOUT,
        "the silent connection was not let go: {ended:?}"
    );
    assert!(
        held >= Duration::from_millis(900),
        "let go after {held:?}, before api.headerTimeout"
    );
    let (status, answered) = waiting
        .join()
        .expect("the waiting request")
        .expect("an answer");
    assert_eq!(status, 200);
    assert!(
        answered.duration_since(started) >= Duration::from_millis(900),
        "answered while the only slot was held"
    );
}
