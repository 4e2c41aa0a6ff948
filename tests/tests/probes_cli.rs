//! `sonde probes` explains why a probe cannot load: run without privileges, every probe is
//! listed as not loadable with the reason, and the command still succeeds.

use std::os::unix::process::CommandExt;
use std::process::Command;

use sonde_tests::{poll_until, run_sonde, sonde_bin, TempDir, READY_TIMEOUT};

/// Every eBPF probe of the catalogue, as `sonde probes` lists them.
fn catalogue() -> Vec<&'static str> {
    ebpf_core::CATALOGUE.iter().map(|s| s.name).collect()
}

/// Probes of kernel functions, which need BPF trampolines or kprobes: this repository's
/// development host has neither, Debian's kernels have both (the kernel matrix).
const KERNEL_FUNCTIONS: &[&str] = &["stack_latency"];

/// A probe of kernel functions either loads and says whether as fentry or kprobes, with the
/// hooks of that form, or says that it can do neither.
fn kernel_function_probe_says_how_it_attaches(p: &serde_json::Value) {
    if p["loadable"] == true {
        let attach = p["attach"].as_str().expect("attach");
        let prefixes: &[&str] = match attach {
            "fentry" => &["fentry/", "fexit/", "tp_btf/"],
            "kprobe" => &["kprobe/", "kretprobe/", "tp_btf/"],
            other => panic!("attach {other:?}: {p}"),
        };
        for hook in p["hooks"].as_array().unwrap() {
            let hook = hook.as_str().unwrap();
            assert!(prefixes.iter().any(|x| hook.starts_with(x)), "{p}");
        }
    } else {
        let reason = p["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("its kernel-function hooks attach neither as fentry (")
                && reason.contains(") nor as kprobes ("),
            "{p}"
        );
    }
}

#[test]
fn probes_lists_catalogue_as_root() {
    let out = run_sonde(
        &["probes", "--output", "json"],
        std::time::Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let probes: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON output");
    for name in catalogue() {
        let p = probes
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {probes}"));
        if KERNEL_FUNCTIONS.contains(&name) {
            kernel_function_probe_says_how_it_attaches(p);
            continue;
        }
        if name == "virtio_net" {
            virtio_net_says_why_not(p);
            continue;
        }
        assert_eq!(p["loadable"], true, "{name} should load here as root: {p}");
        let hook = p["hooks"][0].as_str().unwrap();
        assert!(
            hook.starts_with("tp_btf/") || hook.starts_with("tc/"),
            "{p}"
        );
    }
    // Hooks used only where the kernel needs them are listed only there: tcp_reset's kprobes
    // stand in for tcp_send_reset where it passes 2 arguments (before Linux 6.10).
    let tcp_reset = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tcp_reset")
        .unwrap();
    let args = ebpf_core::btf::TypeIndex::kernel()
        .unwrap()
        .tracepoint_args("tcp_send_reset")
        .unwrap();
    let mut expected = vec!["tp_btf/tcp/tcp_send_reset", "tp_btf/tcp/tcp_receive_reset"];
    if args < 3 && tcp_reset["degraded"].is_null() {
        expected.extend(["kprobe/tcp_v4_send_reset", "kprobe/tcp_v6_send_reset"]);
    }
    assert_eq!(
        tcp_reset["hooks"],
        serde_json::json!(expected),
        "{tcp_reset}"
    );
    // TC hooks are attached per interface, and say so.
    let flow = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "flow")
        .unwrap();
    assert_eq!(
        flow["hooks"],
        serde_json::json!(["tc/ingress", "tc/egress"]),
        "{flow}"
    );
}

/// virtio_net hooks kernel functions with kprobes: on a kernel without kprobes (this host's) it
/// cannot load and says so; on one with them, it loads where the virtio_net module is there.
fn virtio_net_says_why_not(p: &serde_json::Value) {
    assert_eq!(
        p["hooks"],
        serde_json::json!([
            "kprobe/virtnet_send_command_reply|virtnet_send_command",
            "kretprobe/virtnet_send_command_reply|virtnet_send_command"
        ]),
        "{p}"
    );
    let reason = p["reason"].as_str().unwrap_or_default();
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert_eq!(p["loadable"], false, "{p}");
        assert!(reason.contains("this kernel has no kprobes"), "{p}");
    } else if p["loadable"] != true {
        // kprobes, but the module is not loaded: neither name is in kallsyms.
        assert!(reason.contains("/proc/kallsyms"), "{p}");
    }
}

/// TC probes say how they will attach: TCX links on this kernel (6.6+) by default, filters
/// on a clsact qdisc with `attach: clsact` in the file given (not degraded: asked for).
#[test]
fn probes_say_how_tc_probes_attach() {
    let row = |args: &[&str], name: &str| -> serde_json::Value {
        let out = run_sonde(args, std::time::Duration::from_secs(60));
        assert!(out.status.success(), "{}", out.stderr);
        let probes: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON output");
        probes
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {probes}"))
            .clone()
    };
    let json = ["probes", "--output", "json"];
    for name in ["flow", "dns"] {
        let p = row(&json, name);
        assert_eq!(p["attach"], "tcx", "{p}");
        assert_eq!(p["degraded"], serde_json::Value::Null, "{p}");
    }
    assert_eq!(row(&json, "packet_drop")["attach"], serde_json::Value::Null);

    let dir = TempDir::new();
    let config = dir.write("sonde.yaml", "probes:\n  flow:\n    attach: clsact\n");
    let config = config.to_str().unwrap();
    let with = ["probes", "--config", config, "--output", "json"];
    let flow = row(&with, "flow");
    assert_eq!(flow["attach"], "clsact", "{flow}");
    assert_eq!(flow["loadable"], true, "{flow}");
    assert_eq!(flow["degraded"], serde_json::Value::Null, "{flow}");
    assert_eq!(row(&with, "dns")["attach"], "tcx");

    let out = run_sonde(
        &["probes", "--config", config],
        std::time::Duration::from_secs(60),
    );
    let flow = out.stdout.lines().find(|l| l.starts_with("flow")).unwrap();
    assert!(flow.contains("tc/ingress,tc/egress (clsact)"), "{flow}");
    let dns = out.stdout.lines().find(|l| l.starts_with("dns")).unwrap();
    assert!(dns.contains("tc/ingress,tc/egress (tcx)"), "{dns}");
}

#[test]
fn probes_says_why_not_without_privileges() {
    let out = probes_as_nobody();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in catalogue() {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"));
        assert!(row.split_whitespace().nth(1) == Some("no"), "{row}");
    }
    // virtio_net's kprobes are looked for first: where it cannot have them it says that
    // instead.
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("virtio_net"));
    lines.next();
    let virtio_why = lines.next().unwrap_or_default();
    let kprobes_missing = !virtio_why.contains("permission denied");
    if kprobes_missing {
        assert!(
            virtio_why.contains("why not: cannot attach a kprobe to virtnet_send_command_reply"),
            "{stdout}"
        );
    }
    assert_eq!(
        stdout
            .matches("why not: permission denied loading eBPF")
            .count(),
        catalogue().len() - usize::from(kprobes_missing),
        "{stdout}"
    );
}

/// `netstat` loads no program: as root it is loadable and shows what it reads; without the
/// right to enter network namespaces it says so.
#[test]
fn netstat_explains_itself() {
    let out = run_sonde(
        &["probes", "--output", "json"],
        std::time::Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let probes: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON output");
    let netstat = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "netstat")
        .unwrap_or_else(|| panic!("netstat not listed: {probes}"));
    assert_eq!(netstat["loadable"], true, "{netstat}");
    assert!(
        netstat["hooks"][0].as_str().unwrap().starts_with("procfs:"),
        "{netstat}"
    );
    assert!(
        netstat["description"]
            .as_str()
            .unwrap()
            .contains("/proc/net in each pod namespace"),
        "{netstat}"
    );

    let out = probes_as_nobody();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("netstat"));
    let row = lines
        .next()
        .unwrap_or_else(|| panic!("netstat not listed:\n{stdout}"));
    // It runs without entering namespaces (through pods' /proc/<pid>/net), degraded.
    assert!(row.split_whitespace().nth(1) == Some("degraded"), "{row}");
    let lacks = lines.next().unwrap_or_default();
    assert!(
        lacks.contains("lacks: cannot enter network namespaces") && lacks.contains("CAP_SYS_ADMIN"),
        "{stdout}"
    );
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .contains("needs: CAP_SYS_ADMIN"),
        "{stdout}"
    );
}

/// `sonde probes` run as user `nobody`, from a copy it may execute wherever the checkout lives.
fn probes_as_nobody() -> std::process::Output {
    let dir = TempDir::new();
    let bin = dir.path().join("sonde");
    std::fs::copy(sonde_bin(), &bin).expect("copy the agent binary");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Another test thread forking while the copy was open for writing holds it open until its
    // child execs: exec fails with ETXTBSY until then.
    poll_until(
        READY_TIMEOUT,
        "the copy to be executable",
        || match Command::new(&bin)
            .arg("probes")
            .uid(65534)
            .gid(65534)
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => None,
            other => Some(other.expect("run sonde probes as nobody")),
        },
    )
}
