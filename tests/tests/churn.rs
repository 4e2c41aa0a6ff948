//! Churn: pods that live a tenth of a second, one after another, faster than the agent reads
//! its counters (every second). The kernel hands a gone namespace's inode to the next one at
//! once, so counts keyed or named by inode move to the wrong pod; Sonde names namespaces by
//! their cookie.
//!
//! - eBPF counters: each pod makes one refused connect on its loopback: exactly one NO_SOCKET
//!   drop and one reset each way, for every pod, none for any other.
//! - netstat: pods are made every 100 ms, faster than netstat reads them (every 500 ms), each
//!   makes 1, 2 or 3 refused connects and is deleted once its counters were exported; every
//!   pod's `AttemptFails` (named in `counters` beside the curated set) and `OutRsts` read
//!   exactly its own count whenever they are exported (or 0, read before its connects), never
//!   another pod's.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use sonde_tests::{
    drop_reason, metric_series, only_probes_yaml, refused_connects, try_poll_until, Agent,
    AgentConfig, Netns, READY_TIMEOUT,
};

const PODS: usize = 200;
/// How long each pod lives after its connect.
const LIFE: Duration = Duration::from_millis(100);
const CLOSED_PORT: u16 = 7777;
const DROPS: &str = "sonde_packet_drops_total";
const RESETS: &str = "sonde_tcp_resets_total";
/// The 200 pods' counts reach /metrics within a few syncs once the last is gone.
const COUNTED_TIMEOUT: Duration = Duration::from_secs(20);

/// Each series of `name` whose pod is one of `pods` and whose labels include `with`, summed by
/// pod.
fn by_pod(text: &str, name: &str, with: (&str, &str), pods: &[String]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, value) in metric_series(text, name) {
        let has = |k: &str, v: &str| labels.iter().any(|(lk, lv)| lk == k && lv == v);
        let Some(pod) = labels.iter().find(|(k, _)| k == "pod").map(|(_, v)| v) else {
            continue;
        };
        if has(with.0, with.1) && pods.contains(pod) {
            *out.entry(pod.clone()).or_insert(0.0) += value;
        }
    }
    out
}

/// Whether this kernel tells namespace cookies (`SO_NETNS_COOKIE`, Linux 5.14); without them
/// the agent names pods by inode, with the caveat this test would find.
fn cookies_supported() -> bool {
    // SAFETY: plain syscalls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            71,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        libc::close(fd);
        rc == 0
    }
}

#[test]
fn short_lived_pods_keep_their_own_counts() {
    if !cookies_supported() {
        eprintln!("skipped: this kernel tells no namespace cookies (SO_NETNS_COOKIE, Linux 5.14)");
        return;
    }
    let agent = Agent::spawn(&AgentConfig {
        tcp_retrans: false,
        tcp_connect: false,
        softirq: false,
        io_latency: false,
        ..AgentConfig::default()
    });
    agent.wait_ready(READY_TIMEOUT);

    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), CLOSED_PORT);
    let mut pods = Vec::with_capacity(PODS);
    let mut inodes = std::collections::HashSet::new();
    for i in 0..PODS {
        let pod = Netns::new(&format!("churn{i}"));
        inodes.insert(pod.inode());
        refused_connects(&pod, dst, 1);
        std::thread::sleep(LIFE);
        pods.push(pod.name().to_string());
        drop(pod);
    }
    // The point of the test: the kernel reused inodes.
    assert!(
        inodes.len() < PODS,
        "{PODS} namespaces had {} inodes",
        inodes.len()
    );

    let no_socket = ("reason", drop_reason("NO_SOCKET"));
    let checks = [
        (DROPS, no_socket),
        (RESETS, ("direction", "sent")),
        (RESETS, ("direction", "received")),
    ];
    let mut last = String::new();
    let counted = try_poll_until(COUNTED_TIMEOUT, || {
        let text = agent.metrics();
        let mut wrong = Vec::new();
        for (name, with) in checks {
            let counts = by_pod(&text, name, with, &pods);
            for pod in &pods {
                match counts.get(pod) {
                    Some(1.0) => {}
                    other => wrong.push(format!(
                        "{name}{{{}={}}} of {pod}: {other:?}",
                        with.0, with.1
                    )),
                }
            }
        }
        last = format!(
            "{} wrong, first: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        wrong.is_empty().then_some(())
    });
    assert!(
        counted.is_some(),
        "each of {PODS} short-lived pods: 1 drop and 1 reset each way; {last}"
    );
}

/// netstat's pods: how many, how often one is made, how long one may wait to be exported.
const NETSTAT_PODS: usize = 60;
const NETSTAT_PACE: Duration = Duration::from_millis(100);
const NETSTAT_DEADLINE: Duration = Duration::from_secs(15);
const NETSTAT_TCP: &str = "sonde_netstat_tcp_total";

#[test]
fn netstat_counts_of_churning_pods_are_their_own() {
    let agent = Agent::spawn_yaml(
        &only_probes_yaml("", "topology:\n  source: standalone\n").replace(
            "netstat: {enabled: false}",
            "netstat: {enabled: true, interval: 500ms, counters: [default, \"Tcp:AttemptFails\"]}",
        ),
    );
    agent.wait_ready(READY_TIMEOUT);

    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), CLOSED_PORT);
    // Each pod's own count of refused connects, by name, kept after the pod is gone.
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    // Pods alive, oldest first, with when each was made.
    let mut alive: std::collections::VecDeque<(Netns, std::time::Instant)> = Default::default();
    let mut exported = std::collections::HashSet::new();
    let mut wrong = Vec::new();
    let mut inodes = std::collections::HashSet::new();
    let mut made = 0;
    let mut last_made = std::time::Instant::now() - NETSTAT_PACE;
    while made < NETSTAT_PODS || !alive.is_empty() {
        if made < NETSTAT_PODS && last_made.elapsed() >= NETSTAT_PACE {
            last_made = std::time::Instant::now();
            let pod = Netns::new(&format!("nschurn{made}"));
            inodes.insert(pod.inode());
            let count = 1 + made % 3;
            refused_connects(&pod, dst, count);
            want.insert(pod.name().to_string(), count as f64);
            alive.push_back((pod, last_made));
            made += 1;
        }
        let text = agent.metrics();
        for counter in ["AttemptFails", "OutRsts"] {
            for (pod, value) in by_pod(&text, NETSTAT_TCP, ("counter", counter), &names(&want)) {
                let own = want[&pod];
                if value == own {
                    exported.insert((pod, counter));
                } else if value != 0.0 {
                    wrong.push(format!("{counter} of {pod} read {value}, its own is {own}"));
                }
            }
        }
        // A pod goes once both its counters were exported, or at its deadline (then missing).
        alive.retain(|(pod, born)| {
            let name = pod.name().to_string();
            let done = ["AttemptFails", "OutRsts"]
                .iter()
                .all(|c| exported.contains(&(name.clone(), *c)));
            !done && born.elapsed() < NETSTAT_DEADLINE
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        inodes.len() < NETSTAT_PODS,
        "{NETSTAT_PODS} namespaces had {} inodes: none was reused",
        inodes.len()
    );
    assert!(wrong.is_empty(), "counts of other pods: {wrong:?}");
    let missing: Vec<String> = want
        .keys()
        .flat_map(|pod| ["AttemptFails", "OutRsts"].map(|c| (pod.clone(), c)))
        .filter(|k| !exported.contains(k))
        .map(|(pod, c)| format!("{c} of {pod}"))
        .collect();
    assert!(missing.is_empty(), "never exported: {missing:?}");
}

fn names(want: &BTreeMap<String, f64>) -> Vec<String> {
    want.keys().cloned().collect()
}
