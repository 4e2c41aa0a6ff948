//! The agent run as the chart's DaemonSet runs it (its capabilities, arguments, environment,
//! config and bundle mounts, from the objects Helm renders): every metric a Grafana dashboard
//! or an alert rule queries is one it exports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::{json, Value};
use sonde_tests::chart::{
    agent_container, daemonset_test_values, find, mount_configmap, read, render_with, root, strict,
    volume, yaml_documents,
};
use sonde_tests::dashboards::{metric_names, queries};
use sonde_tests::{
    bulk_transfer, connect_and_close, free_local_addr, refused_connects, send_udp, sonde_bin,
    Agent, IpFamily, NodePods, PodPair, TempDir, READY_TIMEOUT, SETTLE_TIMEOUT,
};

/// The metric families in an exposition, with their types.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

/// Whether `name` is exported: a family, or a histogram's `_bucket`, `_sum` or `_count`.
fn exported(families: &BTreeMap<String, String>, name: &str) -> bool {
    if families.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kind == "histogram" || kind == "summary")
    })
}

const DROP_PORT: u16 = 5321;
const LOSSY_PORT: u16 = 5322;
const CLOSED_PORT: u16 = 5323;
const OPEN_PORT: u16 = 5324;

/// The agent as the DaemonSet runs it: only the container's capabilities (setpriv's bounding
/// set), no new privileges, its command line with `$(VAR)` expanded from its env (downward API
/// values given here), and its volumes laid out as kubelet would (ConfigMaps with their
/// `..data` symlinks, emptyDirs, hostPaths as the host's own paths), container paths rewritten
/// to where they are here.
struct DaemonSetAgent {
    agent: Agent,
    _fs: TempDir,
}

fn run_as_daemonset(
    docs: &[Value],
    extra_configmaps: &[Value],
    node: &str,
    port: u16,
) -> DaemonSetAgent {
    let ds: DaemonSet = strict(find(docs, "DaemonSet", "sonde"), "DaemonSet");
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let c = agent_container(&ds);
    let fs = TempDir::new();
    // Container path -> path here.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let volume = volume(&pod, &m.name);
        let here = if let Some(host) = &volume.host_path {
            PathBuf::from(&host.path)
        } else {
            let p = fs.path().join(m.mount_path.trim_start_matches('/'));
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        mounts.push((m.mount_path.clone(), here));
    }
    // In one pass (through placeholders), longest paths first, so that a path here is not
    // rewritten again (the /tmp emptyDir lives under /tmp).
    mounts.sort_by_key(|(container, _)| std::cmp::Reverse(container.len()));
    let rewrite = |text: &str| {
        let mut text = text.to_string();
        for (i, (container, _)) in mounts.iter().enumerate() {
            text = text.replace(container.as_str(), &format!("\u{0}{i}\u{0}"));
        }
        for (i, (_, here)) in mounts.iter().enumerate() {
            text = text.replace(&format!("\u{0}{i}\u{0}"), &here.display().to_string());
        }
        text
    };
    for m in c.volume_mounts.iter().flatten() {
        let volume = volume(&pod, &m.name);
        if let Some(source) = &volume.config_map {
            let cm = docs
                .iter()
                .chain(extra_configmaps)
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == source.name.as_str())
                .unwrap_or_else(|| panic!("no ConfigMap {}", source.name));
            let here = &mounts.iter().find(|(p, _)| *p == m.mount_path).unwrap().1;
            mount_configmap(cm, here, rewrite);
        }
    }
    let env: BTreeMap<String, String> = c
        .env
        .iter()
        .flatten()
        .map(|e| {
            let field = e
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            let value = match field {
                Some("spec.nodeName") => node.to_string(),
                // hostNetwork: the pod's IP is the node's; here, loopback.
                Some("status.podIP") => "127.0.0.1".to_string(),
                other => e
                    .value
                    .clone()
                    .unwrap_or_else(|| panic!("env {}: {other:?}", e.name)),
            };
            (e.name.clone(), value)
        })
        .collect();
    let sc = c.security_context.as_ref().unwrap();
    let caps: Vec<String> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let mut argv = vec![
        "setpriv".to_string(),
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--inh-caps=-all".to_string(),
    ];
    if sc.allow_privilege_escalation == Some(false) {
        argv.push("--no-new-privs".into());
    }
    argv.push("--".into());
    argv.push("env".into());
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    assert_eq!(c.command.as_deref(), Some(&["sonde".to_string()][..]));
    argv.push(sonde_bin().display().to_string());
    let mut config = None;
    for arg in c.args.iter().flatten() {
        let mut arg = arg.clone();
        for (k, v) in &env {
            arg = arg.replace(&format!("$({k})"), v);
        }
        let arg = rewrite(&arg);
        if let Some(path) = arg.strip_prefix("--config=") {
            config = Some(PathBuf::from(path));
        }
        argv.push(arg);
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        argv.contains(&format!("--listen={addr}")),
        "the DaemonSet listens elsewhere: {argv:?}"
    );
    let agent = Agent::spawn_argv(&argv, addr, config.expect("--config in the args"));
    DaemonSetAgent { agent, _fs: fs }
}

/// Every metric the dashboards and the alert rules query is one the agent exports, with the
/// agent run as the DaemonSet runs it (which also shows that the container's capabilities are
/// enough: every probe attaches, drop locations are named from /proc/kallsyms, netstat enters
/// the pods' namespaces) and traffic that gives every family a series. The flows dashboard
/// needs the flow probe's `sonde_flow_bytes_total` and `sonde_flow_packets_total`.
#[test]
fn dashboards_and_alerts_query_metrics_the_agent_exports() {
    let port = free_local_addr().port();
    // The flow probe (which the flows dashboard reads) on the host-side interfaces of two pods
    // attached the way a CNI attaches them.
    let node_pods = NodePods::new(2);
    // What each value is for: `daemonset_test_values`.
    let docs = render_with(&daemonset_test_values(port, &node_pods.interface_pattern()));
    let example = yaml_documents(
        &read(&root().join("deploy/examples/drop-counter-script.configmap.yaml")),
        "drop-counter-script.configmap.yaml",
    );
    let failing = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "sonde-test-failing", "labels": {"sonde.dev/bundle": "failing"}},
        "data": {
            "plugin.yaml": "apiVersion: sonde.dev/v1alpha1\nkind: Script\nmetadata:\n  name: failing\n\
                            spec:\n  source: fail.rhai\n  subscribe: [packet_drop]\n",
            "fail.rhai": "fn on_packet_drop(e) {\n  let x = e.dport / 0;\n}\n",
        }
    });
    let extra = [example[0].clone(), failing];
    let node = format!("sonde-deploy-{}", std::process::id());

    let pods = PodPair::dropping_udp(DROP_PORT);
    pods.b.iptables(
        IpFamily::V4,
        &format!(
            "-A INPUT -p tcp --dport {LOSSY_PORT} -m statistic --mode random --probability 0.1 -j DROP"
        ),
    );
    // Pod b has a process, as a pod has containers: netstat reads it through /proc/<pid>/net.
    let _b_process = pods.b.resident();
    let run = run_as_daemonset(&docs, &extra, &node, port);
    let agent = &run.agent;
    agent.wait_ready(READY_TIMEOUT);

    let b_ip = pods.b_end.ip(IpFamily::V4);
    let src = pods.a_end.ip(IpFamily::V4);
    bulk_transfer(&pods.a, &pods.b, b_ip, LOSSY_PORT, 8 << 20);
    // Six reset events (three each way) within a second against a bucket of one per CPU:
    // some are suppressed, whatever the CPUs they land on.
    refused_connects(&pods.a, SocketAddr::new(b_ip, CLOSED_PORT), 3);
    connect_and_close(&pods.a, &pods.b, SocketAddr::new(b_ip, OPEN_PORT), 3);
    // The example drop counter emits an event at a pod's thousandth drop.
    send_udp(&pods.a, src, SocketAddr::new(b_ip, DROP_PORT), 1000);
    // A flow between the bridged pods (nothing listens: the datagrams cross both host-side
    // interfaces all the same).
    let (client, server) = (&node_pods.pods[0], &node_pods.pods[1]);
    send_udp(
        &client.netns,
        client.ip(IpFamily::V4),
        SocketAddr::new(server.ip(IpFamily::V4), DROP_PORT),
        10,
    );

    let wanted: Vec<(String, String)> = queries()
        .into_iter()
        .flat_map(|(place, expr)| {
            metric_names(&expr)
                .into_iter()
                .map(move |m| (m, place.clone()))
        })
        .collect();
    assert!(wanted.len() > 50, "only {} metric references", wanted.len());
    // Block I/O for io_latency: a synced file on the disk the checkout is on.
    let io_file = root()
        .join("target")
        .join(format!("deploy-test-io-{}", std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        // Drops keep the failing script failing until it is quarantined.
        send_udp(&pods.a, src, SocketAddr::new(b_ip, DROP_PORT), 5);
        if let Ok(mut f) = std::fs::File::create(&io_file) {
            let _ = f.write_all(&[0x5d; 64 << 10]);
            let _ = f.sync_all();
        }
        let exposition = agent.metrics();
        let families = families(&exposition);
        let missing: BTreeMap<&str, BTreeSet<&str>> = wanted
            .iter()
            .filter(|(m, _)| !exported(&families, m))
            .fold(BTreeMap::new(), |mut acc, (m, place)| {
                acc.entry(m.as_str()).or_default().insert(place.as_str());
                acc
            });
        if missing.is_empty() || Instant::now() > deadline {
            break missing
                .into_iter()
                .map(|(m, places)| {
                    format!(
                        "{m} (in {})",
                        places.into_iter().collect::<Vec<_>>().join("; ")
                    )
                })
                .collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = std::fs::remove_file(&io_file);

    // The capabilities were enough: the kernel's addresses were readable (CAP_SYSLOG), and
    // netstat read pod b's namespace through its process, without CAP_SYS_ADMIN; the node
    // label came from NODE_NAME.
    let event = agent.wait_for_event(
        SETTLE_TIMEOUT,
        "a drop event with a symbolised location",
        &json!({"type": "packet_drop", "pod": pods.b.name(), "reason": "NETFILTER_DROP"}),
        |e| {
            e["location"]
                .as_str()
                .is_some_and(|l| !l.is_empty() && !l.starts_with("0x"))
        },
    );
    assert_eq!(event["node"], node.as_str());
    agent.wait_metric(
        "sonde_netstat_tcp_total",
        &[
            ("node", &node),
            ("pod", pods.b.name()),
            ("counter", "OutSegs"),
        ],
        1.0,
        SETTLE_TIMEOUT,
    );
    assert!(
        agent.metric("sonde_plugin_up", &[("plugin", "drop-counter")]) == Some(1.0),
        "the example bundle mounted from its ConfigMap runs"
    );
    assert!(
        missing.is_empty(),
        "metrics queried but not exported by the agent:\n{}",
        missing.join("\n")
    );
}
