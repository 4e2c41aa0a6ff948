//! Kernels without their own BTF, and `btf.path`. The kernel's BTF is hidden from the agent
//! the way a kernel built without it looks: `/sys/kernel/btf` is an empty tmpfs in a private
//! mount namespace the agent (or `sonde probes`) runs in. Pods are made before the agent
//! starts, so that their `/run/netns` mounts are in its namespace too.
//!
//! - no BTF and no `btf.path`: every eBPF probe says why and how to get one, in
//!   `sonde probes`, `/api/v1/probes`, `/readyz` and the log; netstat runs and counts a pod's
//!   datagrams to a closed port;
//! - `btf.path` a copy of the kernel's BTF made before hiding it: tp_btf probes are refused
//!   (their attach points need the kernel's own BTF) and `flow`, a TC probe, loads and counts
//!   a transfer;
//! - `btf.path` a file that is not BTF: one line naming `btf.path` and the file, netstat runs;
//! - `btf.path` with the kernel's own BTF there too: the file is what is read, so a drop
//!   reason renamed in a copy is the name the agent reports;
//! - `btf.path` a file that appears after the agent started (as node provisioning may put it
//!   there late): the probes that failed are tried again with backoff and, once loaded,
//!   count exactly; the agent is ready (serving) throughout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sonde_tests::{
    bulk_transfer, free_local_addr, http_get, only_probes_yaml, run_sonde, send_udp, sonde_bin,
    try_poll_until, Agent, Finished, IpFamily, NodePods, PodPair, TempDir, READY_TIMEOUT,
    SETTLE_TIMEOUT,
};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const NO_BTF: &str = "this kernel has no BTF (/sys/kernel/btf/vmlinux) and btf.path is not set";
const NO_OWN_BTF: &str = "this kernel has no BTF of its own (/sys/kernel/btf/vmlinux): tp_btf \
                          and fentry \
                          programs need it; btf.path gives CO-RE relocations only";
const NODE: &str = "sonde-test-node";

/// The eBPF probes of the catalogue whose hooks `pick` accepts.
fn probes_where(pick: impl Fn(&[ebpf_core::Hook]) -> bool) -> Vec<&'static str> {
    ebpf_core::CATALOGUE
        .iter()
        .filter(|s| pick(s.hooks))
        .map(|s| s.name)
        .collect()
}

/// Those with hooks the kernel resolves in its own BTF (tp_btf, fentry).
fn tp_btf() -> Vec<&'static str> {
    probes_where(|hooks| hooks.iter().any(|h| h.point.needs_kernel_btf()))
}

/// Those with TC hooks only.
fn tc() -> Vec<&'static str> {
    probes_where(|hooks| hooks.iter().all(|h| h.tc_direction().is_some()))
}

/// Those with kprobe hooks only (their CO-RE relocations need BTF too).
fn kprobe() -> Vec<&'static str> {
    probes_where(|hooks| {
        hooks
            .iter()
            .all(|h| !h.point.needs_kernel_btf() && h.tc_direction().is_none())
    })
}

/// Every eBPF probe is in one of the three.
#[test]
fn the_hook_kinds_cover_the_catalogue() {
    let mut kinds: Vec<&str> = tp_btf().into_iter().chain(tc()).chain(kprobe()).collect();
    kinds.sort_unstable();
    let mut all: Vec<&str> = ebpf_core::CATALOGUE.iter().map(|s| s.name).collect();
    all.sort_unstable();
    assert_eq!(kinds, all);
    assert!(tc().contains(&"flow") && kprobe().contains(&"virtio_net"));
}

/// `argv` run with the kernel's BTF hidden: in a private mount namespace whose
/// /sys/kernel/btf is an empty tmpfs.
fn without_kernel_btf(argv: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend_from_slice(argv);
    v
}

/// `sonde ARGS` with the kernel's BTF hidden.
fn sonde_without_kernel_btf(args: &[&str]) -> Finished {
    let mut argv = vec![sonde_bin().display().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let argv = without_kernel_btf(&argv);
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", argv.join(" ")));
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `sonde probes --output json` rows by name.
fn probes_json(out: &Finished) -> Vec<Value> {
    assert!(out.status.success(), "{}", out.stderr);
    serde_json::from_str::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("sonde probes JSON ({e}): {}", out.stdout))
        .as_array()
        .expect("a list of probes")
        .clone()
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {rows:?}"))
}

/// The agent on `yaml`, with the kernel's BTF hidden.
fn agent_without_kernel_btf(yaml: &str) -> (Agent, TempDir) {
    let dir = TempDir::new();
    let config = dir.write("sonde.yaml", yaml);
    let addr = free_local_addr();
    let argv = without_kernel_btf(&[
        sonde_bin().display().to_string(),
        "run".into(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        addr.to_string(),
    ]);
    (Agent::spawn_argv(&argv, addr, config), dir)
}

/// A config of [`only_probes_yaml`] with packet_drop on again (without events).
fn with_packet_drop(yaml: &str) -> String {
    let off = "  packet_drop: {enabled: false}\n";
    assert!(yaml.contains(off), "{yaml}");
    yaml.replace(
        off,
        "  packet_drop: {enabled: true, events: {enabled: false}}\n",
    )
}

/// `/api/v1/probes` by name.
fn api_probes(agent: &Agent) -> Vec<Value> {
    let (status, body) = agent.get("/api/v1/probes");
    assert_eq!(status, 200, "GET /api/v1/probes: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON probes ({e}): {body}"))
}

/// Waits until `probe` is in `state` in `/api/v1/probes`, and returns its row.
#[track_caller]
fn wait_state(agent: &Agent, probe: &str, state: &str) -> Value {
    let mut last = Value::Null;
    try_poll_until(READY_TIMEOUT, || {
        // Until the agent listens, nothing answers.
        let (_, body) = http_get(agent.addr(), "/api/v1/probes").ok()?;
        let probes: Vec<Value> = serde_json::from_str(&body).ok()?;
        last = row(&probes, probe).clone();
        (last["state"] == state).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("{probe} never {state}: last {last}"))
}

/// A copy of the kernel's own BTF, made before it is hidden.
fn copy_of_kernel_btf(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("vmlinux.btf");
    std::fs::copy(VMLINUX, &path).unwrap_or_else(|e| panic!("copy {VMLINUX}: {e}"));
    path
}

/// Netstat on (read every 200 ms), the default eBPF probes on, and `rest`.
fn netstat_and_default_probes_yaml(rest: &str) -> String {
    format!(
        "node: {NODE}\nprobes:\n  netstat: {{enabled: true, interval: 200ms}}\n\
         sinks:\n  stdout: {{enabled: true}}\ntopology:\n  netnsDir: /run/netns\n{rest}"
    )
}

/// Sends datagrams from pod a to a closed port of pod b, and waits for the agent's netstat
/// to count them in b's `Udp NoPorts`.
#[track_caller]
fn netstat_counts_datagrams_to_a_closed_port(agent: &Agent, pods: &PodPair) {
    const DATAGRAMS: usize = 25;
    let labels = [
        ("pod", pods.b.name()),
        ("namespace", ""),
        ("counter", "NoPorts"),
    ];
    let before = agent
        .metric("sonde_netstat_udp_total", &labels)
        .unwrap_or(0.0);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, DATAGRAMS);
    agent.wait_metric(
        "sonde_netstat_udp_total",
        &labels,
        before + DATAGRAMS as f64,
        SETTLE_TIMEOUT,
    );
    assert_eq!(
        agent.metric("sonde_probe_up", &[("probe", "netstat")]),
        Some(1.0)
    );
}

#[test]
fn probes_without_any_btf_say_why_and_how_to_get_one() {
    let rows = probes_json(&sonde_without_kernel_btf(&["probes", "--output", "json"]));
    let all: Vec<&str> = tp_btf().into_iter().chain(tc()).chain(kprobe()).collect();
    for &name in &all {
        let p = row(&rows, name);
        assert_eq!(p["loadable"], false, "{p}");
        let reason = p["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with(NO_BTF), "{p}");
        assert!(
            reason.contains("https://github.com/aquasecurity/btfhub-archive")
                && reason.contains("pahole --btf_encode_detached FILE vmlinux"),
            "{p}"
        );
    }
    assert_eq!(row(&rows, "netstat")["loadable"], true, "{rows:?}");

    let text = sonde_without_kernel_btf(&["probes"]);
    assert!(text.status.success(), "{}", text.stderr);
    assert_eq!(
        text.stdout.matches(&format!("why not: {NO_BTF}")).count(),
        all.len(),
        "{}",
        text.stdout
    );
    let netstat = text.stdout.lines().find(|l| l.starts_with("netstat"));
    assert_eq!(
        netstat.and_then(|l| l.split_whitespace().nth(1)),
        Some("yes"),
        "{}",
        text.stdout
    );
}

#[test]
fn agent_without_any_btf_runs_netstat_and_says_why_the_others_cannot_load() {
    let pods = PodPair::new();
    let (agent, _dir) = agent_without_kernel_btf(&netstat_and_default_probes_yaml(""));
    wait_state(&agent, "netstat", "running");
    let probes = api_probes(&agent);
    for name in [
        "packet_drop",
        "tcp_retrans",
        "tcp_reset",
        "tcp_connect",
        "io_latency",
    ] {
        let p = row(&probes, name);
        assert_eq!(p["state"], "failed", "{p}");
        let error = p["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(NO_BTF) && error.contains("btfhub-archive"),
            "{p}"
        );
    }
    netstat_counts_datagrams_to_a_closed_port(&agent, &pods);
    assert_eq!(
        agent.metric("sonde_probe_up", &[("probe", "packet_drop")]),
        Some(0.0)
    );
    // Ready means serving: the failed probes are said (and tried again), not held against it.
    let (status, body) = agent.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready\n") && body.contains(&format!("packet_drop: {NO_BTF}")),
        "{body}"
    );
    let log = agent.stderr_text();
    assert!(
        log.lines()
            .any(|l| l.contains("packet_drop") && l.contains(NO_BTF)),
        "{log}"
    );
}

#[test]
fn probes_with_a_btf_file_refuse_tp_btf_and_load_tc() {
    let dir = TempDir::new();
    let btf = copy_of_kernel_btf(&dir);
    let btf = btf.display().to_string();
    let rows = probes_json(&sonde_without_kernel_btf(&[
        "probes", "--output", "json", "--btf", &btf,
    ]));
    for &name in &tp_btf() {
        let p = row(&rows, name);
        assert_eq!(p["loadable"], false, "{p}");
        assert_eq!(p["reason"], NO_OWN_BTF, "{p}");
    }
    for &name in tc().iter().chain(&["netstat"]) {
        let p = row(&rows, name);
        assert_eq!(p["loadable"], true, "{p}");
    }
}

#[test]
fn flow_counts_a_transfer_with_only_a_btf_file() {
    const K: usize = 1 << 20;
    let dir = TempDir::new();
    let btf = copy_of_kernel_btf(&dir);
    let node = NodePods::new(2);
    // flow, and packet_drop (tp_btf) beside it to say why it cannot load.
    let yaml = with_packet_drop(&only_probes_yaml(
        &format!(
            "  flow:\n    enabled: true\n    interfaces: [\"{}\"]\n",
            node.interface_pattern()
        ),
        &format!("btf:\n  path: {}\n", btf.display()),
    ));
    let (agent, _config) = agent_without_kernel_btf(&yaml);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let flow = wait_state(&agent, "flow", "running");
    let mut want = vec![a.host_if.clone(), b.host_if.clone()];
    want.sort();
    let mut attached = Vec::new();
    try_poll_until(SETTLE_TIMEOUT, || {
        let flow = row(&api_probes(&agent), "flow").clone();
        attached = flow["interfaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        attached.sort();
        (attached == want).then_some(())
    })
    .unwrap_or_else(|| panic!("flow attached to {attached:?}, wanted {want:?}: {flow}"));
    // The tp_btf probe beside it cannot load, and says why.
    let drop = row(&api_probes(&agent), "packet_drop").clone();
    assert_eq!(drop["state"], "failed", "{drop}");
    assert_eq!(drop["error"], NO_OWN_BTF, "{drop}");

    bulk_transfer(&a.netns, &b.netns, b.ip(IpFamily::V4), 5301, K);
    let labels = [
        ("src_pod", a.name()),
        ("dst_pod", b.name()),
        ("protocol", "tcp"),
        ("node", NODE),
    ];
    agent.wait_metric("sonde_flow_bytes_total", &labels, K as f64, SETTLE_TIMEOUT);
    assert_eq!(
        agent.metric("sonde_probe_up", &[("probe", "flow")]),
        Some(1.0)
    );
}

#[test]
fn a_btf_path_that_is_not_btf_is_one_line_and_netstat_runs() {
    let dir = TempDir::new();
    let not_btf = dir.write("vmlinux.btf", "not BTF at all\n");
    let expected = format!(
        "btf.path: {}: not a BTF file (it does not start with BTF's magic number 0xeb9f)",
        not_btf.display()
    );

    // sonde probes --btf: each eBPF probe names the file; with the kernel's own BTF there
    // too, the file is what is read.
    let out = run_sonde(
        &[
            "probes",
            "--output",
            "json",
            "--btf",
            &not_btf.display().to_string(),
        ],
        READY_TIMEOUT,
    );
    let rows = probes_json(&out);
    for &name in tp_btf().iter().chain(&tc()) {
        assert_eq!(row(&rows, name)["reason"], expected.as_str(), "{rows:?}");
    }
    assert_eq!(row(&rows, "netstat")["loadable"], true);
    let missing = dir.path().join("missing.btf");
    let out = run_sonde(
        &["probes", "--btf", &missing.display().to_string()],
        READY_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "why not: btf.path: {}: cannot read: No such file or directory",
            missing.display()
        )),
        "{}",
        out.stdout
    );

    // The agent, with its kernel's BTF hidden and without.
    let pods = PodPair::new();
    let yaml = netstat_and_default_probes_yaml(&format!("btf:\n  path: {}\n", not_btf.display()));
    let (hidden, _config) = agent_without_kernel_btf(&yaml);
    let agent = Agent::spawn_yaml(&yaml);
    for agent in [&hidden, &agent] {
        wait_state(agent, "netstat", "running");
        let drop = wait_state(agent, "packet_drop", "failed");
        assert_eq!(drop["error"], expected.as_str(), "{drop}");
        netstat_counts_datagrams_to_a_closed_port(agent, &pods);
        let log = agent.stderr_text();
        assert!(
            log.lines()
                .any(|l| l.contains("packet_drop") && l.contains(&expected)),
            "{log}"
        );
    }
}

#[test]
fn drop_reasons_are_read_from_btf_path() {
    const PORT: u16 = 9998;
    const DATAGRAMS: usize = 40;
    // The kernel's BTF with one drop reason renamed (same length, so nothing else moves).
    let dir = TempDir::new();
    let mut data = std::fs::read(VMLINUX).unwrap_or_else(|e| panic!("read {VMLINUX}: {e}"));
    let (from, to) = (
        b"SKB_DROP_REASON_NETFILTER_DROP\0",
        b"SKB_DROP_REASON_NETFILTER_DRXP\0",
    );
    let at: Vec<usize> = data
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| w == from)
        .map(|(i, _)| i)
        .collect();
    if at.is_empty() {
        eprintln!("this kernel has no SKB_DROP_REASON_NETFILTER_DROP: nothing to rename");
        return;
    }
    assert_eq!(at.len(), 1, "BTF strings are unique");
    data[at[0]..at[0] + to.len()].copy_from_slice(to);
    let btf = dir.path().join("renamed.btf");
    std::fs::write(&btf, &data).unwrap();
    assert!(Path::new(VMLINUX).exists());

    let pods = PodPair::dropping_udp(PORT);
    let agent = Agent::spawn_yaml(&with_packet_drop(&only_probes_yaml(
        "",
        &format!("btf:\n  path: {}\n", btf.display()),
    )));
    agent.wait_ready(READY_TIMEOUT);
    drops_are_counted(&agent, &pods, PORT, DATAGRAMS, "NETFILTER_DRXP");
    assert_eq!(
        agent.metric(
            "sonde_packet_drops_total",
            &[("pod", pods.b.name()), ("reason", "NETFILTER_DROP")]
        ),
        None
    );
}

#[test]
fn a_probe_that_failed_is_tried_again_and_counts_once_loaded() {
    const PORT: u16 = 9996;
    const DATAGRAMS: usize = 50;
    let dir = TempDir::new();
    let btf = dir.path().join("late.btf");
    let pods = PodPair::dropping_udp(PORT);
    let agent = Agent::spawn_yaml(&with_packet_drop(&only_probes_yaml(
        "",
        &format!("btf:\n  path: {}\n", btf.display()),
    )));
    // Serving, and saying what failed and when it is tried again.
    agent.wait_ready(READY_TIMEOUT);
    let failed = wait_state(&agent, "packet_drop", "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("btf.path") && failed["attempts"] == 1,
        "{failed}"
    );
    assert!(
        failed["retry_in_seconds"].as_u64().unwrap() <= 5,
        "{failed}"
    );
    let (status, body) = agent.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("probes failed: packet_drop: ") && body.contains("tried again in"),
        "{body}"
    );
    assert_eq!(
        agent.metric("sonde_probe_up", &[("probe", "packet_drop")]),
        Some(0.0)
    );
    // Tried again after 5 s, 10 s, ...: still failing, the count of tries grows.
    try_poll_until(READY_TIMEOUT, || {
        let row = row(&api_probes(&agent), "packet_drop").clone();
        (row["attempts"].as_u64()? >= 2).then_some(())
    })
    .expect("packet_drop tried a second time");

    // The file appears: the next try loads the probe, and it counts exactly.
    std::fs::copy(VMLINUX, &btf).unwrap();
    wait_state(&agent, "packet_drop", "running");
    assert_eq!(
        agent.metric("sonde_probe_up", &[("probe", "packet_drop")]),
        Some(1.0)
    );
    assert_eq!(agent.get("/readyz").1, "ready\n");
    drops_are_counted(&agent, &pods, PORT, DATAGRAMS, "NETFILTER_DROP");
}

/// Sends `datagrams` from pod A into pod B's DROP rule on `port` and waits until the agent
/// counts exactly that many drops of B with `reason`.
fn drops_are_counted(agent: &Agent, pods: &PodPair, port: u16, datagrams: usize, reason: &str) {
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), port);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, datagrams);
    let labels = [("pod", pods.b.name()), ("reason", reason)];
    agent.wait_metric_eq(
        "sonde_packet_drops_total",
        &labels,
        datagrams as f64,
        SETTLE_TIMEOUT,
    );
}
