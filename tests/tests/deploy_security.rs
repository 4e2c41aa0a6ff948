//! What the chart's DaemonSet and RBAC may do: the agent's container keeps only the
//! capabilities the default probes need, the pod passes Pod Security "baseline" but for what a
//! node agent needs (each justified in deploy/README.md), and the RBAC rules are read-only and
//! as narrow as the agent's watches.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;
use sonde_tests::chart::{agent_container, find, read, root, strict, yaml_documents};

fn committed_manifests() -> Vec<Value> {
    yaml_documents(
        &read(&root().join("deploy/manifests/sonde.yaml")),
        "sonde.yaml",
    )
}

/// The default container: not privileged, every capability dropped but the few the default
/// probes need, no privilege escalation.
#[test]
fn daemonset_keeps_only_the_capabilities_the_default_probes_need() {
    let docs = committed_manifests();
    let ds: DaemonSet = strict(find(&docs, "DaemonSet", "sonde"), "DaemonSet");
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
}

/// Least privilege: read-only pods and nodes cluster-wide, ConfigMaps in the namespace.
#[test]
fn rbac_is_read_only_and_narrow() {
    let docs = committed_manifests();
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
    let docs = committed_manifests();
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
