//! `plugin-limits-bench`: what plugins cost the agent's memory when they behave and when they
//! attack, and what the compile cache's check costs at start, printed as Markdown for
//! docs/benchmarks.md ("Plugins at their limits").
//!
//! Memory: three agents, one after another, over the same pod pair and the same traffic
//! (`--rounds` rounds of `--drops` UDP datagrams into a DROP rule; each round waits until the
//! kernel count has them all): with no plugin, with 10 well-behaved plugins (the bench plugin
//! counting drops per pod and reason, each under its own metric prefix) and with 10 hostile
//! ones (the test suite's hostile plugin in modes that grow linear memory, register families,
//! series and events until refused, spin, block in WASI, trap, and a component holding 40
//! extra linear memories). Every plugin has the default budget (`spec.limits.memory`, 32 MiB).
//! After the last round the bench reads the agent's `VmRSS` and `VmHWM` and each plugin's
//! state and errors from `/api/v1/plugins` and `sonde_plugin_errors_total`.
//!
//! Cache: for each component, `sonde plugin check --cache-dir DIR` with an empty cache (it
//! compiles, in a capped child, and fills the cache), then `--repeat` times with the cache
//! filled (it reads the artefact, checks its HMAC and deserializes it), then once with the
//! cached artefact overwritten by garbage (refused, deleted and compiled again). Each is the
//! wall time of the whole command; the first line, a script bundle (no component, no cache),
//! is what starting the command costs.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo build --release --target wasm32-wasip2 -p bench-plugin -p hostile-plugin
//! cargo xtask plugins        # optional: the Python and JavaScript components
//! cargo run --release -p sonde-tests --bin plugin-limits-bench > plugin-limits.md
//! ```
//!
//! Options: `--rounds N` (default 5), `--drops N` (datagrams a round, default 1000),
//! `--repeat N` (checks with a filled cache, median shown; default 5).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::bench::{
    cpu_model, load_average, median, memory_kib, mib, options_or_exit, positive_number,
};
use sonde_tests::{
    core_module_with_memory, metric_value, send_udp, wasm_module, with_core_instances,
    write_bundle, write_script_bundle, Agent, IpFamily, PodPair, TempDir, READY_TIMEOUT,
    SETTLE_TIMEOUT,
};

const PORT: u16 = 9999;
const DROPS: &str = "sonde_packet_drops_total";
/// Each plugin's budget: the manifest's default.
const BUDGET_MIB: u64 = 32;

struct Options {
    rounds: usize,
    drops: usize,
    repeat: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        rounds: 5,
        drops: 1000,
        repeat: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => o.rounds = positive_number(&mut args, "--rounds")?,
            "--drops" => o.drops = positive_number(&mut args, "--drops")?,
            "--repeat" => o.repeat = positive_number(&mut args, "--repeat")?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// The hostile plugin's modes in the hostile set, and the error kinds each should show.
const HOSTILE: [&str; 9] = [
    "memory",
    "families",
    "series",
    "event-flood",
    "log-flood",
    "loop",
    "sleep-handler",
    "poll-handler",
    "trap-handler",
];

fn main() {
    let o = options_or_exit(
        "plugin-limits-bench",
        "[--rounds N] [--drops N] [--repeat N]",
        options(),
    );
    let bench = wasm_module("bench-plugin");
    let hostile = wasm_module("hostile-plugin");
    let load_before = load_average();

    println!("## Plugins at their limits\n");
    println!(
        "Machine: {}, {} CPUs; load average before: {load_before}.\n",
        cpu_model().unwrap_or_else(|| "unknown CPU".into()),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "### Agent memory with 10 plugins ({} rounds of {} drops; budget {BUDGET_MIB} MiB a plugin)\n",
        o.rounds, o.drops
    );
    println!("| plugins | ready after | VmRSS | VmHWM | RSS over no plugins | budgets admitted | states | errors by kind |");
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    let mut base_rss = None;
    for set in ["none", "10 well-behaved", "10 hostile"] {
        let dir = TempDir::new();
        match set {
            "10 well-behaved" => {
                for i in 0..10 {
                    write_bundle(
                        &dir.path().join(format!("good-{i}")),
                        &format!("good-{i}"),
                        &bench,
                        &format!(
                            "  subscribe: [packet_drop]\n  capabilities: [metrics]\n  \
                             config: {{mode: count, metricPrefix: sonde_bench_{i}}}\n"
                        ),
                    );
                }
            }
            "10 hostile" => {
                for mode in HOSTILE {
                    write_bundle(
                        &dir.path().join(mode),
                        &format!("hostile-{mode}"),
                        &hostile,
                        &format!(
                            "  subscribe: [packet_drop]\n  capabilities: [metrics, events]\n  \
                             config: {{mode: {mode}}}\n  limits: {{callTimeout: 50ms}}\n"
                        ),
                    );
                }
                let staging = TempDir::new();
                let grown = staging.path().join("hostile_plugin.wasm");
                let component = std::fs::read(&hostile).expect("the hostile component");
                std::fs::write(
                    &grown,
                    with_core_instances(&component, &core_module_with_memory(16), 40),
                )
                .expect("write the grown component");
                write_bundle(
                    &dir.path().join("memories"),
                    "hostile-memories",
                    &grown,
                    "  subscribe: [packet_drop]\n  capabilities: [metrics]\n  config: {mode: count}\n",
                );
            }
            _ => {}
        }
        let row = measure(&o, dir.path());
        let base = *base_rss.get_or_insert(row.rss);
        println!(
            "| {set} | {:.2} s | {} | {} | {} | {} MiB | {} | {} |",
            row.ready.as_secs_f64(),
            mib(row.rss),
            mib(row.hwm),
            mib(row.rss.saturating_sub(base)),
            row.plugins * BUDGET_MIB,
            row.states,
            row.errors
        );
    }
    println!();

    println!("### The compile cache's check at start (`sonde plugin check --cache-dir`)\n");
    println!(
        "| bundle | component | cached artefact | empty cache (compiles) | filled cache (median of {}) | planted artefact (refused, compiled again) |",
        o.repeat
    );
    println!("|---|---:|---:|---:|---:|---:|");
    cache_rows(&o, &bench, &hostile);
    println!("\nLoad average after: {}.", load_average());
}

struct Row {
    ready: Duration,
    rss: u64,
    hwm: u64,
    plugins: u64,
    states: String,
    errors: String,
}

/// Runs an agent on the bundles in `plugins` under the rounds of drops and measures it.
fn measure(o: &Options, plugins: &Path) -> Row {
    let pods = PodPair::dropping_udp(PORT);
    let started = Instant::now();
    let agent = Agent::spawn_yaml(&format!(
        "probes:\n  packet_drop:\n    events: {{enabled: true, ratePerCpu: 0, ratePerNamespace: 0}}\n  \
         tcp_retrans: {{enabled: false}}\n  tcp_reset: {{enabled: false}}\nsinks:\n  stdout: {{enabled: false}}\n\
         plugins:\n  dirs: [{}]\n",
        plugins.display()
    ));
    agent.wait_ready(READY_TIMEOUT);
    let ready = started.elapsed();
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    for round in 1..=o.rounds {
        send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, o.drops);
        agent.wait_metric(DROPS, &labels, (round * o.drops) as f64, SETTLE_TIMEOUT);
    }
    // Let every plugin take the round: deliveries, restarts after failures.
    std::thread::sleep(Duration::from_secs(3));
    let (rss, hwm) = memory_kib(agent.pid());
    let (status, body) = agent.get("/api/v1/plugins");
    assert_eq!(status, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).expect("/api/v1/plugins is a JSON list");
    let mut states: Vec<String> = list
        .iter()
        .map(|p| p["state"].as_str().unwrap_or("?").to_string())
        .collect();
    states.sort();
    states.dedup_by(|a, b| a == b);
    let counts: Vec<String> = states
        .iter()
        .map(|s| {
            let n = list.iter().filter(|p| p["state"] == s.as_str()).count();
            format!("{n} {s}")
        })
        .collect();
    let metrics = agent.metrics();
    let errors: Vec<String> = [
        "timeout",
        "memory",
        "trap",
        "init",
        "limit",
        "not_granted",
        "invalid",
    ]
    .iter()
    .filter_map(|kind| {
        let n = metric_value(&metrics, "sonde_plugin_errors_total", &[("kind", kind)])?;
        (n > 0.0).then(|| format!("{kind} {n}"))
    })
    .collect();
    // Every plugin admitted holds its budget, running or not; a refused one holds none.
    let held = list.iter().filter(|p| p["state"] != "refused").count() as u64;
    Row {
        ready,
        rss,
        hwm,
        plugins: held,
        states: if counts.is_empty() {
            "-".into()
        } else {
            counts.join(", ")
        },
        errors: if errors.is_empty() {
            "-".into()
        } else {
            errors.join(", ")
        },
    }
}

/// The cache rows: a script bundle for the command's own cost, then each component.
fn cache_rows(o: &Options, bench: &Path, hostile: &Path) {
    let dir = TempDir::new();
    write_script_bundle(
        &dir.path().join("script"),
        "script",
        "fn on_packet_drop(e) { count(\"seen\", e.pod); }\n",
        "  subscribe: [packet_drop]\n",
    );
    let script = time_check(&dir.path().join("script"), &dir.path().join("cache-script"));
    println!(
        "| a script (no component: the command alone) | - | - | {:.0} ms | - | - |",
        ms(script)
    );
    let mut components: Vec<(String, PathBuf)> = vec![
        ("bench plugin (Rust)".into(), bench.to_path_buf()),
        ("hostile plugin (Rust)".into(), hostile.to_path_buf()),
    ];
    for (name, language) in [
        ("drop-budget-js", "JavaScript"),
        ("reset-report-py", "Python"),
    ] {
        // `cargo xtask plugins` builds them into target/bundles/.
        let target = bench
            .ancestors()
            .nth(3)
            .expect("target/wasm32-wasip2/release/");
        let built = target.join("bundles").join(name);
        if let Some(module) = std::fs::read_dir(&built).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "wasm"))
        }) {
            components.push((format!("{name} ({language})"), module));
        }
    }
    for (i, (name, module)) in components.iter().enumerate() {
        let bundle = dir.path().join(format!("b{i}"));
        write_bundle(
            &bundle,
            &format!("b{i}"),
            module,
            "  subscribe: [packet_drop]\n  capabilities: [metrics]\n",
        );
        let cache = dir.path().join(format!("cache-{i}"));
        let cold = time_check(&bundle, &cache);
        let warm = median(
            (0..o.repeat)
                .map(|_| ms(time_check(&bundle, &cache)))
                .collect(),
        );
        let artefact = cached_artefact(&cache);
        let size = std::fs::metadata(&artefact).map_or(0, |m| m.len());
        std::fs::write(&artefact, vec![0x5a; size as usize]).expect("plant an artefact");
        let planted = time_check(&bundle, &cache);
        println!(
            "| {name} | {} | {} | {:.0} ms | {warm:.0} ms | {:.0} ms |",
            mib(std::fs::metadata(module).map_or(0, |m| m.len()) / 1024),
            mib(size / 1024),
            ms(cold),
            ms(planted)
        );
    }
}

/// The one compiled artefact in a cache directory (the key file aside).
fn cached_artefact(cache: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = walk(cache)
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 4096))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one artefact in {}: {files:?}",
        cache.display()
    );
    files.remove(0)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The wall time of `sonde plugin check --cache-dir CACHE BUNDLE`, which must pass.
fn time_check(bundle: &Path, cache: &Path) -> Duration {
    let sonde = std::env::var_os("SONDE_BIN").expect("SONDE_BIN set by options_or_exit");
    let started = Instant::now();
    let out = Command::new(sonde)
        .args(["plugin", "check", "--cache-dir"])
        .arg(cache)
        .arg(bundle)
        .output()
        .expect("run sonde plugin check");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "plugin check {}: {}{}",
        bundle.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
