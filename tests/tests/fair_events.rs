//! Event budgets are fair across pods: each network namespace has its own token bucket in
//! front of the CPU's, so a pod flooding drops spends its own budget and the drops of the pod
//! beside it still reach the sinks, one event each. What a namespace's bucket suppressed is
//! counted under its pod.
//!
//! Alone in its test binary (cargo runs test binaries one after another): the flood's drops
//! reach every agent on the machine.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sonde_tests::{
    bench::pin_to_cpu, field_str, in_netns, Agent, IpFamily, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 9999;
const DROPS: &str = "sonde_packet_drops_total";
const SUPPRESSED: &str = "sonde_events_suppressed_total";
/// Both pods send from this CPU, and their drops happen there (veth delivers on the
/// sender's CPU): the CPU's event bucket is the one the flood drains.
const CPU: usize = 0;
/// The quiet pod's drops: fewer than a namespace's burst (100 by default).
const QUIET: usize = 50;

fn drop_events_for(agent: &Agent, pod: &str) -> usize {
    agent
        .events()
        .iter()
        .filter(|e| field_str(e, "type") == Some("packet_drop") && field_str(e, "pod") == Some(pod))
        .filter(|e| field_str(e, "reason") == Some("NETFILTER_DROP"))
        .count()
}

/// Drop events of namespace `netns`, for any reason.
fn drop_events_in(agent: &Agent, netns: u64) -> usize {
    agent
        .events()
        .iter()
        .filter(|e| field_str(e, "type") == Some("packet_drop") && e["netns"] == netns)
        .count()
}

/// Sends datagrams from pod A of `pods` into pod B's DROP rule as fast as one thread can
/// until `stop` is set.
fn flood(pods: &PodPair, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let netns = pods.a.name().to_string();
    let src = SocketAddr::new(pods.a_end.ip(IpFamily::V4), 0);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    std::thread::spawn(move || {
        in_netns(&netns, || {
            pin_to_cpu(CPU);
            let socket = UdpSocket::bind(src).expect("bind the flood's socket");
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                if socket.send_to(b"flood", dst).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    })
}

#[test]
fn a_flooding_pod_does_not_silence_its_neighbour() {
    let noisy = PodPair::dropping_udp(PORT);
    let quiet = PodPair::dropping_udp(PORT);
    // The default event limits: 1000/s per CPU, 100/s per namespace.
    let agent = Agent::spawn_yaml(
        "probes:\n  tcp_retrans: {enabled: false}\n  tcp_reset: {enabled: false}\n  \
         tcp_connect: {enabled: false}\n  softirq: {enabled: false}\n  \
         io_latency: {enabled: false}\n  netstat: {enabled: false}\n\
         sinks:\n  stdout: {enabled: true}\ntopology:\n  netnsDir: /run/netns\n",
    );
    agent.wait_ready(READY_TIMEOUT);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let flooding = flood(&noisy, Arc::clone(&stop));
    // The flood is on and has spent far more than any bucket holds.
    let noisy_drops = [("pod", noisy.b.name()), ("reason", "NETFILTER_DROP")];
    agent.wait_metric(DROPS, &noisy_drops, 20_000.0, SETTLE_TIMEOUT);

    let dst = SocketAddr::new(quiet.b_end.ip(IpFamily::V4), PORT);
    in_netns(quiet.a.name(), || {
        pin_to_cpu(CPU);
        let socket = UdpSocket::bind(SocketAddr::new(quiet.a_end.ip(IpFamily::V4), 0))
            .expect("bind the quiet pod's socket");
        for i in 0..QUIET {
            socket
                .send_to(b"quiet", dst)
                .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        }
    });
    let quiet_drops = [("pod", quiet.b.name()), ("reason", "NETFILTER_DROP")];
    agent.wait_metric(DROPS, &quiet_drops, QUIET as f64, SETTLE_TIMEOUT);
    // Still flooding after the quiet pod's drops were counted.
    let during = agent.metric(DROPS, &noisy_drops).unwrap_or(0.0);
    agent.wait_metric(DROPS, &noisy_drops, during + 10_000.0, SETTLE_TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let sent = flooding.join().expect("the flood thread");
    let seconds = started.elapsed().as_secs_f64();

    sonde_tests::poll_until(SETTLE_TIMEOUT, "every quiet drop as an event", || {
        (drop_events_for(&agent, quiet.b.name()) >= QUIET).then_some(())
    });
    assert_eq!(drop_events_for(&agent, quiet.b.name()), QUIET);
    assert_eq!(agent.metric(DROPS, &quiet_drops), Some(QUIET as f64));

    // The flood's events were cut to its namespace's budget, and what was cut is counted
    // under its pod; nothing of the quiet pod's was.
    let noisy_suppressed = [("probe", "packet_drop"), ("pod", noisy.b.name())];
    let (noisy_events, suppressed) = sonde_tests::poll_until(
        SETTLE_TIMEOUT,
        "each flood drop an event or suppressed",
        || {
            // By namespace: the flood's first events may be enriched before the agent's
            // topology has read the new namespaces' names.
            let events = drop_events_in(&agent, noisy.b.inode()) as f64;
            let nf_events = drop_events_for(&agent, noisy.b.name()) as f64;
            let s = agent.metric(SUPPRESSED, &noisy_suppressed)?;
            // Every reason: the namespace's own IPv6 chatter is dropped too now and then
            // (IP_INNOROUTES), from the same budget.
            let drops = agent.metric(DROPS, &[("pod", noisy.b.name())])?;
            (s + events == drops).then_some((nf_events, s))
        },
    );
    // A burst of 100, then 100 a second (one more second for the last refill).
    assert!(
        noisy_events <= 100.0 + 100.0 * (seconds + 1.0) && suppressed > 20_000.0,
        "{sent} sent in {seconds:.1} s, {noisy_events} events, {suppressed} suppressed"
    );
    assert_eq!(
        agent.metric(
            SUPPRESSED,
            &[("probe", "packet_drop"), ("pod", quiet.b.name())]
        ),
        None
    );
}
