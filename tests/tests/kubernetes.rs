//! The Kubernetes topology against a local API server (tests/src/kube_api.rs): pods of this
//! node are found through the API and /proc (a process in each test namespace, in a cgroup
//! named after the pod's UID as kubelet names it), drops are labelled with the Kubernetes
//! namespace and pod, addresses resolve to pods (and never to a pod that is gone or finished),
//! and watches that are cut or expire recover by listing again.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde_json::{json, Value};
use sonde_tests::kube_api::{self, CgroupDriver, KubeApi, PodProcess};
use sonde_tests::{
    first_party_bundle, http_get, metric_series, poll_until, run_sonde, send_udp, try_poll_until,
    unique_suffix, wasm_module, write_bundle, Agent, IpFamily, PodPair, TempDir, READY_TIMEOUT,
    SETTLE_TIMEOUT,
};

const DROPS: &str = "sonde_packet_drops_total";
/// A netstat series every pod namespace has (read every second here).
const NETSTAT: &str = "sonde_netstat_udp_total";

/// The agent on the Kubernetes topology of `node` (`source: auto`, which finds the
/// kubeconfig), with drop events, netstat every second,
/// the pods' `app` label as an additional label, and `extra` YAML appended (plugins...).
fn agent(api: &KubeApi, dir: &Path, node: &str, extra: &str) -> Agent {
    let kubeconfig = api.kubeconfig(dir);
    Agent::spawn_yaml(&format!(
        "node: {node}\nprobes:\n  packet_drop:\n    events: {{enabled: true, ratePerCpu: 0}}\n  \
         tcp_retrans: {{enabled: false}}\n  tcp_reset: {{enabled: false}}\n  \
         tcp_connect: {{enabled: false}}\n  softirq: {{enabled: false}}\n  \
         io_latency: {{enabled: false}}\n  \
         netstat: {{enabled: true, interval: 1s, includeHost: false, groups: [snmp]}}\n\
         sinks:\n  stdout: {{enabled: true}}\n\
         topology:\n  source: auto\n  kubeconfig: {}\n  \
         additionalLabels: [\"app=${{labels:app}}\"]\n{extra}",
        kubeconfig.display()
    ))
}

fn uid(n: u32) -> String {
    // Unique per test process: the pid in the last group.
    format!("5d0e{n:04x}-0000-4000-8000-{:012x}", std::process::id())
}

/// The pods the netstat series name now, as (namespace, pod).
fn netstat_pods(agent: &Agent) -> Vec<(String, String)> {
    let mut pods: Vec<(String, String)> = metric_series(&agent.metrics(), NETSTAT)
        .into_iter()
        .filter_map(|(labels, _)| {
            let get = |k: &str| {
                labels
                    .iter()
                    .find(|(lk, _)| lk == k)
                    .map(|(_, v)| v.clone())
            };
            Some((get("namespace")?, get("pod")?))
        })
        .collect();
    pods.dedup();
    pods
}

/// Polls until the netstat series name the pod (`present`) or no longer do.
fn wait_netstat_pod(agent: &Agent, ns: &str, pod: &str, present: bool) {
    let what = format!("{ns}/{pod}'s netstat series to be there: {present}");
    poll_until(SETTLE_TIMEOUT, &what, || {
        let seen = netstat_pods(agent).contains(&(ns.to_string(), pod.to_string()));
        (seen == present).then_some(())
    });
}

/// Makes b drop UDP to `port`, then sends one datagram from a per poll until an event of
/// type `kind` for that port passes `check`; returns it and how many datagrams were sent.
fn until_event(
    agent: &Agent,
    pods: &PodPair,
    port: u16,
    kind: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> (Value, u32) {
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {port} -j DROP"),
    );
    let (a_ip, b_ip) = (pods.a_end.ip(IpFamily::V4), pods.b_end.ip(IpFamily::V4));
    let mut sent = 0;
    let event = poll_until(SETTLE_TIMEOUT, what, || {
        send_udp(&pods.a, a_ip, SocketAddr::new(b_ip, port), 1);
        sent += 1;
        agent
            .events()
            .into_iter()
            .find(|e| e["type"] == kind && e["dport"] == port && check(e))
    });
    (event, sent)
}

#[test]
fn pods_from_the_api_label_what_happens_in_their_namespaces() {
    let suffix = unique_suffix();
    let node = format!("node-{suffix}");
    let ns = "shop";
    let (web, db) = (format!("web-{suffix}"), format!("db-{suffix}"));
    let port = 9501;
    let pods = PodPair::dropping_udp(port);
    let (a_ip, b_ip) = (pods.a_end.ip(IpFamily::V4), pods.b_end.ip(IpFamily::V4));
    let (uid_a, uid_b) = (uid(1), uid(2));
    // One pod per kubelet cgroup driver.
    let _pa = PodProcess::start(&pods.a, &uid_a, CgroupDriver::Cgroupfs);
    let _pb = PodProcess::start(&pods.b, &uid_b, CgroupDriver::Systemd);

    let api = KubeApi::start();
    api.apply(kube_api::node(&node, "192.0.2.10".parse().unwrap()));
    // An earlier pod had b's address and finished: it owns it no more.
    api.apply(kube_api::pod(
        ns,
        &format!("old-{suffix}"),
        &uid(3),
        "elsewhere",
        Some(b_ip),
        &[],
        "Failed",
    ));
    api.apply(kube_api::pod(
        ns,
        &web,
        &uid_a,
        &node,
        Some(a_ip),
        &[("app", "web")],
        "Running",
    ));
    api.apply(kube_api::pod(
        ns,
        &db,
        &uid_b,
        &node,
        Some(b_ip),
        &[("app", "db")],
        "Running",
    ));
    // A pod of another node is not this node's.
    api.apply(kube_api::pod(
        ns,
        &format!("far-{suffix}"),
        &uid(4),
        "elsewhere",
        Some("198.51.100.7".parse().unwrap()),
        &[],
        "Running",
    ));

    let dir = TempDir::new();
    let explainer = first_party_bundle("drop-explainer");
    let agent = agent(
        &api,
        dir.path(),
        &node,
        &format!("plugins:\n  dirs: [{}]\n", explainer.display()),
    );
    agent.wait_ready(READY_TIMEOUT);

    // Both pods' namespaces are found through /proc: netstat reads them.
    wait_netstat_pod(&agent, ns, &web, true);
    wait_netstat_pod(&agent, ns, &db, true);

    // Drops in b are db's, with db's `app` label.
    send_udp(&pods.a, a_ip, SocketAddr::new(b_ip, port), 40);
    let labels = [
        ("namespace", ns),
        ("pod", db.as_str()),
        ("app", "db"),
        ("reason", "NETFILTER_DROP"),
    ];
    agent.wait_metric(DROPS, &labels, 40.0, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(DROPS, &labels), Some(40.0));
    agent.wait_for_event(
        SETTLE_TIMEOUT,
        "a drop event labelled with the Kubernetes pod and its app",
        &json!({"type": "packet_drop", "namespace": ns, "pod": db, "dport": port,
                "labels": {"app": "db"}}),
        |e| e["netns"].as_u64() == Some(pods.b.inode()),
    );
    // The destination address resolves to db itself (not to the finished pod that had it
    // before, which would be named as the peer), so the peer is the sender, web.
    agent.wait_for_event(
        SETTLE_TIMEOUT,
        "drop-explainer naming web as the other end of db's drops",
        &json!({"type": "drop_explained", "pod": db, "dport": port}),
        |e| e["peer_namespace"] == ns && e["peer_pod"] == web.as_str(),
    );

    // The address moves to a new pod elsewhere (db keeps running with another one).
    let db_ip2: IpAddr = "198.51.100.9".parse().unwrap();
    api.apply(kube_api::pod(
        ns,
        &db,
        &uid_b,
        &node,
        Some(db_ip2),
        &[("app", "db")],
        "Running",
    ));
    let cache = format!("cache-{suffix}");
    api.apply(kube_api::pod(
        ns,
        &cache,
        &uid(5),
        "elsewhere",
        Some(b_ip),
        &[],
        "Running",
    ));
    let (peer, sent) = until_event(
        &agent,
        &pods,
        port + 1,
        "drop_explained",
        "the address to resolve to its new pod",
        |e| e["peer_pod"] == cache.as_str(),
    );
    assert_eq!(peer["pod"], db.as_str(), "{peer}");
    // Those drops were still db's.
    let db_drops = 40.0 + f64::from(sent);
    agent.wait_metric(DROPS, &labels, db_drops, SETTLE_TIMEOUT);

    // db moves to another node: drops in its namespace are nobody's now.
    api.apply(kube_api::pod(
        ns,
        &db,
        &uid_b,
        "elsewhere",
        Some(db_ip2),
        &[("app", "db")],
        "Running",
    ));
    let b_inode = pods.b.inode();
    until_event(
        &agent,
        &pods,
        port + 2,
        "packet_drop",
        "drops in b to carry no pod",
        |e| e["netns"].as_u64() == Some(b_inode) && e["pod"] == "" && e["namespace"] == "",
    );
    wait_netstat_pod(&agent, ns, &db, false);
    assert_eq!(agent.metric(DROPS, &labels), Some(db_drops));

    // web disappears from the API: its namespace's series go too.
    api.delete("Pod", ns, &web);
    wait_netstat_pod(&agent, ns, &web, false);
    // The cached pod finishes: the address is nobody's.
    api.apply(kube_api::pod(
        ns,
        &cache,
        &uid(5),
        "elsewhere",
        Some(b_ip),
        &[],
        "Succeeded",
    ));
    until_event(
        &agent,
        &pods,
        port + 3,
        "drop_explained",
        "the address to resolve to nobody",
        |e| e.get("peer_pod").is_none(),
    );
}

#[test]
fn watches_recover_and_readyz_waits_for_the_first_list() {
    let suffix = unique_suffix();
    let node = format!("node-{suffix}");
    let ns = "team";
    let pods = PodPair::new();
    let (uid_a, uid_b) = (uid(11), uid(12));
    let _pa = PodProcess::start(&pods.a, &uid_a, CgroupDriver::Systemd);
    let _pb = PodProcess::start(&pods.b, &uid_b, CgroupDriver::Cgroupfs);
    let (a, b) = (format!("a-{suffix}"), format!("b-{suffix}"));
    let a_ip = pods.a_end.ip(IpFamily::V4);
    let b_ip = pods.b_end.ip(IpFamily::V4);

    let api = KubeApi::start();
    api.hold_lists(true);
    api.apply(kube_api::node(&node, "192.0.2.10".parse().unwrap()));
    api.apply(kube_api::pod(
        ns,
        &a,
        &uid_a,
        &node,
        Some(a_ip),
        &[],
        "Running",
    ));
    let dir = TempDir::new();
    let agent = agent(&api, dir.path(), &node, "");

    // Not ready while the API server answers no list, and /readyz says why.
    let (status, body) = poll_until(READY_TIMEOUT, "/readyz to name the topology", || {
        let (status, body) = http_get(agent.addr(), "/readyz").ok()?;
        body.contains("topology").then_some((status, body))
    });
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("waiting for the first list") && body.contains(&node),
        "{body}"
    );
    api.hold_lists(false);
    agent.wait_ready(READY_TIMEOUT);
    wait_netstat_pod(&agent, ns, &a, true);

    // A cut watch resumes and sees what changed meanwhile.
    let watches = api.watches("pods");
    api.cut_watches();
    api.apply(kube_api::pod(
        ns,
        &b,
        &uid_b,
        &node,
        Some(b_ip),
        &[],
        "Running",
    ));
    wait_netstat_pod(&agent, ns, &b, true);
    assert!(api.watches("pods") > watches);

    // History expired (410 Gone on resume): the agent lists again and follows what changed.
    let lists = api.lists("pods");
    api.expire_history();
    api.cut_watches();
    api.delete("Pod", ns, &a);
    let a2 = format!("a2-{suffix}");
    api.apply(kube_api::pod(
        ns,
        &a2,
        &uid_a,
        &node,
        Some(a_ip),
        &[],
        "Running",
    ));
    poll_until(
        SETTLE_TIMEOUT,
        "the relisted pods to replace the old view",
        || {
            let seen = netstat_pods(&agent);
            (seen.contains(&(ns.into(), a2.clone())) && !seen.contains(&(ns.into(), a.clone())))
                .then_some(())
        },
    );
    assert!(api.lists("pods") > lists, "no list after 410");
    // Still ready: a watch failure after the first list keeps the last view.
    assert_eq!(agent.get("/readyz").0, 200);

    // The API server away for a while: the data path carries on with what it knows.
    api.hold_lists(true);
    api.expire_history();
    api.cut_watches();
    let port = 9611;
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {port} -j DROP"),
    );
    send_udp(&pods.a, a_ip, SocketAddr::new(b_ip, port), 25);
    let labels = [
        ("namespace", ns),
        ("pod", b.as_str()),
        ("reason", "NETFILTER_DROP"),
    ];
    agent.wait_metric(DROPS, &labels, 25.0, SETTLE_TIMEOUT);
    api.hold_lists(false);
    let lists = api.lists("pods");
    let relisted = try_poll_until(SETTLE_TIMEOUT * 2, || {
        (api.lists("pods") > lists).then_some(())
    });
    assert!(
        relisted.is_some(),
        "the agent did not list again once the server was back"
    );
}

/// `sonde plugin configmap` of a bundle whose manifest has `spec`, as the JSON the API
/// stores (what `kubectl apply` of that output makes).
fn bundle_configmap(dir: &Path, name: &str, spec: &str, namespace: &str) -> Value {
    let bundle = dir.join(name);
    let _ = std::fs::remove_dir_all(&bundle);
    write_bundle(&bundle, name, &wasm_module("hostile-plugin"), spec);
    let out = run_sonde(
        &[
            "plugin",
            "configmap",
            &bundle.display().to_string(),
            "--namespace",
            namespace,
        ],
        READY_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.stderr);
    serde_yaml_ng::from_str(&out.stdout).expect("the ConfigMap is YAML")
}

fn plugin_status(agent: &Agent, name: &str) -> Option<Value> {
    let (status, body) = agent.get("/api/v1/plugins");
    assert_eq!(status, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).expect("JSON");
    list.into_iter().find(|p| p["name"] == name)
}

#[test]
fn bundle_configmaps_through_the_api_load_swap_refuse_and_unload() {
    let suffix = unique_suffix();
    let ns = "sonde-system";
    let name = format!("counter-{}", suffix.replace('-', ""));
    let fields_metric = format!("sonde_test_fields_{}_total", suffix.replace('-', "_"));
    let dir = TempDir::new();
    let spec = |mode: &str| {
        format!(
            "  subscribe: [packet_drop]\n  config: {{mode: {mode}, metric: {fields_metric}}}\n  \
             capabilities: [metrics]\n"
        )
    };

    let api = KubeApi::start();
    // The same bundle unlabelled, and labelled in another namespace: neither is followed.
    let mut unlabelled = bundle_configmap(dir.path(), &name, &spec("count"), ns);
    unlabelled["metadata"]["name"] = json!("not-a-bundle");
    unlabelled["metadata"]["labels"] = json!({});
    api.apply(unlabelled);
    api.apply(bundle_configmap(
        dir.path(),
        &name,
        &spec("count"),
        "elsewhere",
    ));
    let v1 = api.apply(bundle_configmap(dir.path(), &name, &spec("count"), ns));
    let cm_name = v1["metadata"]["name"].as_str().unwrap().to_string();
    let kubeconfig = api.kubeconfig(dir.path());
    // Standalone topology: bundles through the API need only the client.
    let agent = Agent::spawn_yaml(&format!(
        "probes:\n  tcp_retrans: {{enabled: false}}\n  tcp_reset: {{enabled: false}}\n\
         sinks:\n  stdout: {{enabled: false}}\n\
         topology:\n  source: standalone\n  kubeconfig: {}\n\
         plugins:\n  configMapNamespace: {ns}\n",
        kubeconfig.display()
    ));
    agent.wait_ready(READY_TIMEOUT);
    let running = poll_until(SETTLE_TIMEOUT, "the ConfigMap's plugin to run", || {
        plugin_status(&agent, &name).filter(|p| p["state"] == "running")
    });
    assert_eq!(
        running["dir"],
        format!("configmap/{ns}/{cm_name}"),
        "{running}"
    );
    let listed: Vec<Value> = serde_json::from_str(&agent.get("/api/v1/plugins").1).unwrap();
    assert_eq!(
        listed.iter().filter(|p| p["name"] == name.as_str()).count(),
        1,
        "one plugin: {listed:?}"
    );
    // Drops reach it.
    let pods = PodPair::dropping_udp(9701);
    let drop_one = || {
        send_udp(
            &pods.a,
            pods.a_end.ip(IpFamily::V4),
            SocketAddr::new(pods.b_end.ip(IpFamily::V4), 9701),
            1,
        );
    };
    poll_until(SETTLE_TIMEOUT, "the plugin to count drops", || {
        drop_one();
        agent.metric("sonde_test_events_seen_total", &[("pod", pods.b.name())])
    });

    // A broken version (its init fails): refused with the reason, the old one keeps running.
    api.apply(bundle_configmap(dir.path(), &name, &spec("fail-init"), ns));
    poll_until(SETTLE_TIMEOUT, "the broken version to be refused", || {
        agent
            .metric(
                "sonde_plugin_errors_total",
                &[("plugin", &name), ("kind", "init")],
            )
            .filter(|v| *v >= 1.0)
    });
    let status = plugin_status(&agent, &name).expect("still listed");
    assert_eq!(status["state"], "running", "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("new version refused: ") && error.contains("fail-init"),
        "{status}"
    );
    assert_eq!(
        agent.metric("sonde_plugin_up", &[("plugin", &name)]),
        Some(1.0)
    );

    // Fixed: the new version replaces the old one (its metric is another).
    api.apply(bundle_configmap(dir.path(), &name, &spec("fields"), ns));
    poll_until(SETTLE_TIMEOUT, "the fixed version to run", || {
        drop_one();
        let text = agent.metrics();
        (text.contains(&format!("# TYPE {fields_metric} counter"))
            && !text.contains("sonde_test_events_seen_total"))
        .then_some(())
    });
    let status = plugin_status(&agent, &name).expect("listed");
    assert_eq!(status["state"], "running", "{status}");
    assert!(status.get("last_error").is_none(), "{status}");

    // Deleted: unloaded.
    api.delete("ConfigMap", ns, &cm_name);
    poll_until(SETTLE_TIMEOUT, "the plugin to be unloaded", || {
        plugin_status(&agent, &name).is_none().then_some(())
    });
    assert!(!agent.metrics().contains(&fields_metric));
}

/// The API server away for longer than `topology.staleAfter`: the agent keeps serving (and
/// stays ready) with what it knows, and says the topology is stale until it answers again.
#[test]
fn a_lost_api_server_makes_the_topology_stale_until_it_answers() {
    let node = format!("stale-node-{}", std::process::id());
    let api = KubeApi::start();
    api.apply(kube_api::node(&node, "192.0.2.10".parse().unwrap()));
    let dir = TempDir::new();
    let agent = agent(&api, dir.path(), &node, "  staleAfter: 2s\n");
    agent.wait_ready(READY_TIMEOUT);
    assert_eq!(agent.metric("sonde_topology_stale", &[]), Some(0.0));
    assert_eq!(agent.get("/readyz").1, "ready\n");

    api.set_down(true);
    let body = poll_until(SETTLE_TIMEOUT, "the topology said to be stale", || {
        let (status, body) = agent.get("/readyz");
        (status == 200 && body.contains("topology: stale: no answer from the API server"))
            .then_some(body)
    });
    assert!(body.contains("topology.staleAfter: 2s"), "{body}");
    // The gauge follows within a second.
    agent.wait_metric_eq("sonde_topology_stale", &[], 1.0, SETTLE_TIMEOUT);

    api.set_down(false);
    poll_until(SETTLE_TIMEOUT, "the topology current again", || {
        (agent.metric("sonde_topology_stale", &[]) == Some(0.0)
            && agent.get("/readyz").1 == "ready\n")
            .then_some(())
    });
}
