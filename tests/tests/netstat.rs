//! The `netstat` probe: the kernel's own counters of each pod namespace, exported with the
//! pod's labels. Each test makes the condition happen between two pods and checks the agent's
//! value against the namespace's own /proc/net, read inside the namespace as the oracle.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use sonde_tests::{
    bulk_transfer, in_netns, metric_series, poll_until, run_command, send_udp, try_poll_until,
    Agent, IpFamily, Netns, PodPair, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const NODE: &str = "sonde-test-node";

/// Only netstat on, read every 200 ms, every counter of the pods (the curated set and the
/// series budget have their tests in series_budget.rs).
fn config(netstat_enabled: bool) -> String {
    format!(
        "node: {NODE}\nprobes:\n\
         \x20 packet_drop: {{ enabled: false }}\n\
         \x20 tcp_retrans: {{ enabled: false }}\n\
         \x20 tcp_reset: {{ enabled: false }}\n\
         \x20 tcp_connect: {{ enabled: false }}\n\
         \x20 netstat:\n    enabled: {netstat_enabled}\n    interval: 200ms\n    counters: all\n\
         sinks:\n  stdout: {{ enabled: true }}\n\
         topology:\n  netnsDir: /run/netns\n"
    )
}

/// `section field` of the namespace's own /proc/net/`file` (snmp or netstat), read inside it.
fn oracle(netns: &Netns, file: &str, section: &str, field: &str) -> u64 {
    let path = format!("/proc/thread-self/net/{file}");
    let text = in_netns(netns.name(), || {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    });
    let prefix = format!("{section}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    let names = lines[0].split_whitespace().skip(1);
    let values = lines[1].split_whitespace().skip(1);
    names
        .zip(values)
        .find(|(n, _)| *n == field)
        .map(|(_, v)| v.parse().expect("a number"))
        .unwrap_or_else(|| panic!("{section} {field} not in {file}:\n{text}"))
}

fn pod(netns: &Netns) -> [(&'static str, &str); 3] {
    [("node", NODE), ("namespace", ""), ("pod", netns.name())]
}

fn with<'a>(
    base: [(&'a str, &'a str); 3],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut v = base.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Waits until the agent exports exactly what the namespace's /proc says: the oracle read
/// just before and just after the scrape agree with the scrape (a counter still settling,
/// such as a SYN-ACK retransmitted to a closed client, is waited out).
#[track_caller]
fn assert_matches_oracle(
    agent: &Agent,
    netns: &Netns,
    metric: &str,
    counter: &str,
    (file, section): (&str, &str),
) -> u64 {
    let labels = with(pod(netns), &[("counter", counter)]);
    let mut last = None;
    try_poll_until(SETTLE_TIMEOUT, || {
        let before = oracle(netns, file, section, counter);
        let seen = agent.metric(metric, &labels);
        let after = oracle(netns, file, section, counter);
        last = Some((before, seen, after));
        (before == after && seen == Some(before as f64)).then_some(before)
    })
    .unwrap_or_else(|| {
        panic!(
            "{metric}{{counter={counter:?}}} of {} never matched its /proc/net/{file}: \
             last (proc, agent, proc) {last:?}",
            netns.name()
        )
    })
}

/// A listener with a backlog of 1 that never accepts, flooded with concurrent connects,
/// raises ListenOverflows and ListenDrops for its pod only, by what its /proc says; UDP to a
/// closed port raises Udp NoPorts by exactly the datagrams sent; the interface counters grow
/// by at least the bytes sent.
#[test]
fn counters_of_each_pod_match_its_own_proc() {
    const CONNECTS: usize = 20;
    const DATAGRAMS: usize = 37;
    const BYTES: usize = 1 << 20;
    let pods = PodPair::new();
    let agent = Agent::spawn_yaml(&config(true));
    agent.wait_ready(READY_TIMEOUT);
    let b_ip = pods.b_end.ip(IpFamily::V4);

    // Listen overflows: 2 connections fill the accept queue of a backlog-1 listener, the
    // others' SYNs (and their retransmits, until the clients give up) overflow it.
    let dst = SocketAddr::new(b_ip, 7001);
    let listener = in_netns(pods.b.name(), || {
        let l = TcpListener::bind(dst).expect("listen in pod b");
        // SAFETY: plain syscall on a valid listening socket: sets its backlog to 1.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 1) }, 0);
        l
    });
    let clients = in_netns(pods.a.name(), || {
        (0..CONNECTS)
            .map(|_| nonblocking_connect(dst))
            .collect::<Vec<_>>()
    });
    poll_until(SETTLE_TIMEOUT, "ListenOverflows in pod b", || {
        (oracle(&pods.b, "netstat", "TcpExt", "ListenOverflows") >= (CONNECTS - 2) as u64)
            .then_some(())
    });
    // No client, no more SYN retransmits: the counts stop moving.
    drop(clients);
    let overflows = assert_matches_oracle(
        &agent,
        &pods.b,
        "sonde_netstat_tcp_ext_total",
        "ListenOverflows",
        ("netstat", "TcpExt"),
    );
    assert!(overflows >= (CONNECTS - 2) as u64, "{overflows}");
    let drops = assert_matches_oracle(
        &agent,
        &pods.b,
        "sonde_netstat_tcp_ext_total",
        "ListenDrops",
        ("netstat", "TcpExt"),
    );
    assert!(
        drops >= overflows,
        "ListenDrops {drops} < ListenOverflows {overflows}"
    );
    eprintln!("pod b after {CONNECTS} connects: ListenOverflows {overflows}, ListenDrops {drops}");
    // Pod a listens nowhere.
    assert_eq!(
        assert_matches_oracle(
            &agent,
            &pods.a,
            "sonde_netstat_tcp_ext_total",
            "ListenOverflows",
            ("netstat", "TcpExt"),
        ),
        0
    );
    drop(listener);

    // UDP to a port nobody listens on in pod b, through a pfifo qdisc on pod a's eth0.
    run_command(&format!(
        "ip netns exec {} tc qdisc add dev eth0 root pfifo limit 1000",
        pods.a.name()
    ));
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(b_ip, 7002),
        DATAGRAMS,
    );
    let labels = with(pod(&pods.b), &[("counter", "NoPorts")]);
    agent.wait_metric_eq(
        "sonde_netstat_udp_total",
        &labels,
        DATAGRAMS as f64,
        SETTLE_TIMEOUT,
    );
    assert_eq!(oracle(&pods.b, "snmp", "Udp", "NoPorts"), DATAGRAMS as u64);
    let labels = with(pod(&pods.a), &[("counter", "NoPorts")]);
    assert_eq!(agent.metric("sonde_netstat_udp_total", &labels), Some(0.0));
    // The same over IPv6, counted apart.
    send_udp(
        &pods.a,
        pods.a_end.ip(IpFamily::V6),
        SocketAddr::new(pods.b_end.ip(IpFamily::V6), 7002),
        DATAGRAMS / 2,
    );
    let labels = with(pod(&pods.b), &[("counter", "NoPorts")]);
    agent.wait_metric_eq(
        "sonde_netstat_udp6_total",
        &labels,
        (DATAGRAMS / 2) as f64,
        SETTLE_TIMEOUT,
    );
    assert_eq!(
        agent.metric("sonde_netstat_udp_total", &labels),
        Some(DATAGRAMS as f64)
    );
    // The qdisc counted what `tc -s qdisc` says, at least the datagrams.
    let pfifo = with(
        pod(&pods.a),
        &[("device", "eth0"), ("kind", "pfifo"), ("parent", "root")],
    );
    let mut last = None;
    let packets = try_poll_until(SETTLE_TIMEOUT, || {
        let expected = tc_packets(&pods.a, "eth0");
        let seen = agent.metric("sonde_netstat_qdisc_packets_total", &pfifo);
        last = Some((seen, expected));
        (seen == Some(expected as f64)).then_some(expected)
    })
    .unwrap_or_else(|| panic!("qdisc packets (agent, tc) last {last:?}"));
    assert!(packets >= DATAGRAMS as u64, "{packets}");

    // Bytes through the pods' veth ends, at least the payload.
    bulk_transfer(&pods.a, &pods.b, b_ip, 7003, BYTES);
    let eth0 = [("device", "eth0")];
    agent.wait_metric(
        "sonde_netstat_dev_receive_bytes_total",
        &with(pod(&pods.b), &eth0),
        BYTES as f64,
        SETTLE_TIMEOUT,
    );
    agent.wait_metric(
        "sonde_netstat_dev_transmit_bytes_total",
        &with(pod(&pods.a), &eth0),
        BYTES as f64,
        SETTLE_TIMEOUT,
    );
    agent.wait_metric(
        "sonde_netstat_tcp_total",
        &with(pod(&pods.b), &[("counter", "PassiveOpens")]),
        1.0,
        SETTLE_TIMEOUT,
    );

    // Qdisc statistics of the veth (noqueue unless someone set one) and sockets.
    let metrics = agent.metrics();
    let qdiscs = metric_series(&metrics, "sonde_netstat_qdisc_packets_total");
    assert!(
        qdiscs.iter().any(|(labels, _)| {
            labels.contains(&("pod".into(), pods.b.name().into()))
                && labels.contains(&("device".into(), "eth0".into()))
                && labels.iter().any(|(k, v)| k == "kind" && !v.is_empty())
        }),
        "no qdisc of pod b's eth0: {qdiscs:?}"
    );
    assert!(
        metric_series(&metrics, "sonde_netstat_sockstat_sockets")
            .iter()
            .any(|(labels, _)| labels.contains(&("pod".into(), pods.b.name().into()))),
        "no sockstat for pod b"
    );
    // Conntrack statistics exist wherever the kernel has conntrack.
    if std::path::Path::new("/proc/net/stat/nf_conntrack").exists() {
        let limit = agent.metric("sonde_netstat_conntrack_entries_limit", &pod(&pods.b));
        assert!(
            limit.is_some_and(|v| v > 0.0),
            "conntrack limit of pod b: {limit:?}"
        );
    } else {
        eprintln!("nf_conntrack not loaded here: no conntrack series expected");
    }
    // Softnet is per CPU and not per namespace: host series only.
    let softnet = metric_series(&metrics, "sonde_netstat_softnet_processed_total");
    assert!(!softnet.is_empty(), "no softnet series");
    assert!(
        softnet
            .iter()
            .all(|(labels, _)| labels.contains(&("pod".into(), String::new()))),
        "{softnet:?}"
    );
}

/// Packets through the root qdisc of `device` in `netns`, as `tc -s -j qdisc` reports them.
fn tc_packets(netns: &Netns, device: &str) -> u64 {
    let out = run_command(&format!(
        "ip netns exec {} tc -s -j qdisc show dev {device} root",
        netns.name()
    ));
    let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
    qdiscs[0]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no packets in {out}"))
}

/// A non-blocking connect started in the calling thread's namespace.
fn nonblocking_connect(dst: SocketAddr) -> OwnedFd {
    let IpAddr::V4(ip) = dst.ip() else {
        panic!("IPv4 only")
    };
    // SAFETY: plain syscalls; the fd is owned at once and the address outlives connect.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: dst.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        assert!(
            r == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect to {dst}: {err}"
        );
        fd
    }
}

/// The probe follows the config while running, forgets namespaces that are gone, and does
/// not keep file descriptors of the namespaces it entered.
#[test]
fn reconfigures_forgets_gone_namespaces_and_leaks_no_fds() {
    let agent = Agent::spawn_yaml(&config(true));
    agent.wait_ready(READY_TIMEOUT);
    let pod_series = |name: &str| {
        metric_series(&agent.metrics(), "sonde_netstat_tcp_ext_total")
            .into_iter()
            .filter(|(labels, _)| labels.contains(&("pod".into(), name.into())))
            .count()
    };
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
            .expect("list the agent's fds")
            .count()
    };

    let gone = Netns::new("gone");
    let name = gone.name().to_string();
    poll_until(SETTLE_TIMEOUT, "the new namespace's series", || {
        (pod_series(&name) > 0).then_some(())
    });
    let fds_before = fds();
    // Namespaces made and deleted while rounds (5 per second) go in and out of them: some
    // vanish between the topology's view and the read, or during it.
    let churn = std::time::Instant::now();
    while churn.elapsed() < Duration::from_secs(2) {
        drop(Netns::new("churn"));
    }
    // A round after the churn has none of them; then the fds are counted again.
    poll_until(
        SETTLE_TIMEOUT,
        "the churned namespaces' series to go",
        || (!agent.metrics().contains("-churn\"")).then_some(()),
    );
    let fds_after = fds();
    assert!(
        fds_after <= fds_before + 2,
        "the agent's fds grew from {fds_before} to {fds_after} while reading namespaces"
    );
    drop(gone);
    poll_until(SETTLE_TIMEOUT, "the gone namespace's series to go", || {
        (pod_series(&name) == 0).then_some(())
    });
    let status = |state: &str| {
        let (_, body) = agent.get("/api/v1/probes");
        let probes: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let netstat = probes
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "netstat")
            .cloned()
            .unwrap_or_else(|| panic!("netstat not in {body}"));
        (netstat["state"] == state).then_some(netstat)
    };
    let running = poll_until(SETTLE_TIMEOUT, "netstat running", || status("running"));
    assert!(
        running["hooks"][0].as_str().unwrap().starts_with("procfs:"),
        "{running}"
    );
    agent.wait_metric_eq(
        "sonde_probe_up",
        &[("probe", "netstat")],
        1.0,
        SETTLE_TIMEOUT,
    );

    // Off while running: the series go, the probe says disabled; on again: they are back.
    agent.rewrite_config(&config(false));
    poll_until(SETTLE_TIMEOUT, "netstat disabled", || status("disabled"));
    agent.wait_metric_eq(
        "sonde_probe_up",
        &[("probe", "netstat")],
        0.0,
        SETTLE_TIMEOUT,
    );
    assert_eq!(pod_series(""), 0, "host series remain while disabled");
    agent.rewrite_config(&config(true));
    poll_until(SETTLE_TIMEOUT, "netstat running again", || {
        status("running")
    });
    poll_until(SETTLE_TIMEOUT, "the host's series again", || {
        (pod_series("") > 0).then_some(())
    });
}

/// The agent with the DaemonSet's capabilities and no CAP_SYS_ADMIN (setpriv's bounding set):
/// a pod with a process is read through its `/proc/<pid>/net` and counts exactly as before;
/// its qdiscs (read only from inside) and a pod without any process are left out, said once
/// in the log; `sonde probes` says what each probe needs that is missing.
#[test]
fn without_sys_admin_pods_are_read_through_their_processes() {
    const CONNECTS: usize = 7;
    let pods = PodPair::new();
    let _resident = pods.a.resident();
    let dir = sonde_tests::TempDir::new();
    let config = dir.write("sonde.yaml", &config(true));
    let addr = sonde_tests::free_local_addr();
    let caps = "-all,+bpf,+perfmon,+net_admin,+sys_ptrace,+syslog";
    let argv: Vec<String> = [
        "setpriv",
        &format!("--bounding-set={caps}"),
        "--inh-caps=-all",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        sonde_tests::sonde_bin().display().to_string(),
        "run".into(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        addr.to_string(),
    ])
    .collect();
    let agent = Agent::spawn_argv(&argv, addr, config);
    agent.wait_ready(READY_TIMEOUT);

    let closed = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 7399);
    sonde_tests::refused_connects(&pods.a, closed, CONNECTS);
    let resets = with(pod(&pods.a), &[("counter", "OutRsts")]);
    agent.wait_metric_eq(
        "sonde_netstat_tcp_total",
        &resets,
        oracle(&pods.a, "snmp", "Tcp", "OutRsts") as f64,
        SETTLE_TIMEOUT,
    );
    assert_eq!(
        agent.metric("sonde_netstat_tcp_total", &resets),
        Some(CONNECTS as f64),
        "each refused connect is one reset sent"
    );
    let metrics = agent.metrics();
    // Its interface is read (through /proc/<pid>/net/dev), its qdiscs are not.
    assert!(
        metric_series(&metrics, "sonde_netstat_dev_receive_bytes_total")
            .iter()
            .any(|(l, _)| l.contains(&("pod".into(), pods.a.name().into()))),
        "no dev series of {}",
        pods.a.name()
    );
    for (labels, _) in metric_series(&metrics, "sonde_netstat_qdisc_drops_total") {
        assert!(
            !labels.contains(&("pod".into(), pods.a.name().into())),
            "{labels:?}"
        );
    }
    // The pod without a process cannot be read at all.
    assert!(
        metric_series(&metrics, "sonde_netstat_tcp_total")
            .iter()
            .all(|(l, _)| !l.contains(&("pod".into(), pods.b.name().into()))),
        "{} was read",
        pods.b.name()
    );
    let log = agent.stderr_text();
    assert_eq!(
        log.matches("cannot enter pods' network namespaces (setns needs CAP_SYS_ADMIN)")
            .count(),
        1,
        "{log}"
    );

    // sonde probes, without CAP_NET_ADMIN either.
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace,+syslog",
            "--inh-caps=-all",
            "--",
        ])
        .arg(sonde_tests::sonde_bin())
        .args(["probes", "--output", "json"])
        .output()
        .expect("setpriv sonde probes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(row("flow")["needs"], serde_json::json!(["CAP_NET_ADMIN"]));
    assert_eq!(row("packet_drop")["needs"], serde_json::json!([]));
    let netstat = row("netstat");
    assert_eq!(netstat["loadable"], true, "{netstat}");
    assert_eq!(netstat["needs"], serde_json::json!(["CAP_SYS_ADMIN"]));
    assert!(
        netstat["degraded"]
            .as_str()
            .unwrap()
            .contains("pods' qdisc series and namespaces without a process"),
        "{netstat}"
    );
}
