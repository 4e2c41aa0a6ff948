//! flow: pods attached to a bridge through host-side veths (as a CNI attaches them), real
//! traffic between them, and the agent watching only this test's interfaces.
//!
//! - a TCP transfer of K bytes shows at least K (and well under 2K: each packet is counted
//!   once, though it crosses two watched interfaces) on the flow from the client pod to the
//!   server pod, and the replies on the reverse flow, IPv4 and IPv6, with the programs
//!   attached as TCX links and as filters on a clsact qdisc (`attach: clsact`), and from a
//!   pod whose host-side interface index is past the programs' array of watched interfaces;
//! - with `attach: clsact` beside a CNI's own filters (a clsact qdisc and counting filters
//!   before Sonde's, at Sonde's preferred priority and after it): they are kept, each still
//!   sees every packet (so Sonde's programs let packets on), the transfer is counted as
//!   without them, and stopping the agent deletes exactly Sonde's filters;
//! - Sonde's filters go when the agent stops, the probe is disabled or an interface no longer
//!   matches; a SIGKILLed agent's filters are replaced by the next agent's, not added to;
//! - an interface made after the agent started is attached, one deleted is detached, and a
//!   new `interfaces` list applies live;
//! - churn: client pods made and deleted one after another, faster than the agent reads the
//!   flow table, each taking the addresses of the pod three before it: every pod's datagrams
//!   are counted for it, exactly, never for the pod that had its address before or after;
//! - a table of 16 rows evicts when 64 flows pass, and the eviction counter says so;
//! - `/api/v1/flows` shows a kept-open TCP flow with its RTT from `tcp_rtt`, and a plugin
//!   reads the same table through `maps.flows` (the test plugin's `flows` mode).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::{
    assert_promtool_clean, auto_attach_mode, bulk_transfer, in_netns, only_probes_yaml, poll_until,
    qdisc_kinds, sonde_filters, tc_filters, try_poll_until, wasm_module, write_bundle, Agent,
    ForeignFilters, IpFamily, NodePod, NodePods, TempDir, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const BYTES: &str = "sonde_flow_bytes_total";
const PACKETS: &str = "sonde_flow_packets_total";

fn agent_yaml(patterns: &[String], table_size: u32) -> String {
    attach_yaml(patterns, table_size, Attach::Auto)
}

/// `probes.flow.attach` of a test: left to its default, or `clsact`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Attach {
    Auto,
    Clsact,
}

impl Attach {
    /// What `/api/v1/probes` says: `auto` is TCX where the kernel has it (the kernel matrix
    /// runs the `auto` tests on kernels without).
    fn mode(self) -> &'static str {
        match self {
            Attach::Auto => auto_attach_mode(),
            Attach::Clsact => "clsact",
        }
    }
}

fn attach_yaml(patterns: &[String], table_size: u32, attach: Attach) -> String {
    let list = patterns
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let attach = match attach {
        Attach::Auto => "",
        Attach::Clsact => "    attach: clsact\n",
    };
    only_probes_yaml(
        &format!(
            "  tcp_rtt: {{enabled: true, sampleInterval: 100ms}}\n  \
             flow:\n    enabled: true\n    interfaces: [{list}]\n    tableSize: {table_size}\n\
             {attach}"
        ),
        "",
    )
}

/// The agent's `/api/v1/probes` entry of `probe`, which must be running.
fn probe_status(agent: &Agent, probe: &str) -> Value {
    let (status, body) = agent.get("/api/v1/probes");
    assert_eq!(status, 200, "GET /api/v1/probes: {body}");
    let probes: Vec<Value> = serde_json::from_str(&body).expect("JSON probes");
    let p = probes
        .into_iter()
        .find(|p| p["name"] == probe)
        .unwrap_or_else(|| panic!("no {probe} probe in {body}"));
    assert_eq!(p["state"], "running", "{p}");
    p
}

/// The interfaces the agent says `flow` is attached to.
fn attached(agent: &Agent) -> Vec<String> {
    probe_status(agent, "flow")["interfaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn wait_attached(agent: &Agent, want: &[&str]) {
    let mut last = Vec::new();
    let ok = try_poll_until(SETTLE_TIMEOUT, || {
        last = attached(agent);
        let mut sorted: Vec<&str> = want.to_vec();
        sorted.sort();
        (last.iter().map(String::as_str).collect::<Vec<_>>() == sorted).then_some(())
    });
    assert!(ok.is_some(), "attached to {last:?}, wanted {want:?}");
}

fn pair_labels<'a>(src: &'a str, dst: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("src_pod", src),
        ("dst_pod", dst),
        ("src_namespace", ""),
        ("dst_namespace", ""),
        ("src_type", "pod"),
        ("dst_type", "pod"),
        ("protocol", "tcp"),
        ("node", "sonde-test-node"),
    ]
}

fn transfer_is_counted_once(family: IpFamily, attach: Attach) {
    let node = NodePods::new(2);
    let agent = Agent::spawn_yaml(&attach_yaml(&[node.interface_pattern()], 65536, attach));
    agent.wait_ready(READY_TIMEOUT);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    wait_attached(&agent, &[&a.host_if, &b.host_if]);
    assert_eq!(probe_status(&agent, "flow")["attach"], attach.mode());
    // A filter on each hook of each interface (read with `tc`, which the kernel matrix's
    // guest, running the `auto` tests, does not have).
    if attach == Attach::Clsact {
        let pid = agent.pid();
        let ours = [
            format!("sonde-flow-egress-{pid}"),
            format!("sonde-flow-ingress-{pid}"),
        ];
        assert_eq!(sonde_filters(&a.host_if), ours);
        assert_eq!(sonde_filters(&b.host_if), ours);
    }

    transfer_and_count(&agent, a, b, family, 5201);
}

/// A node's interface indexes grow with every veth it makes: past 65535 the programs find
/// watched interfaces in a hash rather than their array. A transfer from a pod whose
/// host-side veth is there is still counted once (the egress program finds that it came in
/// through a watched interface).
#[test]
fn a_transfer_from_an_interface_index_past_the_array_is_counted_once() {
    let mut node = NodePods::new(1);
    // A free index above the array's 65536, different for each run of the suite.
    let ifindex = 65536 + 1 + std::process::id() % 1_000_000;
    let high = node.add_pod_with_ifindex(ifindex);
    let agent = Agent::spawn_yaml(&attach_yaml(
        &[node.interface_pattern()],
        65536,
        Attach::Auto,
    ));
    agent.wait_ready(READY_TIMEOUT);
    let (a, b) = (&node.pods[high], &node.pods[0]);
    assert_eq!(
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", a.host_if))
            .expect("the veth's index")
            .trim(),
        ifindex.to_string()
    );
    wait_attached(&agent, &[&a.host_if, &b.host_if]);
    transfer_and_count(&agent, a, b, IpFamily::V4, 5206);
}

/// A TCP transfer of 4 MiB from `a` to `b`: counted once, on the flow a to b, with b's
/// replies on the reverse flow. Returns the packets counted from a to b.
fn transfer_and_count(agent: &Agent, a: &NodePod, b: &NodePod, family: IpFamily, port: u16) -> f64 {
    const K: usize = 4 << 20;
    bulk_transfer(&a.netns, &b.netns, b.ip(family), port, K);
    let forward = pair_labels(a.name(), b.name());
    let reverse = pair_labels(b.name(), a.name());
    let sent = agent.wait_metric(BYTES, &forward, K as f64, SETTLE_TIMEOUT);
    // Replies: the ACKs of the transfer, from b to a.
    agent.wait_metric(PACKETS, &reverse, 1.0, SETTLE_TIMEOUT);
    // Headers add a few per cent; a packet counted at both interfaces would double it.
    assert!(
        sent < K as f64 * 1.2,
        "{sent} bytes counted for a {K}-byte transfer: counted more than once?"
    );
    let packets = agent
        .metric(PACKETS, &forward)
        .expect("packets of the flow");
    // At most 64 KiB per segment... and at least K / 65536 segments.
    assert!(packets >= (K / 65536) as f64, "{packets} packets");
    assert_promtool_clean(&agent.metrics());
    packets
}

#[test]
fn ipv4_transfer_is_counted_once_with_pod_labels() {
    transfer_is_counted_once(IpFamily::V4, Attach::Auto);
}

#[test]
fn ipv6_transfer_is_counted_once_with_pod_labels() {
    transfer_is_counted_once(IpFamily::V6, Attach::Auto);
}

#[test]
fn ipv4_transfer_is_counted_once_through_clsact_filters() {
    transfer_is_counted_once(IpFamily::V4, Attach::Clsact);
}

#[test]
fn ipv6_transfer_is_counted_once_through_clsact_filters() {
    transfer_is_counted_once(IpFamily::V6, Attach::Clsact);
}

/// Where `flow` puts its filter when the priority is free (`dns` takes the next).
const FLOW_PRIORITY: u16 = 20000;

/// A CNI's filters on pod a's host-side interface before the agent starts: at priority 1 and
/// at Sonde's own (both letting packets on), and after Sonde's (ending classification, as a
/// CNI's accept does), on ingress (a's packets, counted there by Sonde) and egress (b's
/// replies, which Sonde's egress program sees too).
#[test]
fn clsact_filters_leave_a_cni_filters_alone() {
    let node = NodePods::new(2);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let cni = ForeignFilters::new(&a.host_if, &node.other_interface("m"));
    let before = [(1, "continue"), (FLOW_PRIORITY, "continue")];
    let after = (49152, "pass");
    for hook in ["ingress", "egress"] {
        for (pref, control) in before.iter().chain([&after]) {
            cni.add(hook, *pref, control);
        }
    }
    let agent = Agent::spawn_yaml(&attach_yaml(
        &[node.interface_pattern()],
        65536,
        Attach::Clsact,
    ));
    agent.wait_ready(READY_TIMEOUT);
    wait_attached(&agent, &[&a.host_if, &b.host_if]);

    // Sonde's filter took the next free priority; the CNI's are where they were.
    let pid = agent.pid();
    let layout = |hook: &str| -> Vec<(u16, String)> {
        tc_filters(&a.host_if, hook)
            .into_iter()
            .map(|f| (f.pref, f.name.unwrap_or(f.kind)))
            .collect()
    };
    for hook in ["ingress", "egress"] {
        assert_eq!(
            layout(hook),
            [
                (1, "bpf".to_string()),
                (FLOW_PRIORITY, "bpf".to_string()),
                (FLOW_PRIORITY + 1, format!("sonde-flow-{hook}-{pid}")),
                (49152, "bpf".to_string()),
            ],
            "{hook}"
        );
    }

    // What each filter counted before the transfer: a packet the pod sent while the filters
    // were being added one by one (IPv6 router solicitations and MLD reports go out at any
    // time) was counted by those already there. Read until two reads agree, so that no
    // packet passed the filters while they were read.
    let counts = |hook: &str| -> Vec<u64> {
        [1, FLOW_PRIORITY, after.0]
            .iter()
            .map(|p| cni.packets(hook, *p).unwrap_or(0))
            .collect()
    };
    let settled = |hook: &str| {
        let mut last = counts(hook);
        poll_until(
            SETTLE_TIMEOUT,
            "two equal reads of the CNI's filters",
            || {
                let now = counts(hook);
                let same = now == last;
                last = now;
                same.then(|| last.clone())
            },
        )
    };
    let base = ["ingress", "egress"].map(settled);

    let counted = transfer_and_count(&agent, a, b, IpFamily::V4, 5204);
    // Every filter of a hook saw the same packets: the one after Sonde's too, so Sonde's
    // programs let each packet on (TC_ACT_UNSPEC). Counts settle once the last ACK is by.
    for (hook, base) in ["ingress", "egress"].into_iter().zip(&base) {
        let mut last = Vec::new();
        let same = try_poll_until(SETTLE_TIMEOUT, || {
            last = counts(hook)
                .iter()
                .zip(base)
                .map(|(n, b)| n - b)
                .collect::<Vec<u64>>();
            (last.iter().all(|n| *n == last[0])).then_some(())
        });
        assert!(same.is_some(), "{hook}: the CNI's filters counted {last:?}");
        // Ingress carried a's segments, which Sonde counted; egress b's replies.
        assert!(last[0] > 0, "{hook}: {last:?}");
        if hook == "ingress" {
            assert!(
                last[0] as f64 >= counted,
                "{last:?} < {counted} packets counted"
            );
        }
    }

    // Stopped: exactly Sonde's filters are gone, the CNI's and their qdisc stay.
    drop(agent);
    for hook in ["ingress", "egress"] {
        assert_eq!(
            layout(hook),
            [
                (1, "bpf".to_string()),
                (FLOW_PRIORITY, "bpf".to_string()),
                (49152, "bpf".to_string()),
            ],
            "{hook} after the agent stopped"
        );
    }
    assert!(qdisc_kinds(&a.host_if).contains(&"clsact".to_string()));
    assert_eq!(sonde_filters(&b.host_if), Vec::<String>::new());
}

/// Waits until Sonde's filters on `dev` are `want` (sorted names).
#[track_caller]
fn wait_filters(dev: &str, want: &[String]) {
    let mut last = Vec::new();
    let reached = try_poll_until(SETTLE_TIMEOUT, || {
        last = sonde_filters(dev);
        (last == want).then_some(())
    });
    assert!(
        reached.is_some(),
        "{dev}: Sonde's filters are {last:?}, wanted {want:?}"
    );
}

fn both_probes_yaml(pattern: &str, flow: bool, dns_pattern: &str) -> String {
    only_probes_yaml(
        &format!(
            "  flow:\n    enabled: {flow}\n    interfaces: [\"{pattern}\"]\n    attach: clsact\n  \
             dns:\n    enabled: true\n    interfaces: [\"{dns_pattern}\"]\n    attach: clsact\n"
        ),
        "",
    )
}

/// Sonde's filters go with what made them: the probe disabled (flow), the pattern no longer
/// matching (dns), the agent stopped.
#[test]
fn clsact_filters_go_with_the_probe_the_pattern_and_the_agent() {
    let node = NodePods::new(2);
    let pattern = node.interface_pattern();
    let agent = Agent::spawn_yaml(&both_probes_yaml(&pattern, true, &pattern));
    agent.wait_ready(READY_TIMEOUT);
    let pid = agent.pid();
    let names = |probes: &[&str]| -> Vec<String> {
        let mut n: Vec<String> = probes
            .iter()
            .flat_map(|p| ["ingress", "egress"].map(|h| format!("sonde-{p}-{h}-{pid}")))
            .collect();
        n.sort();
        n
    };
    for pod in &node.pods {
        wait_filters(&pod.host_if, &names(&["flow", "dns"]));
    }
    assert_eq!(probe_status(&agent, "dns")["attach"], "clsact");

    // flow disabled: its filters go, dns's stay.
    agent.rewrite_config(&both_probes_yaml(&pattern, false, &pattern));
    for pod in &node.pods {
        wait_filters(&pod.host_if, &names(&["dns"]));
    }
    // dns's pattern no longer matches: its filters go too.
    agent.rewrite_config(&both_probes_yaml(&pattern, false, "sonde-none*"));
    for pod in &node.pods {
        wait_filters(&pod.host_if, &[]);
    }
    // Both back, then the agent stops.
    agent.rewrite_config(&both_probes_yaml(&pattern, true, &pattern));
    for pod in &node.pods {
        wait_filters(&pod.host_if, &names(&["flow", "dns"]));
    }
    drop(agent);
    for pod in &node.pods {
        assert_eq!(
            sonde_filters(&pod.host_if),
            Vec::<String>::new(),
            "{}",
            pod.host_if
        );
    }
}

/// A SIGKILLed agent cannot delete its filters; the next agent replaces them (same priority,
/// its own name) rather than adding its own beside them, and counts through them.
#[test]
fn a_killed_agents_filters_are_replaced_not_duplicated() {
    let node = NodePods::new(2);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let yaml = attach_yaml(&[node.interface_pattern()], 65536, Attach::Clsact);
    let filters_of = |pid: u32| {
        vec![
            (FLOW_PRIORITY, format!("sonde-flow-egress-{pid}")),
            (FLOW_PRIORITY, format!("sonde-flow-ingress-{pid}")),
        ]
    };
    let listed = |dev: &str| {
        let mut l: Vec<(u16, String)> = ["ingress", "egress"]
            .iter()
            .flat_map(|hook| tc_filters(dev, hook))
            .filter_map(|f| Some((f.pref, f.name?)))
            .collect();
        l.sort_by(|x, y| x.1.cmp(&y.1));
        l
    };

    let killed = Agent::spawn_yaml(&yaml);
    killed.wait_ready(READY_TIMEOUT);
    wait_attached(&killed, &[&a.host_if, &b.host_if]);
    let old = killed.pid();
    killed.signal(libc::SIGKILL);
    drop(killed);
    for pod in [a, b] {
        assert_eq!(
            listed(&pod.host_if),
            filters_of(old),
            "left by the killed agent"
        );
    }

    let agent = Agent::spawn_yaml(&yaml);
    agent.wait_ready(READY_TIMEOUT);
    wait_attached(&agent, &[&a.host_if, &b.host_if]);
    for pod in [a, b] {
        assert_eq!(
            listed(&pod.host_if),
            filters_of(agent.pid()),
            "{}",
            pod.host_if
        );
    }
    transfer_and_count(&agent, a, b, IpFamily::V4, 5205);
    drop(agent);
    for pod in [a, b] {
        assert_eq!(listed(&pod.host_if), [], "{}", pod.host_if);
    }
}

#[test]
fn interfaces_are_attached_as_they_come_and_detached_as_they_go() {
    let mut node = NodePods::new(1);
    let pattern = node.interface_pattern();
    let agent = Agent::spawn_yaml(&agent_yaml(std::slice::from_ref(&pattern), 65536));
    agent.wait_ready(READY_TIMEOUT);
    let first = node.pods[0].host_if.clone();
    wait_attached(&agent, &[&first]);

    // Made after the agent started: attached, and its packets counted.
    let i = node.add_pod();
    let second = node.pods[i].host_if.clone();
    wait_attached(&agent, &[&first, &second]);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    bulk_transfer(&a.netns, &b.netns, b.ip(IpFamily::V4), 5202, 64 << 10);
    agent.wait_metric(
        BYTES,
        &pair_labels(a.name(), b.name()),
        (64 << 10) as f64,
        SETTLE_TIMEOUT,
    );

    // Deleted: detached.
    let removed = node.remove_pod(i);
    assert_eq!(removed, second);
    wait_attached(&agent, &[&first]);

    // A new list applies live: nothing of ours matches it.
    agent.rewrite_config(&agent_yaml(&["sonde-none*".to_string()], 65536));
    wait_attached(&agent, &[]);
    agent.rewrite_config(&agent_yaml(&[pattern], 65536));
    wait_attached(&agent, &[&first]);
}

#[test]
fn a_tiny_table_evicts_and_counts_it() {
    const FLOWS: u16 = 64;
    let node = NodePods::new(2);
    let agent = Agent::spawn_yaml(&agent_yaml(&[node.interface_pattern()], 16));
    agent.wait_ready(READY_TIMEOUT);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    wait_attached(&agent, &[&a.host_if, &b.host_if]);
    let evictions = || {
        agent
            .metric("sonde_flow_table_evictions_total", &[])
            .unwrap_or(0.0)
    };
    assert_eq!(evictions(), 0.0, "evictions before any traffic");

    let dst = SocketAddr::new(b.ip(IpFamily::V4), 5300);
    in_netns(a.name(), || {
        for i in 0..FLOWS {
            // One flow per source port.
            let s =
                UdpSocket::bind(SocketAddr::new(a.ip(IpFamily::V4), 20000 + i)).expect("bind in a");
            s.send_to(b"flow", dst).expect("send to b");
        }
    });
    // 64 rows made in a table of 16: at least 48 evicted (the pods' own IPv6 chatter, if
    // any, only adds rows).
    let want = (FLOWS - 16) as f64;
    let mut seen = 0.0;
    let reached = try_poll_until(SETTLE_TIMEOUT, || {
        seen = evictions();
        (seen >= want).then_some(())
    });
    assert!(
        reached.is_some(),
        "{seen} evictions, wanted at least {want}"
    );
    let entries = agent
        .metric("sonde_flow_table_entries", &[])
        .expect("table entries");
    assert!(entries <= 16.0, "{entries} rows in a 16-row table");
    // What a row counted before the agent read it stays in the series; what it counted
    // between the last read and its eviction is lost (documented), never more than was sent.
    let udp = [
        ("src_pod", a.name()),
        ("dst_pod", b.name()),
        ("protocol", "udp"),
    ];
    let counted = agent.metric(PACKETS, &udp).unwrap_or(0.0);
    assert!(
        counted <= FLOWS as f64,
        "{counted} packets for {FLOWS} sent"
    );
}

fn flows(agent: &Agent) -> Vec<Value> {
    let (status, body) = agent.get("/api/v1/flows");
    assert_eq!(status, 200, "GET /api/v1/flows: {body}");
    serde_json::from_str(&body).expect("a JSON array of flows")
}

#[test]
fn api_and_plugins_show_the_flow_with_its_rtt() {
    let node = NodePods::new(2);
    let plugins = TempDir::new();
    write_bundle(
        &plugins.path().join("flows"),
        "flow-reader",
        &wasm_module("hostile-plugin"),
        "  subscribe: []\n  config: {mode: flows}\n  capabilities: [metrics, maps]\n",
    );
    let yaml = format!(
        "{}plugins:\n  dirs: [{}]\n",
        agent_yaml(&[node.interface_pattern()], 65536),
        plugins.path().display()
    );
    let agent = Agent::spawn_yaml(&yaml);
    agent.wait_ready(READY_TIMEOUT);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    wait_attached(&agent, &[&a.host_if, &b.host_if]);

    let dst = SocketAddr::new(b.ip(IpFamily::V4), 5203);
    let listener = in_netns(b.name(), || TcpListener::bind(dst).expect("listen in b"));
    let mut client = in_netns(a.name(), || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(10)).expect("connect to b")
    });
    let (mut server, _) = listener.accept().expect("accept in b");
    let port = client.local_addr().unwrap().port();
    let mut byte = [0u8; 1];
    for _ in 0..20 {
        client.write_all(b"x").unwrap();
        server.read_exact(&mut byte).unwrap();
        server.write_all(b"y").unwrap();
        client.read_exact(&mut byte).unwrap();
    }
    let row = poll_until(SETTLE_TIMEOUT, "the flow with an RTT", || {
        flows(&agent).into_iter().find(|f| {
            f["src_pod"] == a.name()
                && f["dst_pod"] == b.name()
                && f["sport"] == port
                && f["dport"] == 5203
                && f["srtt_seconds"].is_f64()
        })
    });
    assert_eq!(row["protocol"], "tcp", "{row}");
    assert_eq!(row["src_type"], "pod", "{row}");
    assert_eq!(row["interface"], a.host_if.as_str(), "{row}");
    assert_eq!(row["saddr"], a.ipv4.to_string(), "{row}");
    assert!(row["packets"].as_u64().unwrap() >= 20, "{row}");
    let srtt = row["srtt_seconds"].as_f64().unwrap();
    assert!(srtt > 0.0 && srtt < 1.0, "{row}");

    // The plugin's view of the same table, read on its ticks: the bytes of the pair's rows
    // (here one connection) and its RTT.
    let pair = [("src_pod", a.name()), ("dst_pod", b.name())];
    let bytes = [
        ("src_pod", a.name()),
        ("dst_pod", b.name()),
        ("protocol", "tcp"),
    ];
    agent.wait_metric("sonde_test_flow_bytes", &bytes, 20.0, SETTLE_TIMEOUT);
    let rtt = agent.wait_metric("sonde_test_flow_srtt_seconds", &pair, 1e-9, SETTLE_TIMEOUT);
    assert!(rtt < 1.0, "plugin saw an RTT of {rtt} s");
}

/// Client pods made and deleted one after another (each lives a few tens of milliseconds,
/// the agent reads the flow table every second), their addresses reused every third pod as
/// a CNI's pool hands them out again. Each sends a known number of datagrams to a server pod
/// and is gone before the agent reads them: the counts are named by who had the address when
/// they were sent.
#[test]
fn churning_pods_keep_their_flow_counts() {
    const CLIENTS: usize = 24;
    const HOSTS: [u8; 3] = [200, 201, 202];
    const PORT: u16 = 9100;
    let mut node = NodePods::new(1);
    let agent = Agent::spawn_yaml(&agent_yaml(&[node.interface_pattern()], 65536));
    agent.wait_ready(READY_TIMEOUT);
    let (server, server_if, server_ip) = {
        let s = &node.pods[0];
        (s.name().to_string(), s.host_if.clone(), s.ipv4)
    };
    wait_attached(&agent, &[&server_if]);
    // Bound, so the server answers no datagram with a port unreachable.
    let _sink = in_netns(&server, || {
        UdpSocket::bind((server_ip, PORT)).expect("bind in the server")
    });

    let mut want: Vec<(String, f64)> = Vec::new();
    for i in 0..CLIENTS {
        let at = node.add_pod_at(HOSTS[i % HOSTS.len()]);
        let (name, host_if, ip) = {
            let c = &node.pods[at];
            (c.name().to_string(), c.host_if.clone(), c.ipv4)
        };
        let on = try_poll_until(SETTLE_TIMEOUT, || {
            attached(&agent).contains(&host_if).then_some(())
        });
        assert!(on.is_some(), "flow never attached to {host_if}");
        let n = 1 + i % 4;
        in_netns(&name, || {
            let s = UdpSocket::bind((ip, 40000 + i as u16)).expect("bind in the client");
            for _ in 0..n {
                s.send_to(&[0u8; 100], (server_ip, PORT)).expect("send");
            }
        });
        node.remove_pod(at);
        want.push((name, n as f64));
    }

    let counts = |text: &str| -> std::collections::BTreeMap<String, f64> {
        let mut out = std::collections::BTreeMap::new();
        for (labels, value) in sonde_tests::metric_series(text, PACKETS) {
            let get = |k: &str| {
                labels
                    .iter()
                    .find(|(lk, _)| lk == k)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default()
            };
            if get("dst_pod") == server && get("protocol") == "udp" {
                let src = format!("{}/{}", get("src_type"), get("src_pod"));
                *out.entry(src).or_insert(0.0) += value;
            }
        }
        out
    };
    let expected: std::collections::BTreeMap<String, f64> = want
        .iter()
        .map(|(pod, n)| (format!("pod/{pod}"), *n))
        .collect();
    let mut last = Default::default();
    let ok = try_poll_until(SETTLE_TIMEOUT, || {
        last = counts(&agent.metrics());
        (last == expected).then_some(())
    });
    assert!(
        ok.is_some(),
        "UDP packets to the server by source: {last:#?}\nwanted: {expected:#?}"
    );
}
