//! What a pod costs in series, and the agent's cap on them:
//!
//! - with the default config, pods that connect, accept, are refused and receive a datagram
//!   for a closed port cost at most 60 series each (histogram buckets included), while the
//!   node's own namespace still exports every netstat counter;
//! - `probes.netstat.counters` brings back exactly the counters it names (a counter, a
//!   section, an interface counter on every interface), `all` every one the pod's /proc/net
//!   has, `[]` none; `hostCounters` does the same for the node's namespace, applied live;
//! - with a small `metrics.maxSeries` the agent makes series up to the cap and no more,
//!   counts each refused one once in `sonde_series_dropped_total{metric}`, gives the room of
//!   a gone pod's series to the next, and follows a new cap live: exactly, for netstat's
//!   series (of namespaces only this test's agent reads) and flow's (of interfaces only it
//!   watches); for the eBPF probes' counters and histograms, which see every namespace of the
//!   kernel (other tests' too), it makes none of this test's pods' and counts at least theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sonde_tests::{
    all_series, connect_and_close, in_netns, metric_series, only_probes_yaml, poll_until,
    refused_connects, run_command, send_udp, try_poll_until, Agent, IpFamily, Netns, NodePods,
    PodPair, TempDir, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const NODE: &str = "sonde-test-node";
/// The budget the issue set: what one pod may cost with the default probes.
const PER_POD: usize = 60;
const DROPPED: &str = "sonde_series_dropped_total";

/// A series: its name and its labels but `node`, `namespace` and `pod`.
type Series = (String, Vec<(String, String)>);

/// The series of `/metrics` that carry `pod="<pod>"`.
fn pod_series(metrics: &str, pod: &str) -> BTreeSet<Series> {
    all_series(metrics)
        .into_iter()
        .filter(|(_, labels, _)| labels.iter().any(|(k, v)| k == "pod" && v == pod))
        .map(|(name, labels, _)| {
            let own = labels
                .into_iter()
                .filter(|(k, _)| !matches!(k.as_str(), "node" | "namespace" | "pod"))
                .collect();
            (name, own)
        })
        .collect()
}

/// Series per metric family (a histogram's `_bucket`, `_sum`, `_count` together).
fn by_family(series: &BTreeSet<Series>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (name, _) in series {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        *out.entry(family.to_string()).or_default() += 1;
    }
    out
}

/// An `le` label's bound.
fn le(v: &str) -> f64 {
    if v == "+Inf" {
        f64::INFINITY
    } else {
        v.parse().expect("a bound")
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    (name.to_string(), labels)
}

/// Four pods on a bridge, each with `eth0` and `lo`, in a ring: each connects once to the
/// next (accepted), is refused once by it, and sends it a datagram for a closed port. So
/// every pod has a connect and an accept handshake, a refused connect, a reset each way, a
/// drop and a UDP NoPorts. With the default config none costs more than 60 series; the host
/// keeps every netstat counter.
#[test]
fn default_config_costs_at_most_60_series_a_pod() {
    const PODS: usize = 4;
    const OPEN: u16 = 7101;
    const CLOSED: u16 = 7102;
    const UDP: u16 = 7103;
    let node = NodePods::new(PODS);
    let agent = Agent::spawn_yaml(&format!("node: {NODE}\ntopology:\n  source: standalone\n"));
    agent.wait_ready(READY_TIMEOUT);
    for i in 0..PODS {
        let (me, next) = (&node.pods[i], &node.pods[(i + 1) % PODS]);
        let dst = |port| SocketAddr::new(next.ip(IpFamily::V4), port);
        connect_and_close(&me.netns, &next.netns, dst(OPEN), 1);
        refused_connects(&me.netns, dst(CLOSED), 1);
        send_udp(&me.netns, me.ip(IpFamily::V4), dst(UDP), 1);
    }
    for pod in &node.pods {
        let p = pod.name();
        for (metric, extra) in [
            (
                "sonde_tcp_connect_duration_seconds_count",
                ("side", "connect"),
            ),
            (
                "sonde_tcp_connect_duration_seconds_count",
                ("side", "accept"),
            ),
            ("sonde_tcp_connect_failures_total", ("cause", "refused")),
            ("sonde_netstat_udp_total", ("counter", "NoPorts")),
        ] {
            agent.wait_metric_eq(metric, &[("pod", p), extra], 1.0, SETTLE_TIMEOUT);
        }
    }
    let metrics = agent.metrics();
    let mut over = Vec::new();
    for pod in &node.pods {
        let mine = pod_series(&metrics, pod.name());
        eprintln!(
            "{}: {} series {:?}",
            pod.name(),
            mine.len(),
            by_family(&mine)
        );
        if mine.len() > PER_POD {
            over.push(format!("{}: {} series", pod.name(), mine.len()));
        }
    }
    assert!(
        over.is_empty(),
        "pods over {PER_POD} series with the default config: {over:?}"
    );
    for pod in &node.pods {
        let mine = pod_series(&metrics, pod.name());
        let families = by_family(&mine);
        // What the traffic made, with the coarse buckets of a pod's histogram (5 and +Inf).
        for (family, n) in [
            ("sonde_tcp_connect_duration_seconds", 16),
            ("sonde_tcp_connect_failures_total", 1),
            ("sonde_tcp_resets_total", 2),
        ] {
            assert_eq!(families.get(family), Some(&n), "{family} of {}", pod.name());
        }
        let mut bounds: Vec<&str> = mine
            .iter()
            .filter(|(name, _)| name == "sonde_tcp_connect_duration_seconds_bucket")
            .flat_map(|(_, labels)| labels.iter())
            .filter(|(k, _)| k == "le")
            .map(|(_, v)| v.as_str())
            .collect();
        bounds.sort_by(|a, b| le(a).total_cmp(&le(b)));
        bounds.dedup();
        assert_eq!(
            bounds,
            ["0.000016", "0.000256", "0.004096", "0.065536", "1.048576", "+Inf"],
            "{}",
            pod.name()
        );
        // The curated netstat set, and nothing of the loopback's interface.
        assert!(mine.contains(&series(
            "sonde_netstat_tcp_ext_total",
            &[("counter", "ListenOverflows")]
        )));
        assert!(mine.contains(&series(
            "sonde_netstat_dev_receive_bytes_total",
            &[("device", "eth0")]
        )));
        assert!(!mine.contains(&series(
            "sonde_netstat_dev_receive_bytes_total",
            &[("device", "lo")]
        )));
        assert!(!families.contains_key("sonde_netstat_ip6_total"));
    }
    // The node's own namespace keeps every counter.
    let host = pod_series(&metrics, "");
    for s in [
        series("sonde_netstat_tcp_ext_total", &[("counter", "TCPOFODrop")]),
        series("sonde_netstat_tcp_total", &[("counter", "InSegs")]),
        series("sonde_netstat_dev_receive_bytes_total", &[("device", "lo")]),
    ] {
        assert!(host.contains(&s), "the host has no {s:?}");
    }
    assert!(by_family(&host).contains_key("sonde_netstat_ip6_total"));
    assert!(agent
        .metrics()
        .contains("sonde_netstat_softnet_processed_total{"));
    assert_eq!(agent.metric(DROPPED, &[]), None, "nothing dropped");
}

/// `section field` names of the namespace's own /proc/net/`file`, read inside it: the
/// `Name: a b c` / `Name: 1 2 3` files (snmp, netstat), or snmp6's `Ip6InReceives 1` lines.
fn proc_names(netns: &Netns, file: &str, section: &str) -> BTreeSet<String> {
    let path = format!("/proc/thread-self/net/{file}");
    let text = in_netns(netns.name(), || {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    });
    if file == "snmp6" {
        return text
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.strip_prefix(section))
            .filter(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
            .map(String::from)
            .collect();
    }
    let prefix = format!("{section}:");
    let header = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {section} in {file}"));
    header
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect()
}

/// The `counter` label values of `family` among `series`.
fn counters_of(series: &BTreeSet<Series>, family: &str) -> BTreeSet<String> {
    series
        .iter()
        .filter(|(name, _)| name == family)
        .flat_map(|(_, labels)| labels.iter().filter(|(k, _)| k == "counter"))
        .map(|(_, v)| v.clone())
        .collect()
}

/// netstat alone: `netstat` its settings (YAML lines under `probes.netstat`), then `rest`.
fn netstat_only(netstat: &str, rest: &str) -> String {
    format!(
        "node: {NODE}\nprobes:\n\
         \x20 packet_drop: {{enabled: false}}\n\
         \x20 tcp_retrans: {{enabled: false}}\n\
         \x20 tcp_reset: {{enabled: false}}\n\
         \x20 tcp_connect: {{enabled: false}}\n\
         \x20 io_latency: {{enabled: false}}\n\
         \x20 netstat:\n    interval: 200ms\n{netstat}\
         topology:\n  source: standalone\n{rest}"
    )
}

fn netstat_yaml(pods: &str, host: &str) -> String {
    netstat_only(&format!("    counters: {pods}\n{host}"), "")
}

/// A named list brings back exactly what it names, in pods; `all` every counter the pod's
/// /proc/net has; `[]` nothing; `hostCounters: default` trims the node's namespace. Applied
/// live.
#[test]
fn counters_all_and_named_lists_bring_back_exactly_those() {
    let pods = PodPair::new();
    let a = pods.a.name();
    let agent = Agent::spawn_yaml(&netstat_yaml(
        "[TcpExt:TCPOFODrop, \"Udp6:RcvbufErrors\", dev:receive_bytes, Icmp]",
        "    hostCounters: default\n",
    ));
    agent.wait_ready(READY_TIMEOUT);

    // A counter, a section, an interface counter (on every interface, lo too).
    let mut want: BTreeSet<Series> = [
        series("sonde_netstat_tcp_ext_total", &[("counter", "TCPOFODrop")]),
        series("sonde_netstat_udp6_total", &[("counter", "RcvbufErrors")]),
        series("sonde_netstat_dev_receive_bytes_total", &[("device", "lo")]),
        series(
            "sonde_netstat_dev_receive_bytes_total",
            &[("device", "eth0")],
        ),
    ]
    .into_iter()
    .collect();
    for name in proc_names(&pods.a, "snmp", "Icmp") {
        want.insert(series("sonde_netstat_icmp_total", &[("counter", &name)]));
    }
    let mut last = BTreeSet::new();
    let ok = try_poll_until(SETTLE_TIMEOUT, || {
        last = pod_series(&agent.metrics(), a);
        (last == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "pod {a}: wanted exactly {want:?}\ngot {last:?}"
    );
    // The host's curated set: no TCPOFODrop, no IPv6 table, no softnet, no lo.
    let host = pod_series(&agent.metrics(), "");
    assert!(host.contains(&series(
        "sonde_netstat_tcp_ext_total",
        &[("counter", "ListenOverflows")]
    )));
    assert!(!counters_of(&host, "sonde_netstat_tcp_ext_total").contains("TCPOFODrop"));
    let families = by_family(&host);
    assert!(
        !families.contains_key("sonde_netstat_ip6_total")
            && !families.contains_key("sonde_netstat_softnet_processed_total"),
        "{families:?}"
    );

    // all: every counter of the pod's own /proc/net, each section exactly; host complete.
    agent.rewrite_config(&netstat_yaml("all", ""));
    let tcp_ext = proc_names(&pods.a, "netstat", "TcpExt");
    let ip6 = proc_names(&pods.a, "snmp6", "Ip6");
    let mut last = BTreeSet::new();
    let ok = try_poll_until(SETTLE_TIMEOUT, || {
        last = pod_series(&agent.metrics(), a);
        (counters_of(&last, "sonde_netstat_tcp_ext_total") == tcp_ext
            && counters_of(&last, "sonde_netstat_ip6_total") == ip6)
            .then_some(())
    });
    assert!(ok.is_some(), "pod {a} with all: {last:?}");
    for device in ["lo", "eth0"] {
        for dir in ["receive", "transmit"] {
            for what in ["bytes", "packets", "errors", "drops"] {
                let s = series(
                    &format!("sonde_netstat_dev_{dir}_{what}_total"),
                    &[("device", device)],
                );
                assert!(last.contains(&s), "no {s:?}");
            }
        }
    }
    assert!(last.len() > 300, "all gave pod {a} {} series", last.len());
    eprintln!("pod {a} with counters: all: {} series", last.len());
    poll_until(SETTLE_TIMEOUT, "the host's every counter", || {
        let host = pod_series(&agent.metrics(), "");
        counters_of(&host, "sonde_netstat_tcp_ext_total")
            .contains("TCPOFODrop")
            .then_some(())
    });

    // []: nothing of the pods (the host's stay).
    agent.rewrite_config(&netstat_yaml("[]", ""));
    poll_until(SETTLE_TIMEOUT, "no series of the pod", || {
        pod_series(&agent.metrics(), a).is_empty().then_some(())
    });
    assert!(!pod_series(&agent.metrics(), "").is_empty());
}

/// Named network namespaces of this test only, bind-mounted into a directory of its own
/// (`topology.netnsDir`), so that the agent's pods are exactly these, whatever else runs.
struct NetnsDir {
    dir: TempDir,
    mounted: Vec<PathBuf>,
}

impl NetnsDir {
    fn new() -> NetnsDir {
        NetnsDir {
            dir: TempDir::new(),
            mounted: Vec::new(),
        }
    }

    /// A new namespace for each of `names` (its role `role`), each the pod of that name.
    fn with_pods(names: &[&str], role: &str) -> (NetnsDir, Vec<Netns>) {
        let namespaces: Vec<Netns> = names.iter().map(|_| Netns::new(role)).collect();
        let mut dir = NetnsDir::new();
        for (name, netns) in names.iter().zip(&namespaces) {
            dir.add(name, netns);
        }
        (dir, namespaces)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes `netns` the pod `name`.
    fn add(&mut self, name: &str, netns: &Netns) {
        let target = self.dir.write(name, "");
        run_command(&format!(
            "mount --bind /run/netns/{} {}",
            netns.name(),
            target.display()
        ));
        self.mounted.push(target);
    }

    /// Pod `name` is gone.
    fn remove(&mut self, name: &str) {
        let target = self.dir.path().join(name);
        run_command(&format!("umount {}", target.display()));
        std::fs::remove_file(&target).expect("remove the mount point");
        self.mounted.retain(|m| *m != target);
    }
}

impl Drop for NetnsDir {
    fn drop(&mut self) {
        for m in &self.mounted {
            let _ = std::process::Command::new("umount").arg(m).output();
        }
    }
}

/// netstat alone, `[Udp:NoPorts, Udp:InErrors]` of pods `cap-1` .. `cap-5` (2 series each,
/// made in the order of the pods' names), none of the host's, under `maxSeries`.
fn capped_netstat_yaml(dir: &Path, max: usize) -> String {
    netstat_only(
        "    includeHost: false\n    groups: [snmp]\n    counters: [Udp:NoPorts, Udp:InErrors]\n",
        &format!(
            "  netnsDir: {}\nmetrics:\n  maxSeries: {max}\n",
            dir.display()
        ),
    )
}

/// Which of `pods` have which of the two counters, as "pod:counter".
fn netstat_udp(agent: &Agent, pods: &[&str]) -> Vec<String> {
    let metrics = agent.metrics();
    let mut out = Vec::new();
    for pod in pods {
        for c in counters_of(&pod_series(&metrics, pod), "sonde_netstat_udp_total") {
            out.push(format!("{pod}:{c}"));
        }
    }
    out
}

#[track_caller]
fn wait_netstat(agent: &Agent, pods: &[&str], want: &[&str], dropped: f64, series: f64) {
    let mut last = None;
    let ok = try_poll_until(SETTLE_TIMEOUT, || {
        let seen = (
            netstat_udp(agent, pods),
            agent.metric(DROPPED, &[("metric", "sonde_netstat_udp_total")]),
            agent.metric("sonde_series", &[]),
        );
        let done = seen.0 == want && seen.1 == Some(dropped) && seen.2 == Some(series);
        last = Some(seen);
        done.then_some(())
    });
    assert!(
        ok.is_some(),
        "wanted {want:?}, {dropped} dropped, {series} series; last (series of the pods, \
         dropped, sonde_series) {last:?}"
    );
}

/// Five pods of two series each under a cap of 7: the first three pods' and the fourth's
/// first series are made, the other three are not and are counted once each, while rounds
/// keep trying them. A datagram count still lands on its pod's series. A pod going gives its
/// room to the next ones; a raised cap makes room at once; a lowered one keeps what exists
/// and refuses what comes.
#[test]
fn netstat_series_stop_at_the_cap_and_are_counted() {
    let names = ["cap-1", "cap-2", "cap-3", "cap-4", "cap-5"];
    let (mut dir, namespaces) = NetnsDir::with_pods(&names, "cap");
    let agent = Agent::spawn_yaml(&capped_netstat_yaml(dir.path(), 7));
    agent.wait_ready(READY_TIMEOUT);
    agent.wait_metric_eq("sonde_series_limit", &[], 7.0, SETTLE_TIMEOUT);
    let full = [
        "cap-1:InErrors",
        "cap-1:NoPorts",
        "cap-2:InErrors",
        "cap-2:NoPorts",
        "cap-3:InErrors",
        "cap-3:NoPorts",
        "cap-4:NoPorts",
    ];
    wait_netstat(&agent, &names, &full, 3.0, 7.0);

    // Counts are right on the series that exist: 3 datagrams to a closed port of cap-2.
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    send_udp(&namespaces[1], lo, SocketAddr::new(lo, 9), 3);
    agent.wait_metric_eq(
        "sonde_netstat_udp_total",
        &[("pod", "cap-2"), ("counter", "NoPorts")],
        3.0,
        SETTLE_TIMEOUT,
    );

    // cap-1 goes: its two series' room goes to cap-4's second and cap-5's first; cap-5's
    // second is still refused, and counted already.
    dir.remove("cap-1");
    let after = [
        "cap-2:InErrors",
        "cap-2:NoPorts",
        "cap-3:InErrors",
        "cap-3:NoPorts",
        "cap-4:InErrors",
        "cap-4:NoPorts",
        "cap-5:NoPorts",
    ];
    wait_netstat(&agent, &names, &after, 3.0, 7.0);

    // A raised cap, live: the last one is made.
    agent.rewrite_config(&capped_netstat_yaml(dir.path(), 100));
    let mut all = after.to_vec();
    all.push("cap-5:InErrors");
    all.sort();
    wait_netstat(&agent, &names, &all, 3.0, 8.0);

    // A lowered one keeps what exists; a new pod's two series are refused and counted.
    agent.rewrite_config(&capped_netstat_yaml(dir.path(), 2));
    agent.wait_metric_eq("sonde_series_limit", &[], 2.0, SETTLE_TIMEOUT);
    let late = Netns::new("cap");
    dir.add("cap-6", &late);
    let mut names6 = names.to_vec();
    names6.push("cap-6");
    wait_netstat(&agent, &names6, &all, 5.0, 8.0);
    drop(dir);
}

/// flow alone on this test's host-side veths, under a cap of 4 (two pod pairs, a bytes and a
/// packets series each): three pods send to a fourth one after the other; the third pair is
/// not made and counted once in each family, and the pairs made keep counting exactly.
#[test]
fn flow_series_stop_at_the_cap_and_are_counted() {
    let node = NodePods::new(4);
    // No IPv6 and no IGMP reports out of the pods (a report sent after the agent attached
    // would make a pair of its own and take a place under the cap; the host's side sends
    // nothing of its own, see `NodePods`): their only packets are the datagrams sent here.
    for pod in &node.pods {
        in_netns(pod.name(), || {
            for key in ["all", "default", "eth0"] {
                let path = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
                std::fs::write(&path, "1").unwrap_or_else(|e| panic!("write {path}: {e}"));
            }
        });
        pod.netns
            .iptables(IpFamily::V4, "-A OUTPUT -p igmp -j DROP");
    }
    let agent = Agent::spawn_yaml(&only_probes_yaml(
        &format!(
            "  flow:\n    enabled: true\n    interfaces: [\"{}\"]\n",
            node.interface_pattern()
        ),
        "topology:\n  source: standalone\nmetrics:\n  maxSeries: 4\n",
    ));
    agent.wait_ready(READY_TIMEOUT);
    let server = &node.pods[0];
    let dst = SocketAddr::new(server.ip(IpFamily::V4), 7300);
    // Something listens, so no ICMP port unreachable makes pairs of its own.
    let _listener = in_netns(server.name(), || {
        std::net::UdpSocket::bind(dst).expect("bind in the server pod")
    });
    let pair = |client: &str| {
        vec![
            ("src_pod", client.to_string()),
            ("dst_pod", server.name().to_string()),
            ("protocol", "udp".to_string()),
        ]
    };
    let packets = |client: &str| {
        let labels = pair(client);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        agent.metric("sonde_flow_packets_total", &labels)
    };
    // Interfaces are attached a moment after ready.
    let mut want: Vec<String> = node.pods.iter().map(|p| p.host_if.clone()).collect();
    want.sort();
    poll_until(SETTLE_TIMEOUT, "flow attached to the pods' veths", || {
        let (_, body) = agent.get("/api/v1/probes");
        let probes: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let flow = probes
            .as_array()?
            .iter()
            .find(|p| p["name"] == "flow")?
            .clone();
        let mut attached: Vec<String> = flow["interfaces"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        attached.sort();
        (attached == want).then_some(())
    });
    let first = node.pods[1].name();
    send_udp(&node.pods[1].netns, node.pods[1].ip(IpFamily::V4), dst, 2);
    poll_until(SETTLE_TIMEOUT, "the first pair's series", || {
        (packets(first) == Some(2.0)).then_some(())
    });
    let second = node.pods[2].name();
    send_udp(&node.pods[2].netns, node.pods[2].ip(IpFamily::V4), dst, 2);
    let counted = try_poll_until(SETTLE_TIMEOUT, || {
        (packets(second) == Some(2.0)).then_some(())
    });
    assert!(
        counted.is_some(),
        "the second pair's series never read 2; flow series: {:?}",
        metric_series(&agent.metrics(), "sonde_flow_packets_total")
    );
    let third = node.pods[3].name();
    send_udp(&node.pods[3].netns, node.pods[3].ip(IpFamily::V4), dst, 2);
    for family in ["sonde_flow_bytes_total", "sonde_flow_packets_total"] {
        agent.wait_metric_eq(DROPPED, &[("metric", family)], 1.0, SETTLE_TIMEOUT);
    }
    assert_eq!(packets(third), None, "the third pair made past the cap");
    assert_eq!(agent.metric("sonde_series", &[]), Some(4.0));
    // More of everything: the pairs made count on, the third stays out and is not counted
    // again.
    send_udp(&node.pods[1].netns, node.pods[1].ip(IpFamily::V4), dst, 5);
    send_udp(&node.pods[3].netns, node.pods[3].ip(IpFamily::V4), dst, 5);
    agent.wait_metric_eq(
        "sonde_flow_packets_total",
        &[("src_pod", first), ("dst_pod", server.name())],
        7.0,
        SETTLE_TIMEOUT,
    );
    assert_eq!(packets(second), Some(2.0));
    assert_eq!(packets(third), None);
    for family in ["sonde_flow_bytes_total", "sonde_flow_packets_total"] {
        assert_eq!(agent.metric(DROPPED, &[("metric", family)]), Some(1.0));
    }
}

/// The eBPF probes' counters and histograms ask the same budget: with it full (netstat's
/// series of this test's three pods), their handshakes, refused connects, resets and drops
/// make no series of theirs, and at least theirs are counted as dropped (the probes see the
/// whole kernel, so other namespaces' events may add to the counts, never to the pods'
/// series); a histogram is dropped with its 8 series.
#[test]
fn probe_series_stop_at_the_cap_and_are_counted() {
    let names = ["cap-1", "cap-2", "cap-3"];
    let (dir, namespaces) = NetnsDir::with_pods(&names, "cap");
    let agent = Agent::spawn_yaml(&format!(
        "node: {NODE}\nprobes:\n\
         \x20 packet_drop: {{enabled: true}}\n\
         \x20 tcp_retrans: {{enabled: false}}\n\
         \x20 tcp_reset: {{enabled: true}}\n\
         \x20 tcp_connect: {{enabled: true}}\n\
         \x20 io_latency: {{enabled: false}}\n\
         \x20 netstat:\n    interval: 200ms\n    includeHost: false\n    groups: [snmp]\n\
         \x20   counters: [Udp:NoPorts]\n\
         sinks:\n  stdout: {{enabled: true}}\n\
         topology:\n  source: standalone\n  netnsDir: {}\nmetrics:\n  maxSeries: 3\n",
        dir.path().display()
    ));
    agent.wait_ready(READY_TIMEOUT);
    agent.wait_metric_eq("sonde_series", &[], 3.0, SETTLE_TIMEOUT);
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (i, netns) in namespaces.iter().enumerate() {
        let port = 7200 + i as u16;
        connect_and_close(netns, netns, SocketAddr::new(lo, port), 1);
        refused_connects(netns, SocketAddr::new(lo, port + 100), 1);
    }
    let pods = names.len() as f64;
    for (family, at_least) in [
        // A connect and an accept histogram of 8 series each per pod.
        ("sonde_tcp_connect_duration_seconds", 16.0 * pods),
        ("sonde_tcp_connect_failures_total", pods),
        // Sent and received.
        ("sonde_tcp_resets_total", 2.0 * pods),
        ("sonde_packet_drops_total", pods),
    ] {
        agent.wait_metric(DROPPED, &[("metric", family)], at_least, SETTLE_TIMEOUT);
    }
    let metrics = agent.metrics();
    let hist = sonde_tests::metric_value(
        &metrics,
        DROPPED,
        &[("metric", "sonde_tcp_connect_duration_seconds")],
    )
    .unwrap();
    assert_eq!(
        hist % 8.0,
        0.0,
        "a histogram's series are dropped together: {hist}"
    );
    // (Some of netstat's may be missing too, had other namespaces' events taken the room
    // first.)
    for name in names {
        let families = by_family(&pod_series(&metrics, name));
        assert!(
            families.keys().all(|f| f == "sonde_netstat_udp_total"),
            "{name}: {families:?}"
        );
    }
    assert_eq!(agent.metric("sonde_series", &[]), Some(3.0));
    drop(dir);
}

/// A pod that is gone keeps its series for `topology.goneRetention` (counts read after its
/// end still land on it), then they are removed from `/metrics`, counted in
/// `sonde_series_expired_total`, and the pods still there keep theirs.
#[test]
fn series_of_a_gone_pod_expire_after_the_retention() {
    const RETENTION: Duration = Duration::from_secs(4);
    let names = ["expire-gone", "expire-stays"];
    let (mut dir, namespaces) = NetnsDir::with_pods(&names, "exp");
    let agent = Agent::spawn_yaml(&format!(
        "node: {NODE}\nprobes:\n\
         \x20 packet_drop: {{enabled: true}}\n\
         \x20 tcp_retrans: {{enabled: false}}\n\
         \x20 tcp_reset: {{enabled: true}}\n\
         \x20 tcp_connect: {{enabled: true}}\n\
         \x20 io_latency: {{enabled: false}}\n\
         \x20 netstat: {{enabled: false}}\n\
         sinks:\n  stdout: {{enabled: true}}\n\
         topology:\n  source: standalone\n  netnsDir: {}\n  goneRetention: {}s\n",
        dir.path().display(),
        RETENTION.as_secs()
    ));
    agent.wait_ready(READY_TIMEOUT);
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (i, netns) in namespaces.iter().enumerate() {
        refused_connects(netns, SocketAddr::new(lo, 7300 + i as u16), 1);
    }
    let counted = |metrics: &str, pod: &str| {
        let families = by_family(&pod_series(metrics, pod));
        ["sonde_packet_drops_total", "sonde_tcp_resets_total"]
            .iter()
            .all(|f| families.contains_key(*f))
    };
    let before = poll_until(SETTLE_TIMEOUT, "both pods' drops and resets", || {
        let m = agent.metrics();
        names.iter().all(|n| counted(&m, n)).then_some(m)
    });
    let (gone, stays) = (pod_series(&before, names[0]), pod_series(&before, names[1]));

    dir.remove(names[0]);
    let removed = Instant::now();
    assert!(
        counted(&agent.metrics(), names[0]),
        "a gone pod's series stay for a while"
    );
    poll_until(
        RETENTION + SETTLE_TIMEOUT,
        "the gone pod's series to go",
        || {
            pod_series(&agent.metrics(), names[0])
                .is_empty()
                .then_some(())
        },
    );
    assert!(
        removed.elapsed() >= RETENTION,
        "removed {:?} after the pod went, before topology.goneRetention",
        removed.elapsed()
    );
    let after = agent.metrics();
    assert_eq!(pod_series(&after, names[1]), stays, "the pod still there");
    assert_eq!(
        sonde_tests::metric_value(&after, "sonde_series_expired_total", &[]),
        Some(gone.len() as f64),
        "every series of the gone pod, counted: {gone:?}"
    );
    drop(dir);
}
