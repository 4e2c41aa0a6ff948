//! The plugin interface's versions under real drops: a component built with plain wit-bindgen
//! against `sonde:plugin@0.2.1` that exports only `packet-drop-handler` loads and counts
//! exactly; the same source built here against the frozen `sonde:plugin@0.2.0` (before
//! `tcp_state` was added) does too on this host; one built against the frozen
//! `sonde:plugin@0.1.0` (every handler exported) still does; one that lacks the handler of a
//! probe its manifest subscribes to is refused, naming the export to add, by
//! `sonde plugin check` and by the agent alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::{
    metric_series, poll_until, run_sonde, send_udp, wasm_module, write_bundle, Agent, IpFamily,
    PodPair, TempDir, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 9997;
const DROPS: &str = "sonde_packet_drops_total";

fn agent_with_plugins(plugins: &Path) -> Agent {
    Agent::spawn_yaml(&format!(
        "probes:\n  packet_drop:\n    events: {{enabled: true, ratePerCpu: 0}}\n  tcp_retrans: {{enabled: false}}\n  \
         tcp_reset: {{enabled: false}}\nsinks:\n  stdout: {{enabled: false}}\nplugins:\n  dirs: [{}]\n",
        plugins.display()
    ))
}

fn plugin_status(agent: &Agent, name: &str) -> Option<Value> {
    let (status, body) = agent.get("/api/v1/plugins");
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("/api/v1/plugins is JSON");
    list.as_array()?.iter().find(|p| p["name"] == name).cloned()
}

/// An agent running the test component `<name>-plugin` as a bundle subscribed to
/// `packet_drop` with `metrics`, checked to run as built for `sonde:plugin@<wit>`, and pods
/// that drop UDP to `port`.
fn running_drop_counter(name: &str, port: u16, wit: &str) -> (TempDir, PodPair, Agent) {
    let dir = TempDir::new();
    write_bundle(
        &dir.path().join(name),
        name,
        &wasm_module(&format!("{name}-plugin")),
        "  subscribe: [packet_drop]\n  capabilities: [metrics]\n",
    );
    let pods = PodPair::dropping_udp(port);
    let agent = agent_with_plugins(dir.path());
    agent.wait_ready(READY_TIMEOUT);
    let p = plugin_status(&agent, name).expect("listed");
    assert_eq!(p["state"], "running", "{p}");
    assert_eq!(p["wit"], wit, "{p}");
    (dir, pods, agent)
}

/// Sends 500 datagrams into the DROP rule in rounds, and checks the kernel's count and
/// `metric{pod, reason}` (the plugin's) both read exactly what was sent after each round.
fn drops_counted_exactly(agent: &Agent, pods: &PodPair, port: u16, metric: &str) {
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), port);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    for round in 1..=5 {
        send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 100);
        let total = 100.0 * f64::from(round);
        agent.wait_metric_eq(DROPS, &labels, total, SETTLE_TIMEOUT);
        agent.wait_metric_eq(metric, &labels, total, SETTLE_TIMEOUT);
    }
    // A plugin's series carry the node's name, as the agent's own do.
    let text = agent.metrics();
    let node = |(labels, _): &(Vec<(String, String)>, f64)| {
        labels
            .iter()
            .find(|(k, _)| k == "node")
            .map(|(_, v)| v.clone())
    };
    let ours = node(&metric_series(&text, DROPS)[0]).expect("the agent's series have a node");
    let series = metric_series(&text, metric);
    assert!(
        !series.is_empty() && series.iter().all(|s| node(s).as_ref() == Some(&ours)),
        "node {ours}: {series:?}"
    );
}

#[test]
fn a_plain_wit_bindgen_plugin_with_one_handler_counts_exactly() {
    let (_dir, pods, agent) = running_drop_counter("only-drops", PORT, "0.2.1");
    drops_counted_exactly(&agent, &pods, PORT, "sonde_example_drops_total");
}

/// Builds `tests/plugins/only-drops` as a plugin written before 0.2.1 was: its world naming
/// `@0.2.0` and the frozen `wit/deps/sonde-plugin-0.2.0/` as the package it vendors, as a
/// crate of its own (the workspace's lock file, offline). Returns the component.
fn only_drops_built_against_0_2_0(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = repo.join("tests/plugins/only-drops");
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let write = |p: PathBuf, text: &str| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    };
    let manifest = read(&src.join("Cargo.toml"))
        .replace("version.workspace = true", "version = \"0.1.0\"")
        .replace("edition.workspace = true", "edition = \"2021\"")
        .replace("license.workspace = true", "license = \"Apache-2.0\"");
    write(
        dir.join("Cargo.toml"),
        &format!("{manifest}\n[workspace]\n"),
    );
    write(dir.join("Cargo.lock"), &read(&repo.join("Cargo.lock")));
    write(dir.join("src/lib.rs"), &read(&src.join("src/lib.rs")));
    let world = read(&src.join("wit/world.wit"));
    assert!(world.contains("@0.2.1;"), "{world}");
    write(
        dir.join("wit/world.wit"),
        &world.replace("@0.2.1;", "@0.2.0;"),
    );
    let frozen = read(&repo.join("wit/deps/sonde-plugin-0.2.0/plugin.wit"));
    assert!(frozen.contains("package sonde:plugin@0.2.0;"));
    assert!(!frozen.contains("tcp-state"), "0.2.0 has no tcp_state");
    write(dir.join("wit/deps/sonde-plugin.wit"), &frozen);
    // A target directory of its own, kept between runs: the second build is quick.
    let target = repo.join("target/only-drops-0.2.0");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            "wasm32-wasip2",
        ])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building only-drops against 0.2.0 failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("wasm32-wasip2/release/only_drops_plugin.wasm")
}

/// A plugin built against 0.2.0 runs on this host, whose WIT (0.2.1) has a probe more, and
/// counts exactly: adding a probe is not a breaking change.
#[test]
fn a_plugin_built_against_0_2_0_counts_exactly_on_this_host() {
    let build = TempDir::new();
    let module = only_drops_built_against_0_2_0(build.path());
    let dir = TempDir::new();
    write_bundle(
        &dir.path().join("old-drops"),
        "old-drops",
        &module,
        "  subscribe: [packet_drop]\n  capabilities: [metrics]\n",
    );
    let port = PORT + 3;
    let pods = PodPair::dropping_udp(port);
    let agent = agent_with_plugins(dir.path());
    agent.wait_ready(READY_TIMEOUT);
    let p = plugin_status(&agent, "old-drops").expect("listed");
    assert_eq!(
        (&p["state"], &p["wit"]),
        (&"running".into(), &"0.2.0".into()),
        "{p}"
    );
    drops_counted_exactly(&agent, &pods, port, "sonde_example_drops_total");
}

#[test]
fn a_component_built_for_0_1_0_still_counts_exactly() {
    let (_dir, pods, agent) = running_drop_counter("v0-1", PORT + 1, "0.1.0");
    drops_counted_exactly(&agent, &pods, PORT + 1, "sonde_test_v01_drops_total");
    // Its log says it runs on borrowed time.
    poll_until(SETTLE_TIMEOUT, "the 0.1.0 warning in the log", || {
        agent
            .stderr_text()
            .contains("built for sonde:plugin@0.1.0")
            .then_some(())
    });
}

#[test]
fn a_component_without_a_subscribed_handler_is_refused_naming_the_export() {
    let module = wasm_module("only-drops-plugin");
    let dir = TempDir::new();
    let cases = [
        (
            "resets",
            "  subscribe: [packet_drop, tcp_reset]\n",
            "spec.subscribe has tcp_reset, but the component does not export \
             sonde:plugin/tcp-reset-handler@0.2.1 (add `export sonde:plugin/tcp-reset-handler@0.2.1;` to its world)",
        ),
        (
            "packed",
            "  subscribe: [packet_drop]\n  delivery: packed\n",
            "spec.delivery is packed, but the component does not export sonde:plugin/packed-handler@0.2.1",
        ),
        (
            "configured",
            "  subscribe: [packet_drop]\n  config: {threshold: 3}\n",
            "spec.config is set, but the component does not export sonde:plugin/init@0.2.1",
        ),
        (
            "enricher",
            "  subscribe: [packet_drop]\n  capabilities: [enrich]\n",
            "spec.capabilities has enrich, but the component does not export sonde:plugin/enrich@0.2.1",
        ),
    ];
    for (name, spec, reason) in cases {
        let bundle = dir.path().join(name);
        write_bundle(&bundle, name, &module, spec);
        let out = run_sonde(
            &["plugin", "check", &bundle.display().to_string()],
            Duration::from_secs(60),
        );
        assert!(!out.status.success(), "{name} passed the check");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {name}: {}", out.stderr);
        assert!(lines[0].contains(reason), "{reason}: {}", lines[0]);
    }
    let agent = agent_with_plugins(dir.path());
    agent.wait_ready(READY_TIMEOUT);
    for (name, _, reason) in cases {
        let p = poll_until(SETTLE_TIMEOUT, "the refusal", || {
            plugin_status(&agent, name).filter(|p| p["state"] == "refused")
        });
        assert!(
            p["last_error"].as_str().is_some_and(|e| e.contains(reason)),
            "{reason}: {p}"
        );
    }
}

/// wit/README.md shows the minimal Rust plugin as it is built here: its world and its code.
#[test]
fn the_readme_recipe_is_the_plugin_the_tests_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("wit/README.md")).expect("wit/README.md");
    let block = |lang: &str| -> String {
        let start = readme
            .find(&format!("```{lang}\n"))
            .unwrap_or_else(|| panic!("no {lang} block in wit/README.md"))
            + lang.len()
            + 4;
        readme[start..start + readme[start..].find("```").unwrap()].to_string()
    };
    let plugin = root.join("tests/plugins/only-drops");
    let code = std::fs::read_to_string(plugin.join("src/lib.rs")).unwrap();
    let code: String = code
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        block("rust"),
        code,
        "wit/README.md's Rust block and only-drops/src/lib.rs"
    );
    let world = std::fs::read_to_string(plugin.join("wit/world.wit")).unwrap();
    let world: String = world
        .lines()
        .filter(|l| !l.starts_with("///"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        block("wit"),
        world,
        "wit/README.md's world and only-drops/wit/world.wit"
    );
}
