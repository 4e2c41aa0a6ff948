//! The deployment in deploy/ as the deploy tests see it: the Helm chart rendered and linted by
//! Helm itself (helm-python-sdk, through xtask's `helm` module: the same path as
//! `cargo xtask manifests`), rendered objects read strictly into the Kubernetes API types, and
//! ConfigMaps mounted as kubelet mounts them. Every helper panics with context.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xtask::helm::{Helm, Values};
use xtask::manifests::{CHART, NAMESPACE, RELEASE};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Helm, from the virtualenv `target/helm-venv` that `cargo xtask manifests` uses (created on
/// first use).
pub fn helm() -> &'static Helm {
    static HELM: OnceLock<Helm> = OnceLock::new();
    HELM.get_or_init(|| {
        let venv = crate::bundle::target_dir().join("helm-venv");
        Helm::new(&root(), &venv).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The chart rendered by Helm with `overrides` (YAML) over its values, release `sonde` in
/// namespace `sonde`, as JSON documents in Helm's order.
pub fn render_with(overrides: &str) -> Vec<Value> {
    let rendered = helm()
        .render(
            &root().join(CHART),
            &[Values::Yaml(overrides)],
            RELEASE,
            NAMESPACE,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    rendered
        .documents
        .iter()
        .flat_map(|d| yaml_documents(&d.text, &d.source))
        .collect()
}

/// What `helm install` prints after installing the chart with its default values
/// (`templates/NOTES.txt`).
pub fn notes() -> String {
    helm()
        .render(&root().join(CHART), &[], RELEASE, NAMESPACE)
        .unwrap_or_else(|e| panic!("{e}"))
        .notes
}

/// `helm lint --strict` on the chart with `overrides` (YAML) over its values: Err with the
/// linter's report on any warning or error.
pub fn lint_with(overrides: &str) -> Result<String, String> {
    helm().lint(&root().join(CHART), &[Values::Yaml(overrides)], NAMESPACE)
}

/// Every branch of the templates: bundles of each kind, the monitoring objects over HTTPS, a
/// named ServiceAccount with annotations, pull secrets, pod annotations, Prometheus's
/// permission to read /metrics, SYS_ADMIN and NET_ADMIN (dns).
pub const ALL_OPTIONS: &str =
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
    \x20 hostPaths: [{name: js-plugins, path: /var/lib/sonde/bundles}]\n";

/// The kernel's BTF mounted from sysfs on request.
pub const KERNEL_BTF_SYSFS: &str = "kernelBtf: {sysfs: true}\n";

/// Nodes whose kernel has no BTF: a host folder of BTF files, and the file config btf.path
/// names in it.
pub const KERNEL_BTF_FILES: &str = "kernelBtf: {hostPath: /var/lib/sonde/btf}\n\
    config: {btf: {path: /var/lib/sonde/btf/vmlinux.btf}}\n";

/// The values the DaemonSet test runs the agent with (listening on `port`, the flow probe on
/// interfaces matching `interfaces`): probes that are off by default on (the dashboards show
/// them), netstat read often, every drop of a pod handed to the drop counter (it counts the
/// events it is given; a namespace's event budget would give it 100 a second), a reset budget
/// small enough to suppress some, and two script bundles as ConfigMaps: the example drop
/// counter, and one that fails on every event until it is quarantined.
pub fn daemonset_test_values(port: u16, interfaces: &str) -> String {
    format!(
        "listen: {{port: {port}}}\n\
         config:\n\
         \x20 probes:\n\
         \x20   packet_drop: {{events: {{ratePerNamespace: 0}}}}\n\
         \x20   tcp_reset: {{events: {{ratePerCpu: 1, burst: 1}}}}\n\
         \x20   tcp_rtt: {{enabled: true, sampleInterval: 100ms}}\n\
         \x20   netdev_latency: {{enabled: true}}\n\
         \x20   softirq: {{enabled: true}}\n\
         \x20   netstat: {{interval: 1s}}\n\
         \x20   flow: {{enabled: true, interfaces: ['{interfaces}']}}\n\
         bundles:\n\
         \x20 configMaps:\n\
         \x20 - {{name: drop-counter, configMap: sonde-bundle-drop-counter}}\n\
         \x20 - {{name: failing, configMap: sonde-test-failing}}\n"
    )
}

/// Every set of values the tests render the chart with, by name: the defaults, the
/// prometheus-operator objects of `cargo xtask manifests`, and the option sets above.
pub fn option_sets() -> Vec<(&'static str, String)> {
    vec![
        ("default values", String::new()),
        (
            "monitoring (cargo xtask manifests)",
            xtask::manifests::MONITORING_VALUES.to_string(),
        ),
        ("ALL_OPTIONS", ALL_OPTIONS.to_string()),
        ("KERNEL_BTF_SYSFS", KERNEL_BTF_SYSFS.to_string()),
        ("KERNEL_BTF_FILES", KERNEL_BTF_FILES.to_string()),
        (
            "daemonset_test_values",
            daemonset_test_values(9990, "sondev*"),
        ),
    ]
}

/// The non-empty documents of a YAML stream, as JSON.
pub fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: document {i}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `doc` read into `T` and written back must be `doc` again: k8s-openapi ignores fields it does
/// not know, so a misspelt or misplaced field shows up as dropped.
pub fn strict<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
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
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    pub endpoints: Vec<MonitorEndpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSelector {
    pub match_names: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MonitorEndpoint {
    pub port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub honor_labels: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<MonitorTlsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relabelings: Option<Vec<Relabeling>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MonitorTlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Relabeling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RuleFile,
}

/// A PrometheusRule's spec, which is also a Prometheus rule file.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    pub expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Checks one object strictly against its type; returns its kind.
pub fn check_object(doc: &Value, what: &str) -> String {
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

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The pod's volume a mount names.
pub fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("mount {name} has no volume"))
}

pub fn agent_container(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers
        .iter()
        .find(|c| c.name == "sonde")
        .expect("a container named sonde")
}

/// The PrometheusRule of the committed prometheus-operator manifests.
pub fn prometheus_rule() -> PrometheusRule {
    let path = root().join("deploy/manifests/prometheus-operator/monitoring.yaml");
    let docs = yaml_documents(&read(&path), "monitoring.yaml");
    strict(find(&docs, "PrometheusRule", "sonde"), "PrometheusRule")
}

/// Writes a ConfigMap's keys into `dir` as kubelet mounts them: the files (`data` as text
/// through `rewrite`, `binaryData` decoded) in a timestamped folder, `..data` a symlink to it,
/// and each key a symlink into `..data`.
pub fn mount_configmap(cm: &impl Serialize, dir: &Path, rewrite: impl Fn(&str) -> String) {
    use base64::Engine;
    let cm = serde_json::to_value(cm).expect("a ConfigMap as JSON");
    let data_dir = dir.join("..2026_11_25_00_00_00.1");
    std::fs::create_dir_all(&data_dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", data_dir.display()));
    let text = cm["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| {
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("data {key}: not a string"));
            (key, rewrite(value).into_bytes())
        });
    let binary = cm["binaryData"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| {
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("binaryData {key}: not a string"));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .unwrap_or_else(|e| panic!("binaryData {key}: {e}"));
            (key, bytes)
        });
    for (key, bytes) in text.chain(binary) {
        std::fs::write(data_dir.join(key), bytes)
            .unwrap_or_else(|e| panic!("write {key} into {}: {e}", data_dir.display()));
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
    std::os::unix::fs::symlink("..2026_11_25_00_00_00.1", dir.join("..data")).unwrap();
}
