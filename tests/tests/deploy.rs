//! The deployment in deploy/: the Helm chart renders to the committed manifests; every
//! manifest is a Kubernetes object without a dropped or misspelt field; the chart's agent
//! config is one the agent accepts; the alert rules pass promtool; the Grafana dashboards are
//! importable; and every metric a dashboard or an alert queries is one the agent really
//! exports, with the agent run the way the DaemonSet runs it (its capabilities, arguments,
//! environment, config and bundle mounts).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sonde_tests::{
    bulk_transfer, connect_and_close, free_local_addr, refused_connects, send_udp, sonde_bin,
    Agent, IpFamily, NodePods, PodPair, TempDir, READY_TIMEOUT, SETTLE_TIMEOUT,
};
use xtask::helm::{Helm, Values};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The non-empty documents of a YAML stream, as JSON.
fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: document {i}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `doc` read into `T` and written back must be `doc` again: k8s-openapi ignores fields it does
/// not know, so a misspelt or misplaced field shows up as dropped.
fn strict<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    let mut diffs = Vec::new();
    json_diff(doc, &back, "", &mut diffs);
    assert!(
        diffs.is_empty(),
        "{what}: not what {} reads back:\n{}",
        std::any::type_name::<T>(),
        diffs.join("\n")
    );
    typed
}

fn json_diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => json_diff(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}: dropped (unknown field?)")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{path}.{k}: added"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                json_diff(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} reads back as {b}")),
        _ => {}
    }
}

// prometheus-operator's CRDs are not in k8s-openapi: the fields the chart uses, strictly.

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace_selector: Option<NamespaceSelector>,
    endpoints: Vec<MonitorEndpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MonitorEndpoint {
    port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    honor_labels: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bearer_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_config: Option<MonitorTlsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relabelings: Option<Vec<Relabeling>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MonitorTlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure_skip_verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Relabeling {
    #[serde(skip_serializing_if = "Option::is_none")]
    source_labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replacement: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: RuleFile,
}

/// A PrometheusRule's spec, which is also a Prometheus rule file.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

/// Checks one object strictly against its type; returns its kind.
fn check_object(doc: &Value, what: &str) -> String {
    let kind = doc["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no kind"))
        .to_string();
    let what = format!("{what} ({kind} {})", doc["metadata"]["name"]);
    match kind.as_str() {
        "Namespace" => drop(strict::<Namespace>(doc, &what)),
        "ServiceAccount" => drop(strict::<ServiceAccount>(doc, &what)),
        "ConfigMap" => drop(strict::<ConfigMap>(doc, &what)),
        "ClusterRole" => drop(strict::<ClusterRole>(doc, &what)),
        "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(doc, &what)),
        "Role" => drop(strict::<Role>(doc, &what)),
        "RoleBinding" => drop(strict::<RoleBinding>(doc, &what)),
        "Service" => drop(strict::<Service>(doc, &what)),
        "DaemonSet" => drop(strict::<DaemonSet>(doc, &what)),
        "ServiceMonitor" => drop(strict::<ServiceMonitor>(doc, &what)),
        "PrometheusRule" => drop(strict::<PrometheusRule>(doc, &what)),
        other => panic!("{what}: unexpected kind {other}"),
    }
    kind
}

/// Helm, from the virtualenv `target/helm-venv` that `cargo xtask manifests` uses (created on
/// first use).
fn helm() -> &'static Helm {
    static HELM: std::sync::OnceLock<Helm> = std::sync::OnceLock::new();
    HELM.get_or_init(|| {
        let exe = std::env::current_exe().expect("cannot find the test executable");
        let target = exe
            .ancestors()
            .find(|p| p.file_name().is_some_and(|n| n == "target"))
            .unwrap_or_else(|| panic!("test executable {} is not under target/", exe.display()));
        Helm::new(&root(), &target.join("helm-venv")).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The chart rendered by Helm with `overrides` (YAML) over its values, as JSON documents.
fn render_with(overrides: &str) -> Vec<Value> {
    let rendered = helm()
        .render(
            &root().join(xtask::manifests::CHART),
            &[Values::Yaml(overrides)],
            "sonde",
            "sonde",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    rendered
        .documents
        .iter()
        .flat_map(|d| yaml_documents(&d.text, &d.source))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The pod's volume a mount names.
fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("mount {name} has no volume"))
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers
        .iter()
        .find(|c| c.name == "sonde")
        .expect("a container named sonde")
}

#[test]
fn manifests_are_the_charts_rendering() {
    let root = root();
    for out in xtask::manifests::render(helm(), &root).unwrap_or_else(|e| panic!("{e}")) {
        let committed = read(&root.join(&out.path));
        assert!(
            committed == out.text,
            "{} is not the chart's rendering: run `cargo xtask manifests`",
            out.path.display()
        );
    }
    // NOTES.txt, which `helm install` prints, renders too.
    let notes = helm()
        .render(&root.join(xtask::manifests::CHART), &[], "sonde", "sonde")
        .unwrap_or_else(|e| panic!("{e}"))
        .notes;
    assert!(
        notes.contains("rollout status daemonset/sonde") && notes.contains("port 9990"),
        "{notes}"
    );
}

#[test]
fn manifests_are_strict_kubernetes_objects() {
    let dir = root().join("deploy/manifests");
    let expected: [(&str, &[&str]); 3] = [
        ("namespace.yaml", &["Namespace"]),
        (
            "sonde.yaml",
            &[
                "ServiceAccount",
                "ConfigMap",
                "ClusterRole",
                "ClusterRole",
                "ClusterRole",
                "ClusterRoleBinding",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Service",
                "DaemonSet",
            ],
        ),
        (
            "prometheus-operator/monitoring.yaml",
            &["PrometheusRule", "ServiceMonitor"],
        ),
    ];
    for (file, kinds) in expected {
        let text = read(&dir.join(file));
        let docs = yaml_documents(&text, file);
        let seen: Vec<String> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| check_object(d, &format!("{file} document {i}")))
            .collect();
        assert_eq!(seen, kinds, "{file}: kinds");
        for d in &docs {
            if d["kind"] != "Namespace" && !d["kind"].as_str().unwrap().starts_with("Cluster") {
                assert_eq!(d["metadata"]["namespace"], "sonde", "{file}: {}", d["kind"]);
            }
        }
    }

    // The example bundles are ConfigMaps, strictly too.
    let examples = root().join("deploy/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).expect("deploy/examples") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let file = path.display().to_string();
            for (i, d) in yaml_documents(&read(&path), &file).iter().enumerate() {
                let kind = check_object(d, &format!("{file} document {i}"));
                assert_eq!(kind, "ConfigMap", "{file}");
                seen += 1;
            }
        }
    }
    assert!(seen >= 4, "{seen} example ConfigMaps");

    let docs = yaml_documents(&read(&dir.join("sonde.yaml")), "sonde.yaml");
    let ds: DaemonSet = strict(find(&docs, "DaemonSet", "sonde"), "DaemonSet");
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("sonde"));
    let c = agent_container(&ds);
    let sc = c.security_context.as_ref().expect("a securityContext");
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    // What the default probes need: no NET_ADMIN (flow and dns are off), no SYS_ADMIN
    // (netstat reads pods through their processes' /proc/<pid>/net).
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "PERFMON", "SYS_PTRACE", "SYSLOG"])
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref()?.path.clone())
            .unwrap_or_default()
    };
    assert_eq!(probe_path(&c.liveness_probe), "/healthz");
    assert_eq!(probe_path(&c.readiness_probe), "/readyz");
    assert!(c
        .args
        .iter()
        .flatten()
        .any(|a| a == "--config=/etc/sonde/config/sonde.yaml"));

    // Least privilege: read-only pods and nodes cluster-wide, ConfigMaps in the namespace.
    let rules = |doc: &Value| -> Vec<(Vec<String>, Vec<String>)> {
        doc["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let list = |k: &str| {
                    let mut v: Vec<String> = r[k]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_string())
                        .collect();
                    v.sort();
                    v
                };
                (list("resources"), list("verbs"))
            })
            .collect()
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules(find(&docs, "ClusterRole", "sonde")),
        vec![(s(&["nodes", "pods"]), s(&["list", "watch"]))]
    );
    assert_eq!(
        rules(find(&docs, "Role", "sonde")),
        vec![(s(&["configmaps"]), s(&["list", "watch"]))]
    );
}

/// Every branch of the templates (bundles of each kind, the monitoring objects, a named
/// ServiceAccount, annotations, pull secrets) renders strict objects.
#[test]
fn chart_options_render_strict_objects() {
    let docs = render_with(
        "serviceAccount: {name: agent, annotations: {example.com/role: sonde}}\n\
         imagePullSecrets: [{name: registry}]\n\
         podAnnotations: {example.com/team: net}\n\
         serviceMonitor: {enabled: true, labels: {release: kube-prometheus}}\n\
         prometheusRule: {enabled: true, labels: {release: kube-prometheus}}\n\
         rbac: {prometheus: {serviceAccount: prometheus-k8s, namespace: monitoring}}\n\
         tls: {enabled: true, secretName: sonde-tls}\n\
         capabilities: {sysAdmin: true}\n\
         config: {probes: {dns: {enabled: true}}}\n\
         bundles:\n\
         \x20 configMaps: [{name: retrans-storm, configMap: sonde-bundle-retrans-storm}]\n\
         \x20 images: [{name: python-plugins, reference: registry.example.com/sonde/bundles:0.1.0}]\n\
         \x20 hostPaths: [{name: js-plugins, path: /var/lib/sonde/bundles}]\n",
    );
    let kinds: BTreeSet<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| check_object(d, &format!("document {i}")))
        .collect();
    assert!(kinds.contains("ServiceMonitor") && kinds.contains("PrometheusRule"));
    // HTTPS: the Secret mounted, the kubelet's probes and the ServiceMonitor over HTTPS.
    let monitor = find(&docs, "ServiceMonitor", "sonde");
    assert_eq!(monitor["spec"]["endpoints"][0]["scheme"], "https");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["tlsConfig"],
        json!({"insecureSkipVerify": true})
    );
    {
        let ds: DaemonSet = strict(find(&docs, "DaemonSet", "sonde"), "DaemonSet");
        let c = agent_container(&ds);
        for probe in [&c.liveness_probe, &c.readiness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let secret = volume(pod, "tls").secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("sonde-tls"));
        assert!(c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "tls" && m.mount_path == "/etc/sonde/tls"));
    }
    // Prometheus's service account may read /metrics, which the agent checks (api.auth).
    let binding = find(&docs, "ClusterRoleBinding", "sonde-metrics-reader");
    assert_eq!(binding["roleRef"]["name"], "sonde-metrics-reader");
    assert_eq!(
        binding["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"})
    );
    let ds: DaemonSet = strict(find(&docs, "DaemonSet", "sonde"), "DaemonSet");
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("agent"));
    let c = agent_container(&ds);
    // dns on: NET_ADMIN (once); capabilities.sysAdmin: SYS_ADMIN, and privilege escalation
    // left unset (Kubernetes refuses false beside CAP_SYS_ADMIN).
    let sc = c.security_context.as_ref().unwrap();
    let added: Vec<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        added,
        [
            "BPF",
            "PERFMON",
            "NET_ADMIN",
            "SYS_ADMIN",
            "SYS_PTRACE",
            "SYSLOG"
        ]
    );
    assert_eq!(sc.allow_privilege_escalation, None);
    for name in ["retrans-storm", "python-plugins", "js-plugins"] {
        let dir = format!("/etc/sonde/bundles/{name}");
        assert!(
            c.args
                .iter()
                .flatten()
                .any(|a| *a == format!("--plugin-dir={dir}")),
            "{name}: no --plugin-dir"
        );
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == dir)
            .unwrap_or_else(|| panic!("{name}: not mounted"));
        assert_eq!(mount.read_only, Some(true));
        let volume = volume(pod, &mount.name);
        match name {
            "retrans-storm" => assert_eq!(
                volume.config_map.as_ref().unwrap().name,
                "sonde-bundle-retrans-storm"
            ),
            "python-plugins" => assert_eq!(
                volume.image.as_ref().unwrap().reference.as_deref(),
                Some("registry.example.com/sonde/bundles:0.1.0")
            ),
            _ => assert_eq!(
                volume.host_path.as_ref().unwrap().path,
                "/var/lib/sonde/bundles"
            ),
        }
    }
}

/// The default DaemonSet has no hostPath that a node may lack (`/sys/kernel/btf` on a kernel
/// built without BTF kept the pod from starting): every hostPath is one the chart creates or
/// one every node has. `kernelBtf.sysfs` mounts it on request.
#[test]
fn default_daemonset_starts_on_nodes_without_btf() {
    let host_paths = |docs: &[Value]| -> Vec<(String, String)> {
        let ds: DaemonSet = strict(find(docs, "DaemonSet", "sonde"), "DaemonSet");
        let pod = ds.spec.unwrap().template.spec.unwrap();
        pod.volumes
            .into_iter()
            .flatten()
            .filter_map(|v| v.host_path)
            .map(|h| (h.path, h.type_.unwrap_or_default()))
            .collect()
    };
    let default = host_paths(&yaml_documents(
        &read(&root().join("deploy/manifests/sonde.yaml")),
        "sonde.yaml",
    ));
    assert_eq!(
        default,
        [("/run/netns".to_string(), "DirectoryOrCreate".to_string())],
        "the default DaemonSet's hostPaths"
    );
    let asked = host_paths(&render_with("kernelBtf: {sysfs: true}\n"));
    assert!(
        asked.contains(&("/sys/kernel/btf".to_string(), "Directory".to_string())),
        "{asked:?}"
    );
}

/// Nodes whose kernel has no BTF: a host directory of BTF files mounted where config btf.path
/// finds the file, and that config accepted by the agent.
#[test]
fn kernel_btf_options_render_strict_objects() {
    let docs = render_with(
        "kernelBtf: {hostPath: /var/lib/sonde/btf}\n\
         config: {btf: {path: /var/lib/sonde/btf/vmlinux.btf}}\n",
    );
    for (i, d) in docs.iter().enumerate() {
        check_object(d, &format!("document {i}"));
    }
    let ds: DaemonSet = strict(find(&docs, "DaemonSet", "sonde"), "DaemonSet");
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let mounts = agent_container(&ds)
        .volume_mounts
        .clone()
        .unwrap_or_default();
    assert!(
        mounts.iter().all(|m| m.mount_path != "/sys/kernel/btf"),
        "{mounts:?}"
    );
    let files = mounts
        .iter()
        .find(|m| m.mount_path == "/var/lib/sonde/btf")
        .unwrap_or_else(|| panic!("BTF files not mounted: {mounts:?}"));
    assert_eq!(files.read_only, Some(true));
    let host = volume(pod, &files.name).host_path.as_ref().unwrap();
    assert_eq!(host.path, "/var/lib/sonde/btf");
    assert!(pod.volumes.iter().flatten().all(|v| v
        .host_path
        .as_ref()
        .is_none_or(|h| h.path != "/sys/kernel/btf")));
    let cm: ConfigMap = strict(find(&docs, "ConfigMap", "sonde"), "ConfigMap");
    let config = sonde::config::AgentConfig::parse(
        &cm.data.as_ref().unwrap()["sonde.yaml"],
        "the chart's sonde.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.btf.path, "/var/lib/sonde/btf/vmlinux.btf");
}

/// The ConfigMap's config is the agent's embedded default but for the compiled-component
/// cache, and the agent parses it (unknown keys would be refused).
#[test]
fn chart_config_is_the_agents_default() {
    let docs = yaml_documents(
        &read(&root().join("deploy/manifests/sonde.yaml")),
        "sonde.yaml",
    );
    let cm: ConfigMap = strict(find(&docs, "ConfigMap", "sonde"), "ConfigMap");
    let text = &cm.data.as_ref().unwrap()["sonde.yaml"];
    let parsed = sonde::config::AgentConfig::parse(text, "the chart's sonde.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, sonde::config::AgentConfig::embedded());
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool (apt-get install prometheus): {e}"));
    assert!(
        out.status.success(),
        "promtool {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn prometheus_rule() -> PrometheusRule {
    let path = root().join("deploy/manifests/prometheus-operator/monitoring.yaml");
    let docs = yaml_documents(&read(&path), "monitoring.yaml");
    strict(find(&docs, "PrometheusRule", "sonde"), "PrometheusRule")
}

#[test]
fn alert_rules_pass_promtool() {
    let rule = prometheus_rule();
    let dir = TempDir::new();
    let file = dir.write(
        "rules.yaml",
        &serde_yaml::to_string(&rule.spec).expect("serializes"),
    );
    promtool(&["check", "rules", &file.display().to_string()]);

    // The plain rule file holds the same groups.
    let plain = root().join("deploy/prometheus/sonde-alerts.yaml");
    promtool(&["check", "rules", &plain.display().to_string()]);
    let groups: RuleFile = serde_yaml::from_str(&read(&plain)).expect("a rule file");
    assert_eq!(groups, rule.spec);
    let alerts: Vec<&str> = rule
        .spec
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .filter_map(|r| r.alert.as_deref())
        .collect();
    for alert in [
        "SondePodPacketDrops",
        "SondeTCPRetransmitStorm",
        "SondePluginQuarantined",
        "SondeEventsLost",
        "SondeSeriesCapReached",
    ] {
        assert!(alerts.contains(&alert), "{alert} missing from {alerts:?}");
    }

    // The alerts fire on the series they are about (promtool's rule unit tests).
    let tests = root().join("deploy/prometheus/sonde-alerts.test.yaml");
    promtool(&["test", "rules", &tests.display().to_string()]);
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("deploy/grafana");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let v = serde_json::from_str(&read(&p)).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every PromQL query of the dashboards (panels and variables) and of the alert rules, with
/// where it is.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, d) in dashboards() {
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    format!(
                        "{name}: panel {:?}",
                        p["title"].as_str().unwrap_or_default()
                    ),
                    t["expr"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                out.push((
                    format!("{name}: variable {}", v["name"]),
                    v["query"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    for g in prometheus_rule().spec.groups {
        for r in g.rules {
            out.push((format!("alert {}", r.alert.unwrap_or_default()), r.expr));
        }
    }
    out
}

#[test]
fn dashboards_are_importable() {
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let boards = dashboards();
    let names: Vec<&str> = boards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "sonde-flows.json",
            "sonde-node.json",
            "sonde-plugins.json",
            "sonde-pod.json"
        ]
    );
    let mut uids = BTreeSet::new();
    for (name, d) in &boards {
        assert!(
            d["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Sonde / ")),
            "{name}: title"
        );
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{name}: uid"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some(),
            "{name}: schemaVersion"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        let var_names: BTreeSet<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
        let source = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .expect("datasource variable");
        assert_eq!(source["type"], "datasource", "{name}");
        assert_eq!(source["query"], "prometheus", "{name}");
        let wanted: &[&str] = if *name == "sonde-plugins.json" {
            &["node", "plugin"]
        } else if *name == "sonde-node.json" {
            &["node"]
        } else {
            &["node", "namespace", "pod"]
        };
        for w in wanted {
            assert!(var_names.contains(w), "{name}: no variable {w}");
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(v["datasource"], ds, "{name}: variable {}", v["name"]);
        }
        let mut ids = BTreeSet::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: panel id of {title}"
            );
            assert!(
                p["gridPos"]["w"].as_u64().is_some(),
                "{name}: {title}: gridPos"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"], ds, "{name}: {title}");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {title}: no query");
            for t in targets {
                assert_eq!(t["datasource"], ds, "{name}: {title}");
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "{name}: {title}: empty query");
                // Every Grafana variable a query uses exists (or is built in).
                for var in grafana_variables(expr) {
                    assert!(
                        var.starts_with("__") || var_names.contains(var.as_str()),
                        "{name}: {title}: ${var} is not a variable of the dashboard"
                    );
                }
            }
        }
    }
}

fn grafana_variables(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push(name);
    }
    out
}

/// The metric names a PromQL expression reads: identifiers outside strings, label matchers,
/// ranges and grouping clauses that are neither functions nor keywords. `label_values(m, l)`
/// (a Grafana variable query) reads `m`.
fn metric_names(expr: &str) -> Vec<String> {
    let expr = expr.trim();
    if let Some(inner) = expr
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
    {
        let metric = inner.rsplit_once(',').map_or(inner, |(m, _)| m);
        return metric_names(metric);
    }
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // Followed by a parenthesised list of label names.
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: char| {
        while *i < chars.len() && chars[*i] != close {
            if chars[*i] == '"' {
                *i += 1;
                while *i < chars.len() && chars[*i] != '"' {
                    *i += if chars[*i] == '\\' { 2 } else { 1 };
                }
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            skip_to(&mut i, '}');
        } else if c == '[' {
            skip_to(&mut i, ']');
        } else if c == '$' {
            // A Grafana variable.
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = chars.get(j) == Some(&'(');
            // `sum by (...) (...)`: an aggregation whose grouping comes first.
            let next: String = chars[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let aggregation = next == "by" || next == "without";
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = j;
                    skip_to(&mut i, ')');
                }
            } else if !call && !aggregation && !KEYWORDS.contains(&word.as_str()) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn promql_metric_names() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, side) (rate(sonde_x_bucket{node=~"$node", a="b}"}[$__rate_interval]))) / on (pod) group_left sum(y) > 0.5 and z offset 5m"#
        ),
        ["sonde_x_bucket", "y", "z"]
    );
    assert_eq!(
        metric_names(r#"label_values(sonde_a{node=~"$node"}, namespace)"#),
        ["sonde_a"]
    );
    assert_eq!(metric_names("sum(rate(a[5m])) by (pod) > 1e3"), ["a"]);
}

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

/// Writes a ConfigMap's keys as kubelet mounts them: the files in a timestamped folder, `..data`
/// a symlink to it, and each key a symlink into `..data`.
fn mount_configmap(cm: &Value, dir: &Path, rewrite: &dyn Fn(&str) -> String) {
    let data_dir = dir.join("..2026_11_25_00_00_00.1");
    std::fs::create_dir_all(&data_dir).unwrap();
    assert!(
        cm.get("binaryData").is_none(),
        "only data keys are mounted here"
    );
    for (key, value) in cm["data"].as_object().expect("data") {
        std::fs::write(data_dir.join(key), rewrite(value.as_str().unwrap())).unwrap();
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
    std::os::unix::fs::symlink("..2026_11_25_00_00_00.1", dir.join("..data")).unwrap();
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
            mount_configmap(cm, here, &rewrite);
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
    let flow = format!(
        "\x20   flow: {{enabled: true, interfaces: ['{}']}}\n",
        node_pods.interface_pattern()
    );
    // Probes that are off by default on (the dashboards show them), netstat read often, every
    // drop of a pod handed to the drop counter below (it counts the events it is given; a
    // namespace's event budget would give it 100 a second), and
    // two script bundles as ConfigMaps: the example drop counter, and one that fails on every
    // event until it is quarantined.
    let docs = render_with(&format!(
        "listen: {{port: {port}}}\n\
         config:\n\
         \x20 probes:\n\
         \x20   packet_drop: {{events: {{ratePerNamespace: 0}}}}\n\
         \x20   tcp_reset: {{events: {{ratePerCpu: 1, burst: 1}}}}\n\
         \x20   tcp_rtt: {{enabled: true, sampleInterval: 100ms}}\n\
         \x20   netdev_latency: {{enabled: true}}\n\
         \x20   softirq: {{enabled: true}}\n\
         \x20   netstat: {{interval: 1s}}\n\
         {flow}\
         bundles:\n\
         \x20 configMaps:\n\
         \x20 - {{name: drop-counter, configMap: sonde-bundle-drop-counter}}\n\
         \x20 - {{name: failing, configMap: sonde-test-failing}}\n"
    ));
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

/// What the Kubernetes Pod Security "baseline" level forbids in a pod, as its checks define
/// them (host namespaces, privileged, capabilities beyond the default set, hostPath volumes,
/// host ports, AppArmor and seccomp Unconfined, SELinux types and users, /proc mount, unsafe
/// sysctls), each violation named.
fn baseline_violations(pod: &PodSpec) -> BTreeSet<String> {
    const DEFAULT_CAPS: &[&str] = &[
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let mut v = BTreeSet::new();
    for (set, name) in [
        (pod.host_network, "hostNetwork"),
        (pod.host_pid, "hostPID"),
        (pod.host_ipc, "hostIPC"),
    ] {
        if set == Some(true) {
            v.insert(name.to_string());
        }
    }
    for vol in pod.volumes.iter().flatten() {
        if let Some(h) = &vol.host_path {
            v.insert(format!("hostPath {}", h.path));
        }
    }
    // Seccomp and AppArmor, at the pod's level or a container's.
    let unconfined =
        |v: &mut BTreeSet<String>,
         seccomp: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
         apparmor: Option<&k8s_openapi::api::core::v1::AppArmorProfile>| {
            if seccomp.is_some_and(|p| p.type_ == "Unconfined") {
                v.insert("seccompProfile Unconfined".into());
            }
            if apparmor.is_some_and(|p| p.type_ == "Unconfined") {
                v.insert("appArmorProfile Unconfined".into());
            }
        };
    if let Some(sc) = pod.security_context.as_ref() {
        unconfined(
            &mut v,
            sc.seccomp_profile.as_ref(),
            sc.app_armor_profile.as_ref(),
        );
        for s in sc.sysctls.iter().flatten() {
            v.insert(format!("sysctl {}", s.name));
        }
    }
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            if p.host_port.is_some_and(|h| h != 0) {
                v.insert(format!("hostPort {}", p.host_port.unwrap()));
            }
        }
        let Some(sc) = &c.security_context else {
            continue;
        };
        if sc.privileged == Some(true) {
            v.insert("privileged".into());
        }
        for cap in sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
            if !DEFAULT_CAPS.contains(&cap.as_str()) {
                v.insert(format!("capability {cap}"));
            }
        }
        unconfined(
            &mut v,
            sc.seccomp_profile.as_ref(),
            sc.app_armor_profile.as_ref(),
        );
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            v.insert("procMount".into());
        }
        if let Some(se) = &sc.se_linux_options {
            if se.user.is_some() || se.role.is_some() {
                v.insert("seLinuxOptions user/role".into());
            }
        }
    }
    v
}

/// The rendered DaemonSet passes Pod Security "baseline" but for what a node agent needs, and
/// each of those is justified in deploy/README.md.
#[test]
fn daemonset_meets_pod_security_baseline_but_for_what_is_justified() {
    let docs = yaml_documents(
        &read(&root().join("deploy/manifests/sonde.yaml")),
        "sonde.yaml",
    );
    let ds: DaemonSet = strict(find(&docs, "DaemonSet", "sonde"), "DaemonSet");
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let violations = baseline_violations(&pod);
    let justified = BTreeSet::from(
        [
            "hostNetwork",
            "hostPID",
            "hostPath /run/netns",
            "capability BPF",
            "capability PERFMON",
            "capability SYS_PTRACE",
            "capability SYSLOG",
            "appArmorProfile Unconfined",
        ]
        .map(String::from),
    );
    assert_eq!(violations, justified);
    let readme = read(&root().join("deploy/README.md"));
    for v in &violations {
        let word = v.rsplit(' ').next().unwrap();
        assert!(
            readme.contains(&format!("`{word}`")) || readme.contains(word),
            "deploy/README.md does not justify {v}"
        );
    }
}
