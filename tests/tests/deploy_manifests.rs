//! The chart in deploy/helm/sonde rendered by Helm: the committed manifests are its rendering
//! with the default values; every object it renders, with any option set, is a Kubernetes
//! object without a dropped or misspelt field; Helm's lint passes in strict mode; and the
//! chart's agent config is one the agent accepts.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};
use sonde_tests::chart::{
    agent_container, check_object, find, lint_with, notes, option_sets, read, render_with, root,
    strict, volume, yaml_documents, ALL_OPTIONS, KERNEL_BTF_FILES, KERNEL_BTF_SYSFS,
};

#[test]
fn manifests_are_the_charts_rendering() {
    let root = root();
    let helm = sonde_tests::chart::helm();
    for out in xtask::manifests::render(helm, &root).unwrap_or_else(|e| panic!("{e}")) {
        let committed = read(&root.join(&out.path));
        assert!(
            committed == out.text,
            "{} is not the chart's rendering: run `cargo xtask manifests`",
            out.path.display()
        );
    }
    // NOTES.txt, which `helm install` prints, renders too.
    let notes = notes();
    assert!(
        notes.contains("rollout status daemonset/sonde") && notes.contains("port 9990"),
        "{notes}"
    );
}

/// `helm lint --strict` finds nothing to warn about, with the default values and with every
/// set of values the tests render (warnings Helm prints while rendering, such as an override
/// whose type is not the chart's, count too).
#[test]
fn chart_passes_helm_lint_strict() {
    let mut failed = Vec::new();
    for (name, values) in option_sets() {
        if let Err(report) = lint_with(&values) {
            failed.push(format!("{name}:\n{report}"));
        }
    }
    assert!(
        failed.is_empty(),
        "helm lint --strict:\n{}",
        failed.join("\n")
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
}

/// Every branch of the templates (bundles of each kind, the monitoring objects, a named
/// ServiceAccount, annotations, pull secrets) renders strict objects.
#[test]
fn chart_options_render_strict_objects() {
    let docs = render_with(ALL_OPTIONS);
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
    let asked = host_paths(&render_with(KERNEL_BTF_SYSFS));
    assert!(
        asked.contains(&("/sys/kernel/btf".to_string(), "Directory".to_string())),
        "{asked:?}"
    );
}

/// Nodes whose kernel has no BTF: a host directory of BTF files mounted where config btf.path
/// finds the file, and that config accepted by the agent.
#[test]
fn kernel_btf_options_render_strict_objects() {
    let docs = render_with(KERNEL_BTF_FILES);
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
