//! `sonde-bench`: what Sonde costs on this machine, printed as Markdown for docs/benchmarks.md.
//!
//! It measures, with real probes on the real kernel (needs root and `target/release/sonde`):
//! - the time to parse BTF, load and attach every probe of the catalogue, in this process and
//!   as `sonde run` from spawn to its "probe attached" logs and to `/readyz` = 200;
//! - the kernel cost per event of each program (`run_time_ns / run_cnt` from the kernel's BPF
//!   run-time statistics) with events off, rate-limited (the default) and unlimited;
//! - a UDP flood from one pinned sender core into an iptables DROP rule in another pod: the
//!   sender's rate without and with the agent, whether the agent drains every drop event (ring
//!   buffer, sink queue and stdout all accounted for), its CPU and memory, and, when the flood
//!   loses events, the highest paced rate that loses none; then the same unlimited floods with
//!   three first-party plugins loaded (when `cargo xtask plugins` has built them), for the
//!   agent's memory at its peak;
//! - the `dist` binary's size and the image's (its root filesystem as `deploy/rootfs.sh`
//!   builds it).
//!
//! `cargo build --release -p sonde && cargo run --release -p sonde-tests --bin sonde-bench`
//! (as root). Options: `--duration SECS` (each flood, default 5), `--repeat N` (full-speed
//! floods per configuration, default 3), `--search-steps N` (bisection steps for the zero-loss
//! rate, default 6), `--ring-buffer-size BYTES` (the event modes' ring buffers, default the
//! agent's 1Mi), `--allow-other-agents` (run even though other Sonde probes are loaded; their
//! cost then shows in the sender's rate), `--cold-build` (first time `cargo build --release`
//! of the agent in a fresh target folder, for the build-time target). docs/benchmarks.md says what each number means.
//!
//! It ends with a table of the performance targets it measures, PASS or FAIL (and those no
//! bench measures yet, with why). `sonde-bench all` then runs iperf-bench (when iperf3 is
//! installed) and plugin-bench (Rust plugins; build them first, see plugin-bench), prints their
//! reports, and gathers every bench's targets into one table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sonde_tests::bench::{
    cpu_seconds, median, memory_kib, mib, option_value, positive_number, print_targets,
    program_stats, programs_of, require_root_and_sonde, target_rows, thousands, udp_flood, verdict,
    Flood, FloodLength, Floor, FloorHook, Machine, RunTimeStats, Target, FLOOR_TARGET_NS, PAYLOAD,
    TARGETS_HEADER,
};
use sonde_tests::{
    free_local_addr, http_get, in_netns, metric_value, refused_connects, start_agent, IpFamily,
    PodPair, TempDir, READY_TIMEOUT,
};

/// UDP port in pod B behind the DROP rule.
const DROP_PORT: u16 = 9999;
/// TCP port in pod B with no listener: every connect is answered with a reset.
const CLOSED_PORT: u16 = 9998;
/// TCP port in pod B whose incoming segments are dropped at random, for retransmits.
const LOSSY_PORT: u16 = 9997;
const LOSSY_PROBABILITY: &str = "0.01";
/// Refused connects made while the programs' run-time statistics are on.
const RESETS: usize = 2000;
/// How long the lossy TCP stream runs while the run-time statistics are on.
const LOSSY_STREAM: Duration = Duration::from_secs(2);
/// Rounds of the in-process load and attach.
const LOAD_ROUNDS: usize = 5;
/// The agent has drained a flood once its stdout has been quiet this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
const DRAIN_POLL: Duration = Duration::from_millis(20);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The agent folds kernel counters into /metrics every second; two equal scrapes this far
/// apart, after the drain, mean the counts are final.
const COUNTERS_POLL: Duration = Duration::from_millis(1200);
const PROGRAM_NAMES: [&str; 4] = [
    "packet_drop",
    "tcp_retrans",
    "tcp_send_reset",
    "tcp_receive_reset",
];

fn main() {
    let opts = Options::parse();
    preflight(&opts);
    let machine = Machine::read();
    eprintln!(
        "sonde-bench: {} on {}",
        machine.sonde_version, machine.kernel
    );
    let cold_build = opts.cold_build.then(|| {
        eprintln!("sonde-bench: a cold `cargo build --release` in a fresh target folder");
        time_cold_build()
    });

    eprintln!("sonde-bench: loading and attaching the catalogue in-process ({LOAD_ROUNDS} rounds)");
    let in_process = in_process_attach();

    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {DROP_PORT} -j DROP"),
    );
    pods.b.iptables(
        IpFamily::V4,
        &format!(
            "-A INPUT -p tcp --dport {LOSSY_PORT} -m statistic --mode random \
             --probability {LOSSY_PROBABILITY} -j DROP"
        ),
    );
    let bench = Bench {
        pods,
        duration: opts.duration,
        repeat: opts.repeat,
        sender_cpu: machine.sender_cpu(),
    };

    eprintln!("sonde-bench: floods without an agent");
    let mut baseline = bench.floods();
    eprintln!(
        "sonde-bench: floods with an empty program on {}",
        FloorHook::KfreeSkb.name()
    );
    let floor = bench.floor();

    let mut modes = Vec::new();
    for mode in [Mode::Counting, Mode::EventsDefault, Mode::EventsUnlimited] {
        eprintln!("sonde-bench: agent with {}", mode.label());
        modes.push(bench.run_mode(mode, &opts, None));
    }
    let plugins = plugins_dir();
    match &plugins {
        Some(dir) => {
            let mode = Mode::EventsWithPlugins;
            eprintln!("sonde-bench: agent with {}", mode.label());
            modes.push(bench.run_mode(mode, &opts, Some(dir.path())));
        }
        None => eprintln!(
            "sonde-bench: no agent with plugins: build them with `cargo build --release \
             --target wasm32-wasip2 --workspace` and `cargo xtask plugins`"
        ),
    }
    eprintln!("sonde-bench: floods without an agent, again");
    baseline.extend(bench.floods());
    let foreign_after = modes
        .iter()
        .map(|m| m.foreign)
        .chain([foreign_programs(&HashSet::new()).len()])
        .max()
        .unwrap_or(0);
    let report = Report {
        machine,
        duration: opts.duration,
        in_process,
        baseline,
        floor,
        modes,
        foreign_after,
    };
    print_report(&report);
    let mut targets = targets(&report);
    targets.extend(size_targets(&report.machine));
    targets.push(cold_build_target(cold_build.as_ref()));
    print_targets("### Targets (sonde-bench)", &targets);
    if opts.all {
        every_target(&targets);
    }
}

/// The performance targets this bench measures (docs/benchmarks.md), and those it cannot.
fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(counting) = r.modes.iter().find(|m| m.mode == Mode::Counting) {
        let (floor_ns, _) = r.floor.kernel;
        let (probe_ns, _) = counting.kernel.programs["packet_drop"];
        let over = probe_ns - floor_ns;
        out.push(Target::new(
            format!(
                "packet_drop counting: at most {FLOOR_TARGET_NS:.0} ns per event over an empty \
                 program on {}",
                FloorHook::KfreeSkb.name()
            ),
            format!("{over:+.0} ns ({probe_ns:.0} against {floor_ns:.0})"),
            Some(over <= FLOOR_TARGET_NS),
        ));
    }
    if let Some(unlimited) = r.modes.iter().find(|m| m.mode == Mode::EventsUnlimited) {
        let per_event: Vec<f64> = unlimited
            .full
            .iter()
            .filter_map(Drain::cpu_us_per_event)
            .collect();
        if !per_event.is_empty() {
            let us = median(per_event.clone());
            out.push(Target::new(
                format!(
                    "draining events: at most {DRAIN_TARGET_US} µs of agent CPU per event \
                     (events unlimited, stdout)"
                ),
                format!(
                    "{us:.2} µs (median of {} full-speed floods)",
                    per_event.len()
                ),
                Some(us <= DRAIN_TARGET_US),
            ));
        }
        let lossy = unlimited.full.iter().filter(|d| !d.zero_loss()).count();
        out.push(Target::new(
            "zero loss at the highest rate one sender core makes (events unlimited)",
            format!(
                "loss in {lossy} of {} floods, up to {} events/s",
                unlimited.full.len(),
                thousands(best_rate(unlimited.full.iter().map(|d| &d.flood)))
            ),
            Some(lossy == 0),
        ));
    }
    if let Some(default) = r.modes.iter().find(|m| m.mode == Mode::EventsDefault) {
        out.push(Target::new(
            format!("RSS when ready at most {READY_RSS_TARGET_MIB} MiB (default config)"),
            mib(default.idle_rss_kib),
            Some(default.idle_rss_kib <= READY_RSS_TARGET_MIB << 10),
        ));
    }
    let flooded = "RSS under a flood with three plugins at most 40 MiB";
    out.push(
        match r.modes.iter().find(|m| m.mode == Mode::EventsWithPlugins) {
            Some(m) => Target::new(
                flooded,
                format!(
                    "{} at its peak after ready ({} after the floods; {} while starting)",
                    mib(m.hwm_kib),
                    mib(m.end_rss_kib),
                    mib(m.start_hwm_kib)
                ),
                Some(m.hwm_kib <= FLOODED_RSS_TARGET_MIB << 10),
            ),
            None => Target::new(
                flooded,
                "not measured: the first-party plugins are not built (`cargo xtask plugins`)",
                None,
            ),
        },
    );
    out
}

/// The binary's size: the `dist` build's when there is one (what the image ships), else the
/// `release` build's, which has symbols and no LTO and is not what the target is about.
fn size_targets(m: &Machine) -> Vec<Target> {
    let size_mb = |p: &Path| std::fs::metadata(p).ok().map(|md| md.len() as f64 / 1e6);
    let dist = m
        .sonde_bin
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("dist").join("sonde"));
    let binary = format!("the agent binary at most {BINARY_TARGET_MB:.0} MB (`dist` profile)");
    let size = match dist.as_deref().and_then(|p| size_mb(p).map(|mb| (p, mb))) {
        Some((path, mb)) => Target::new(
            binary,
            format!("{mb:.1} MB (`{}`)", path.display()),
            Some(mb <= BINARY_TARGET_MB),
        ),
        None => Target::new(
            binary,
            format!(
                "not measured: no `target/dist/sonde` (`cargo build --profile dist -p sonde`); \
                 `release` is {}",
                size_mb(&m.sonde_bin).map_or("missing".to_string(), |mb| format!("{mb:.1} MB"))
            ),
            None,
        ),
    };
    let image = "the container image (deploy/Dockerfile) at most 40 MB";
    let image = match dist.as_deref().filter(|p| p.exists()) {
        Some(path) => match image_mb(path) {
            Ok(mb) => Target::new(
                image,
                format!("{mb:.1} MB (its root filesystem, `deploy/rootfs.sh` on `dist`)"),
                Some(mb <= IMAGE_TARGET_MB),
            ),
            Err(e) => Target::new(image, format!("not measured: {e}"), None),
        },
        None => Target::new(
            image,
            "not measured: no `target/dist/sonde` to build it from",
            None,
        ),
    };
    vec![size, image]
}

/// The time of `cargo build --release` of the workspace's default members (the agent) into a
/// fresh target folder (`--cold-build`, run before anything else: it takes minutes of both
/// cores).
fn time_cold_build() -> Result<Duration, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = TempDir::new();
    let started = Instant::now();
    let out = std::process::Command::new("cargo")
        .args(["build", "--release"])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", target.path())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "cargo build --release failed: {}",
            stderr.lines().last().unwrap_or("")
        ));
    }
    Ok(started.elapsed())
}

fn cold_build_target(measured: Option<&Result<Duration, String>>) -> Target {
    let name = "a cold release build no slower than about 13 minutes";
    match measured {
        Some(Ok(took)) => Target::new(
            name,
            format!(
                "{} min {} s (`cargo build --release`, fresh target folder)",
                took.as_secs() / 60,
                took.as_secs() % 60
            ),
            Some(*took <= COLD_BUILD_TARGET),
        ),
        Some(Err(e)) => Target::new(name, format!("not measured: {e}"), None),
        None => Target::new(name, "not measured: pass `--cold-build`", None),
    }
}

/// A folder with the bundles of [`PLUGINS`], `None` when they are not built.
fn plugins_dir() -> Option<TempDir> {
    let dir = TempDir::new();
    for name in PLUGINS {
        let from = sonde_tests::built_bundle(name)?;
        sonde_tests::copy_bundle(&from, &dir.path().join(name)).ok()?;
    }
    Some(dir)
}

/// The image's size, uncompressed (what `docker images` shows, less a few KiB of tar
/// headers): its root filesystem as the Dockerfile builds it, with `deploy/rootfs.sh`, from
/// `binary`.
fn image_mb(binary: &Path) -> Result<f64, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rootfs.sh");
    let dir = TempDir::new();
    let rootfs = dir.path().join("rootfs");
    let out = std::process::Command::new(&script)
        .arg(binary)
        .arg(&rootfs)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    fn bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    }
    Ok(bytes(&rootfs) as f64 / 1e6)
}

/// `all`: runs the other benches with targets (iperf-bench, when iperf3 is installed, and
/// plugin-bench for the Rust plugins), prints their reports, then every target in one table.
fn every_target(own: &[Target]) {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .expect("sonde-bench's own directory");
    let mut rows: Vec<String> = own.iter().map(Target::row).collect();
    let others: [(&str, &[&str], &str); 2] = [
        ("iperf-bench", &[], "iperf3"),
        ("plugin-bench", &["--only-rust", "--repeat", "3"], ""),
    ];
    for (bench, args, needs) in others {
        if !needs.is_empty()
            && std::process::Command::new(needs)
                .arg("--version")
                .output()
                .is_err()
        {
            rows.push(format!("| every target of {bench} | not measured: {needs} is not installed | not measured |"));
            continue;
        }
        eprintln!("sonde-bench all: running {bench} {}", args.join(" "));
        let out = std::process::Command::new(dir.join(bench))
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                println!("## {bench}\n\n{text}");
                rows.extend(target_rows(&text));
            }
            Ok(out) => rows.push(format!(
                "| every target of {bench} | not measured: it failed ({}) | not measured |",
                out.status
            )),
            Err(e) => rows.push(format!(
                "| every target of {bench} | not measured: cannot run {} ({e}): build it with \
                 `cargo build --release -p sonde-tests --bins` | not measured |",
                dir.join(bench).display()
            )),
        }
    }
    println!("## Every target\n");
    println!("{TARGETS_HEADER}\n|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

struct Options {
    duration: Duration,
    search_steps: u32,
    /// Full-speed floods per configuration; the sender's best rate is reported, as other load
    /// on the machine can only slow it.
    repeat: u32,
    /// `events.ringBufferSize` of the agents with events, when not the default.
    ring_buffer: Option<u32>,
    allow_other_agents: bool,
    /// Also run the other benches with targets and print every target in one table.
    all: bool,
    /// Time a cold `cargo build --release` of the agent (minutes; in a fresh target folder).
    cold_build: bool,
}

impl Options {
    fn parse() -> Options {
        let mut opts = Options {
            duration: Duration::from_secs(5),
            search_steps: 6,
            repeat: 3,
            ring_buffer: None,
            allow_other_agents: false,
            all: false,
            cold_build: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let args = &mut args;
            match arg.as_str() {
                "--duration" => {
                    let secs =
                        option_value(args, "--duration", "a positive number of seconds", |s| {
                            *s > 0.0
                        });
                    opts.duration = Duration::from_secs_f64(secs.unwrap_or_else(|e| usage(&e)));
                }
                "--search-steps" => {
                    opts.search_steps = option_value(args, "--search-steps", "a number", |_| true)
                        .unwrap_or_else(|e| usage(&e));
                }
                "--repeat" => {
                    opts.repeat = positive_number(args, "--repeat").unwrap_or_else(|e| usage(&e));
                }
                "--ring-buffer-size" => {
                    let bytes =
                        option_value(args, "--ring-buffer-size", "a number of bytes", |_| true);
                    opts.ring_buffer = Some(bytes.unwrap_or_else(|e| usage(&e)));
                }
                "--allow-other-agents" => opts.allow_other_agents = true,
                "--cold-build" => opts.cold_build = true,
                "all" => opts.all = true,
                "-h" | "--help" => {
                    println!("{}", USAGE);
                    std::process::exit(0);
                }
                other => usage(&format!("unknown argument {other}")),
            }
        }
        opts
    }
}

const USAGE: &str = "usage: sonde-bench [all] [--duration SECS] [--repeat N] [--search-steps N] \
     [--ring-buffer-size BYTES] [--allow-other-agents] [--cold-build]\n\
    `all` also runs iperf-bench and plugin-bench and prints every target in one table.\n\
    `--cold-build` times `cargo build --release` of the agent in a fresh target folder first.\n\
    Run as root after `cargo build --release -p sonde`; SONDE_BIN overrides the agent binary.";

fn usage(reason: &str) -> ! {
    eprintln!("sonde-bench: {reason}\n{USAGE}");
    std::process::exit(2);
}

/// Refuses to run without root, without the agent binary, or beside other Sonde probes (they
/// would fire on the same drops and slow the sender).
fn preflight(opts: &Options) {
    if let Err(reason) = require_root_and_sonde() {
        usage(&reason);
    }
    let foreign = foreign_programs(&HashSet::new());
    if !foreign.is_empty() {
        let agents = sonde_processes();
        let msg = format!(
            "{} Sonde programs are already loaded ({}); Sonde processes: {}",
            foreign.len(),
            foreign
                .iter()
                .map(|(id, name)| format!("{name} #{id}"))
                .collect::<Vec<_>>()
                .join(", "),
            if agents.is_empty() {
                "none found (another loader?)".to_string()
            } else {
                agents.join("; ")
            },
        );
        if opts.allow_other_agents {
            eprintln!("sonde-bench: warning: {msg}");
        } else {
            usage(&format!("{msg}; stop them or pass --allow-other-agents"));
        }
    }
}

/// Loaded programs with a Sonde program's name (as the kernel truncates it) not in `ours`.
fn foreign_programs(ours: &HashSet<u32>) -> Vec<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let name = info.name_as_str()?.to_string();
            let sonde = !name.is_empty() && PROGRAM_NAMES.iter().any(|p| p.starts_with(&name));
            (sonde && !ours.contains(&info.id())).then_some((info.id(), name))
        })
        .collect()
}

/// `pid: command line` of running `sonde` processes.
fn sonde_processes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let exe = Path::new(args.first()?).file_name()?.to_str()?;
            (exe == "sonde").then(|| format!("{pid}: {}", args.join(" ")))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Load and attach in this process

struct InProcessAttach {
    /// Per round: BTF parse, then each probe's load + attach, in catalogue order.
    rounds: Vec<(Duration, Vec<(&'static str, Duration)>)>,
}

impl InProcessAttach {
    fn total(round: &(Duration, Vec<(&'static str, Duration)>)) -> Duration {
        round.0 + round.1.iter().map(|(_, d)| *d).sum::<Duration>()
    }
}

/// Parses the kernel BTF and loads and attaches every probe with default settings, as the
/// agent does at start, `LOAD_ROUNDS` times (unloading in between).
fn in_process_attach() -> InProcessAttach {
    let mut rounds = Vec::new();
    for _ in 0..LOAD_ROUNDS {
        let start = Instant::now();
        let btf = ebpf_core::btf::KernelBtf::load().unwrap_or_else(|e| panic!("{e}"));
        let btf_time = start.elapsed();
        let mut loaded = Vec::new();
        let mut times = Vec::new();
        for spec in ebpf_core::CATALOGUE {
            let start = Instant::now();
            let probe = match ebpf_core::LoadedProbe::load(
                spec,
                &btf,
                &ebpf_core::ProbeSettings::default(),
            ) {
                Ok(probe) => probe,
                // A probe on kernel functions this kernel can neither kprobe nor trace with
                // fentry (virtio_net and stack_latency on a kernel without kprobes and
                // trampolines, both off by default in the agent) is left out.
                Err(
                    e @ (ebpf_core::ProbeError::Kprobe { .. }
                    | ebpf_core::ProbeError::FnModes { .. }),
                ) => {
                    eprintln!("probe {} left out: {e}", spec.name);
                    continue;
                }
                Err(e) => panic!("probe {} cannot load: {e}", spec.name),
            };
            times.push((spec.name, start.elapsed()));
            loaded.push(probe);
        }
        drop(loaded);
        rounds.push((btf_time, times));
    }
    InProcessAttach { rounds }
}

// ---------------------------------------------------------------------------------------------
// The agent

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `events.enabled: false`: the kernel counts, nothing reaches the ring buffer.
    Counting,
    /// The shipped default: events rate-limited to 1000/s per CPU in the kernel.
    EventsDefault,
    /// `ratePerCpu: 0`: every drop becomes an event on stdout.
    EventsUnlimited,
    /// As `EventsUnlimited`, with three first-party plugins loaded ([`PLUGINS`]), which see
    /// every event: what the agent holds under a flood with plugins.
    EventsWithPlugins,
}

/// The plugins of [`Mode::EventsWithPlugins`]: the first-party Rust ones, as `cargo xtask
/// plugins` builds them.
const PLUGINS: [&str; 3] = ["drop-explainer", "retrans-storm", "label-enricher"];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Counting => "counting only",
            Mode::EventsDefault => "events, 1000/s/CPU (default)",
            Mode::EventsUnlimited => "events, unlimited",
            Mode::EventsWithPlugins => "events, unlimited, three plugins",
        }
    }

    /// The agent's config; `ring_buffer` overrides `events.ringBufferSize` (default 1Mi).
    fn yaml(self, ring_buffer: Option<u32>) -> String {
        let ring = ring_buffer.map_or(String::new(), |b| format!(", ringBufferSize: {b}"));
        let events = match self {
            Mode::Counting => "{ enabled: false }".to_string(),
            // The default config's values, spelt out.
            Mode::EventsDefault => {
                format!(
                    "{{ enabled: true, ratePerCpu: 1000, burst: 1000, ratePerNamespace: 100, \
                     burstPerNamespace: 100{ring} }}"
                )
            }
            Mode::EventsUnlimited | Mode::EventsWithPlugins => {
                format!("{{ enabled: true, ratePerCpu: 0, burst: 1000{ring} }}")
            }
        };
        let mut yaml = "node: sonde-bench\nprobes:\n".to_string();
        for probe in ["packet_drop", "tcp_retrans", "tcp_reset"] {
            yaml.push_str(&format!(
                "  {probe}:\n    enabled: true\n    events: {events}\n"
            ));
        }
        yaml.push_str("sinks:\n  stdout: { enabled: true }\ntopology:\n  netnsDir: /run/netns\n");
        yaml
    }
}

/// `sonde run` as a child. Unlike the harness's `Agent`, it keeps no stdout lines: a reader
/// counts the drop events for pod B as they arrive (millions of lines would not fit in memory,
/// and storing them would compete with the agent for the CPU). Stderr lines are kept with
/// their arrival time.
struct BenchAgent {
    child: Child,
    addr: SocketAddr,
    spawned: Instant,
    ready_after: Duration,
    events_for_b: Arc<AtomicU64>,
    stderr: Arc<Mutex<Vec<(Instant, String)>>>,
    readers: Vec<JoinHandle<()>>,
    _dir: TempDir,
}

impl BenchAgent {
    fn spawn(yaml: &str, pod_b: &str) -> BenchAgent {
        let dir = TempDir::new();
        let config = dir.write("sonde.yaml", yaml);
        let addr = free_local_addr();
        let spawned = Instant::now();
        let mut child = start_agent(&config, addr);
        let events_for_b = Arc::new(AtomicU64::new(0));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            count_events(
                child.stdout.take().unwrap(),
                pod_b,
                Arc::clone(&events_for_b),
            ),
            keep_lines(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        let mut agent = BenchAgent {
            child,
            addr,
            spawned,
            ready_after: Duration::ZERO,
            events_for_b,
            stderr,
            readers,
            _dir: dir,
        };
        agent.ready_after = agent.wait_ready();
        agent
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` every 2 ms (the harness's 50 ms would blur a 300 ms target) and returns
    /// the time from spawn to its first 200.
    fn wait_ready(&mut self) -> Duration {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent exited ({status}); its stderr:\n{}",
                    self.stderr_text()
                );
            }
            if let Ok((200, _)) = http_get(self.addr, "/readyz") {
                return self.spawned.elapsed();
            }
            if self.spawned.elapsed() > READY_TIMEOUT {
                panic!(
                    "the agent was not ready after {READY_TIMEOUT:?}; its stderr:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Spawn to the arrival of the last "probe attached" log line, if every probe logged one.
    fn attached_after(&self) -> Option<Duration> {
        let lines = self.stderr.lock().unwrap();
        let attached: Vec<Instant> = lines
            .iter()
            .filter(|(_, l)| l.contains("probe attached"))
            .map(|(t, _)| *t)
            .collect();
        (attached.len() == ebpf_core::CATALOGUE.len())
            .then(|| {
                attached
                    .iter()
                    .max()
                    .map(|t| t.duration_since(self.spawned))
            })
            .flatten()
    }

    fn stderr_text(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        let tail = &lines[lines.len().saturating_sub(100)..];
        tail.iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn events_for_b(&self) -> u64 {
        self.events_for_b.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> String {
        match http_get(self.addr, "/metrics") {
            Ok((200, body)) => body,
            other => panic!(
                "GET /metrics: {other:?}; agent stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    fn counters(&self, pod_b: &str) -> Counters {
        let text = self.metrics();
        let value = |name: &str, labels: &[(&str, &str)]| {
            metric_value(&text, name, labels).unwrap_or(0.0) as u64
        };
        let probe = [("probe", "packet_drop")];
        Counters {
            drops: value(
                "sonde_packet_drops_total",
                &[("pod", pod_b), ("reason", "NETFILTER_DROP")],
            ),
            lost: value("sonde_events_lost_total", &probe),
            suppressed: value("sonde_events_suppressed_total", &probe),
            sink_dropped: value(
                "sonde_consumer_events_dropped_total",
                &[("consumer", "sink:stdout")],
            ),
        }
    }

    /// Scrapes until two scrapes agree (the drain is over by then), and returns the counts.
    fn final_counters(&self, pod_b: &str) -> Counters {
        let mut last = self.counters(pod_b);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            thread::sleep(COUNTERS_POLL);
            let now = self.counters(pod_b);
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// CPU time (user + system, all threads) in seconds.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// write(2) and friends the agent has made (`syscw` of /proc/PID/io).
    fn write_calls(&self) -> u64 {
        let path = format!("/proc/{}/io", self.pid());
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
            .lines()
            .find_map(|l| l.strip_prefix("syscw:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no syscw in {path}"))
    }

    /// Resident memory by kind of mapping, from /proc/PID/smaps.
    fn memory_breakdown(&self) -> Breakdown {
        let path = format!("/proc/{}/smaps", self.pid());
        let smaps =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        let mut out = Breakdown::default();
        let mut kind = 0;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                // A mapping's header: range perms offset dev inode [name].
                let name = words.nth(4).unwrap_or("");
                kind = if name == "[heap]" {
                    0
                } else if name.starts_with("anon_inode:bpf") {
                    2
                } else if name.starts_with('/') {
                    3
                } else {
                    1
                };
            } else if first == "Rss:" {
                let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                match kind {
                    0 => out.heap += kib,
                    1 => out.other_anon += kib,
                    2 => out.bpf += kib,
                    _ => out.files += kib,
                }
            }
        }
        out
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.pid())
    }

    /// The kernel ids of the agent's programs, from the bpf-prog descriptors it holds, with the
    /// catalogue's (untruncated) program names.
    fn programs(&self) -> Vec<(&'static str, u32)> {
        let ids = programs_of(self.pid());
        let mut programs = Vec::new();
        for info in aya::programs::loaded_programs().filter_map(Result::ok) {
            if !ids.contains(&info.id()) {
                continue;
            }
            let kernel_name = info.name_as_str().unwrap_or("");
            if let Some(name) = PROGRAM_NAMES
                .iter()
                .find(|p| !kernel_name.is_empty() && p.starts_with(kernel_name))
            {
                programs.push((*name, info.id()));
            }
        }
        assert_eq!(
            programs.len(),
            PROGRAM_NAMES.len(),
            "expected the agent (pid {}) to hold one program each of {PROGRAM_NAMES:?}, found {programs:?}",
            self.pid()
        );
        programs
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Resident KiB by mapping: the main malloc arena, other anonymous memory (thread arenas and
/// stacks), BPF maps mapped into the agent (ring buffers: their data pages are mapped twice,
/// so they count double), and files (the binary, libc).
#[derive(Clone, Copy, Debug, Default)]
struct Breakdown {
    heap: u64,
    other_anon: u64,
    bpf: u64,
    files: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    /// `sonde_packet_drops_total{pod=B, reason=NETFILTER_DROP}`
    drops: u64,
    /// `sonde_events_lost_total{probe=packet_drop}`: ring buffer full.
    lost: u64,
    /// `sonde_events_suppressed_total{probe=packet_drop}`: the kernel's rate limit.
    suppressed: u64,
    /// `sonde_consumer_events_dropped_total{consumer=sink:stdout}`: the sink's queue full.
    sink_dropped: u64,
}

impl Counters {
    fn since(self, before: Counters) -> Counters {
        Counters {
            drops: self.drops - before.drops,
            lost: self.lost - before.lost,
            suppressed: self.suppressed - before.suppressed,
            sink_dropped: self.sink_dropped - before.sink_dropped,
        }
    }
}

/// Counts stdout lines that are NETFILTER_DROP events of pod `pod`.
fn count_events(
    stream: impl Read + Send + 'static,
    pod: &str,
    count: Arc<AtomicU64>,
) -> JoinHandle<()> {
    let pod_field = format!("\"pod\":\"{pod}\"");
    thread::Builder::new()
        .name("agent stdout".into())
        .spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 20, stream);
            let mut line = Vec::with_capacity(1024);
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if let Ok(text) = std::str::from_utf8(&line) {
                    if text.contains(&pod_field) && text.contains("\"reason\":\"NETFILTER_DROP\"") {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                line.clear();
            }
        })
        .expect("cannot spawn the stdout reader")
}

fn keep_lines(
    stream: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<(Instant, String)>>>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name("agent stderr".into())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                into.lock().unwrap().push((Instant::now(), line));
            }
        })
        .expect("cannot spawn the stderr reader")
}

// ---------------------------------------------------------------------------------------------
// Traffic and phases

struct Bench {
    pods: PodPair,
    duration: Duration,
    repeat: u32,
    sender_cpu: usize,
}

/// One flood with the agent running: the agent's side of it.
#[derive(Clone, Copy, Debug)]
struct Drain {
    flood: Flood,
    counted: Counters,
    events: u64,
    /// Agent CPU from the start of the flood to its last event, as a fraction of one core.
    cpu: f64,
    /// From the end of the flood to the last event on stdout.
    lag: Duration,
    /// write(2) calls the agent made from the start of the flood to the end of the drain.
    writes: u64,
    /// Whether the agent was asked to emit events.
    events_expected: bool,
}

impl Drain {
    /// Drops counted in pod B that neither reached stdout as events nor show in a loss or
    /// suppression counter: silent loss, which should be 0. Those counters are probe-wide, so
    /// drops elsewhere on the node while they move can make this negative.
    fn missing(&self) -> i64 {
        if !self.events_expected {
            return 0;
        }
        let c = &self.counted;
        c.drops as i64
            - c.suppressed as i64
            - c.lost as i64
            - c.sink_dropped as i64
            - self.events as i64
    }

    /// The agent's CPU per event it emitted, in µs, over the flood and the drain after it.
    fn cpu_us_per_event(&self) -> Option<f64> {
        (self.events > 0).then(|| {
            self.cpu * (self.flood.elapsed + self.lag).as_secs_f64() * 1e6 / self.events as f64
        })
    }

    fn zero_loss(&self) -> bool {
        self.counted.lost == 0 && self.counted.sink_dropped == 0 && self.missing() <= 0
    }
}

/// Floods with only an empty program on packet_drop's hook, and that program's cost per run.
struct FloorResult {
    floods: Vec<Flood>,
    /// (ns per run, runs) over one full-speed flood, run-time statistics on.
    kernel: (f64, u64),
}

struct KernelCost {
    /// Program name → (ns per run, runs) over its workload.
    programs: BTreeMap<&'static str, (f64, u64)>,
}

struct ModeResult {
    mode: Mode,
    ready_after: Duration,
    attached_after: Option<Duration>,
    idle_rss_kib: u64,
    /// After the full-speed floods, before the kernel-cost phase.
    flooded_rss_kib: u64,
    full: Vec<Drain>,
    kernel: KernelCost,
    /// Paced floods of the zero-loss search, in the order run.
    search: Vec<Drain>,
    end_rss_kib: u64,
    /// VmHWM when ready: the peak while starting.
    start_hwm_kib: u64,
    /// VmHWM at the end, reset when ready: the peak under the floods.
    hwm_kib: u64,
    breakdown: Breakdown,
    /// Other Sonde programs loaded at the end of the mode (another agent or test running).
    foreign: usize,
}

impl Bench {
    fn pod_b(&self) -> &str {
        self.pods.b.name()
    }

    /// `repeat` full-speed floods.
    fn floods(&self) -> Vec<Flood> {
        (0..self.repeat)
            .map(|_| {
                let f = self.flood(None);
                eprintln!("sonde-bench:   sent {} ({:.0}/s)", f.sent, f.rate());
                f
            })
            .collect()
    }

    /// UDP datagrams from pod A into the DROP rule in pod B, from one thread pinned to one CPU,
    /// for the bench's duration: as fast as it goes, or paced at `target` per second.
    fn flood(&self, target: Option<u64>) -> Flood {
        let length = FloodLength::Time(self.duration);
        udp_flood(&self.pods, DROP_PORT, self.sender_cpu, target, length)
    }

    /// A flood with the agent running, followed by waiting for the agent to drain it.
    fn drain(&self, agent: &BenchAgent, target: Option<u64>, events_expected: bool) -> Drain {
        let pod_b = self.pod_b();
        let before = agent.counters(pod_b);
        let events_before = agent.events_for_b();
        let (start, cpu_start) = (Instant::now(), agent.cpu_seconds());
        let writes_start = agent.write_calls();
        let flood = self.flood(target);
        let flood_end = Instant::now();
        // The last moment stdout moved, and the agent's CPU time then.
        let (mut last_change, mut cpu_at_last) = (flood_end, agent.cpu_seconds());
        let mut last_events = agent.events_for_b();
        let deadline = flood_end + DRAIN_TIMEOUT;
        while last_change.elapsed() < DRAIN_QUIET && Instant::now() < deadline {
            thread::sleep(DRAIN_POLL);
            let events = agent.events_for_b();
            if events != last_events {
                last_events = events;
                last_change = Instant::now();
                cpu_at_last = agent.cpu_seconds();
            }
        }
        let writes = agent.write_calls() - writes_start;
        let counted = agent.final_counters(pod_b).since(before);
        let drain = Drain {
            writes,
            events_expected,
            flood,
            counted,
            events: agent.events_for_b() - events_before,
            cpu: (cpu_at_last - cpu_start) / last_change.duration_since(start).as_secs_f64(),
            lag: last_change.duration_since(flood_end),
        };
        eprintln!(
            "sonde-bench:   {}: sent {} ({:.0}/s), counted {}, events {}, suppressed {}, lost {}, sink dropped {}, cpu {:.1} %, lag {} ms, write(2) calls {}",
            target.map_or("full speed".to_string(), |t| format!("paced {t}/s")),
            flood.sent,
            flood.rate(),
            counted.drops,
            drain.events,
            counted.suppressed,
            counted.lost,
            counted.sink_dropped,
            drain.cpu * 100.0,
            drain.lag.as_millis(),
            drain.writes,
        );
        drain
    }

    /// The floor: full-speed floods with an empty program on `kfree_skb` and no agent, then its
    /// cost per run over one more flood with run-time statistics on.
    fn floor(&self) -> FloorResult {
        let floor = Floor::attach(&[FloorHook::KfreeSkb], &[]);
        let floods = self.floods();
        let ids = HashSet::from([floor.id(FloorHook::KfreeSkb)]);
        let stats = RunTimeStats::enable();
        let before = program_stats(&ids)[&floor.id(FloorHook::KfreeSkb)];
        self.flood(None);
        let after = program_stats(&ids)[&floor.id(FloorHook::KfreeSkb)];
        drop(stats);
        FloorResult {
            floods,
            kernel: per_run(before, after),
        }
    }

    /// Per-event cost of each program: run-time statistics on, a full-speed flood for
    /// packet_drop, then refused connects (tcp_send_reset, tcp_receive_reset) and a lossy TCP
    /// stream (tcp_retrans).
    fn kernel_cost(&self, agent: &BenchAgent) -> KernelCost {
        let programs = agent.programs();
        let ids: HashSet<u32> = programs.iter().map(|(_, id)| *id).collect();
        let stats = RunTimeStats::enable();
        let before = program_stats(&ids);
        self.flood(None);
        let after_flood = program_stats(&ids);
        refused_connects(
            &self.pods.a,
            SocketAddr::new(IpAddr::V4(self.pods.b_end.ipv4), CLOSED_PORT),
            RESETS,
        );
        self.lossy_stream();
        let after_tcp = program_stats(&ids);
        drop(stats);
        let mut out = BTreeMap::new();
        for (name, id) in &programs {
            let (from, to) = if *name == "packet_drop" {
                (&before, &after_flood)
            } else {
                (&after_flood, &after_tcp)
            };
            out.insert(*name, per_run(from[id], to[id]));
        }
        // Let the events of this phase drain before the next one starts counting.
        self.wait_quiet(agent);
        KernelCost { programs: out }
    }

    fn wait_quiet(&self, agent: &BenchAgent) {
        let mut last = agent.events_for_b();
        let mut since = Instant::now();
        while since.elapsed() < DRAIN_QUIET {
            thread::sleep(DRAIN_POLL);
            let now = agent.events_for_b();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        agent.final_counters(self.pod_b());
    }

    /// A bulk TCP stream from pod A to pod B through a rule that drops 1 % of B's incoming
    /// segments, so that A retransmits.
    fn lossy_stream(&self) {
        let b_ip = IpAddr::V4(self.pods.b_end.ipv4);
        let addr = SocketAddr::new(b_ip, LOSSY_PORT);
        let listener = in_netns(self.pods.b.name(), || {
            TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("cannot listen on {addr} in pod B: {e}"))
        });
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept the lossy stream");
            let mut buf = vec![0u8; 1 << 16];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        });
        let mut client = in_netns(self.pods.a.name(), || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("cannot connect to {addr} from pod A: {e}"))
        });
        let chunk = vec![0u8; 1 << 16];
        let start = Instant::now();
        while start.elapsed() < LOSSY_STREAM {
            client.write_all(&chunk).expect("write the lossy stream");
        }
        drop(client);
        server.join().expect("the lossy stream's server panicked");
    }

    /// The agent in `mode`, loading the bundles in `plugins` when given.
    fn run_mode(&self, mode: Mode, opts: &Options, plugins: Option<&Path>) -> ModeResult {
        let mut yaml = mode.yaml(opts.ring_buffer);
        if let Some(dir) = plugins {
            yaml += &format!("plugins:\n  dirs: [{}]\n", dir.display());
        }
        let agent = BenchAgent::spawn(&yaml, self.pod_b());
        let attached_after = agent.attached_after();
        let idle_rss_kib = sonde_tests::bench::settled_rss_kib(agent.pid());
        let (_, start_hwm_kib) = agent.memory_kib();
        sonde_tests::bench::reset_peak_rss(agent.pid());
        let events = mode != Mode::Counting;
        let full: Vec<Drain> = (0..self.repeat)
            .map(|_| self.drain(&agent, None, events))
            .collect();
        let (flooded_rss_kib, _) = agent.memory_kib();
        eprintln!("sonde-bench:   kernel cost per event (run-time statistics on)");
        let kernel = self.kernel_cost(&agent);
        let mut search = Vec::new();
        if mode == Mode::EventsUnlimited && !full.iter().all(Drain::zero_loss) {
            // Bisect between nothing and the full-speed rate for the highest rate with no loss.
            let (mut good, mut bad) = (0.0, best_rate(full.iter().map(|d| &d.flood)));
            for _ in 0..opts.search_steps {
                let target = ((good + bad) / 2.0) as u64;
                let run = self.drain(&agent, Some(target), events);
                if run.zero_loss() {
                    good = target as f64;
                } else {
                    bad = target as f64;
                }
                search.push(run);
            }
        }
        let (end_rss_kib, hwm_kib) = agent.memory_kib();
        let breakdown = agent.memory_breakdown();
        let ours: HashSet<u32> = agent.programs().iter().map(|(_, id)| *id).collect();
        let foreign = foreign_programs(&ours).len();
        ModeResult {
            mode,
            ready_after: agent.ready_after,
            attached_after,
            idle_rss_kib,
            flooded_rss_kib,
            full,
            kernel,
            search,
            end_rss_kib,
            start_hwm_kib,
            hwm_kib,
            breakdown,
            foreign,
        }
    }
}

/// (ns per run, runs) between two readings of a program's (run_time_ns, run_cnt); NaN
/// without runs.
fn per_run((t0, n0): (u64, u64), (t1, n1): (u64, u64)) -> (f64, u64) {
    let runs = n1 - n0;
    let ns = if runs == 0 {
        f64::NAN
    } else {
        (t1 - t0) as f64 / runs as f64
    };
    (ns, runs)
}

fn best_rate<'a>(floods: impl Iterator<Item = &'a Flood>) -> f64 {
    floods.map(Flood::rate).fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------------
// Report

struct Report {
    machine: Machine,
    duration: Duration,
    in_process: InProcessAttach,
    /// Without an agent, before and after the runs with one.
    baseline: Vec<Flood>,
    floor: FloorResult,
    modes: Vec<ModeResult>,
    foreign_after: usize,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The most agent CPU an event may cost on the unlimited stdout path.
const DRAIN_TARGET_US: f64 = 0.4;
/// The most the agent may hold when ready on the default config.
const READY_RSS_TARGET_MIB: u64 = 24;
/// The most the `dist` binary may weigh.
const BINARY_TARGET_MB: f64 = 25.0;
/// The most the agent may hold at its peak under floods with three plugins.
const FLOODED_RSS_TARGET_MIB: u64 = 40;
/// The cold release build on this machine when the targets were set.
const COLD_BUILD_TARGET: Duration = Duration::from_secs(13 * 60);
/// The container image, uncompressed.
const IMAGE_TARGET_MB: f64 = 40.0;

/// packet_drop's counting path against an empty program on the same hook, in the kernel's
/// run-time statistics and at the sender, with the target's verdict.
fn print_floor(r: &Report, base: f64, floor_rate: f64) {
    let Some(counting) = r.modes.iter().find(|m| m.mode == Mode::Counting) else {
        return;
    };
    let (floor_ns, floor_runs) = r.floor.kernel;
    let (probe_ns, probe_runs) = counting.kernel.programs["packet_drop"];
    let counting_rate = best_rate(counting.full.iter().map(|d| &d.flood));
    let over = probe_ns - floor_ns;
    println!(
        "### Counting at the floor (target: at most {FLOOR_TARGET_NS:.0} ns per event over an empty program)\n"
    );
    println!(
        "| program on tp_btf/{} | kernel cost per run | sender: added per drop |\n|---|---|---|",
        FloorHook::KfreeSkb.name()
    );
    println!(
        "| empty program | {floor_ns:.0} ns ({} runs) | {:.0} ns |",
        thousands(floor_runs as f64),
        (1.0 / floor_rate - 1.0 / base) * 1e9
    );
    println!(
        "| packet_drop, counting only | {probe_ns:.0} ns ({} runs) | {:.0} ns |",
        thousands(probe_runs as f64),
        (1.0 / counting_rate - 1.0 / base) * 1e9
    );
    println!(
        "| **packet_drop over the floor** | **{over:.0} ns: {}** | {:.0} ns |",
        verdict(over <= FLOOR_TARGET_NS),
        (1.0 / counting_rate - 1.0 / floor_rate) * 1e9
    );
    println!();
}

fn print_report(r: &Report) {
    let m = &r.machine;
    let secs = r.duration.as_secs_f64();
    m.print_first_rows();
    println!(
        "| agent | {} (`{}`), {} |",
        m.sonde_version,
        m.sonde_bin.display(),
        m.source
    );
    println!(
        "| flood | UDP, {} B payload, one sender thread pinned to CPU {}, {secs:.0} s per run |",
        PAYLOAD.len(),
        m.sender_cpu()
    );
    println!();

    println!("### Load and attach\n");
    let rounds = &r.in_process.rounds;
    let totals: Vec<Duration> = rounds.iter().map(InProcessAttach::total).collect();
    println!(
        "| step | median of {} | first round |\n|---|---|---|",
        rounds.len()
    );
    println!(
        "| parse kernel BTF | {} | {} |",
        ms(median(rounds.iter().map(|r| r.0).collect())),
        ms(rounds[0].0)
    );
    for (i, (name, first)) in rounds[0].1.iter().enumerate() {
        println!(
            "| load + attach {name} | {} | {} |",
            ms(median(rounds.iter().map(|r| r.1[i].1).collect())),
            ms(*first)
        );
    }
    println!(
        "| **all probes, in-process (BTF + load + attach)** | **{}** | {} |",
        ms(median(totals.clone())),
        ms(totals[0])
    );
    let attached: Vec<Duration> = r.modes.iter().filter_map(|m| m.attached_after).collect();
    let ready: Vec<Duration> = r.modes.iter().map(|m| m.ready_after).collect();
    if !attached.is_empty() {
        println!(
            "| `sonde run`: spawn → last \"probe attached\" log (median of {}) | {} | {} |",
            attached.len(),
            ms(median(attached.clone())),
            ms(attached[0])
        );
    }
    println!(
        "| `sonde run`: spawn → `/readyz` 200 (median of {}) | {} | {} |",
        ready.len(),
        ms(median(ready.clone())),
        ms(ready[0])
    );
    println!();

    println!("### Kernel cost per event (`run_time_ns / run_cnt`, run-time statistics on)\n");
    print!("| program (hook) | workload |");
    for mode in &r.modes {
        print!(" {} |", mode.mode.label());
    }
    println!();
    println!("|---|---|{}", "---|".repeat(r.modes.len()));
    let hooks: HashMap<&str, String> = ebpf_core::CATALOGUE
        .iter()
        .flat_map(|s| {
            s.hooks.iter().map(|h| match h.point {
                ebpf_core::HookPoint::TpBtf { tracepoint, .. } => {
                    (h.program, format!("tp_btf/{tracepoint}"))
                }
                ebpf_core::HookPoint::Tc(_)
                | ebpf_core::HookPoint::Kprobe { .. }
                | ebpf_core::HookPoint::Fentry { .. } => (h.program, h.to_string()),
            })
        })
        .collect();
    for name in PROGRAM_NAMES {
        let workload = match name {
            "packet_drop" => format!("{secs:.0} s UDP flood into DROP"),
            "tcp_retrans" => format!(
                "{}-s TCP stream, {LOSSY_PROBABILITY} loss",
                LOSSY_STREAM.as_secs()
            ),
            _ => format!("{RESETS} refused connects"),
        };
        print!(
            "| {name} ({}) | {workload} |",
            hooks.get(name).map_or("?", |h| h.as_str())
        );
        for mode in &r.modes {
            let (ns, runs) = mode.kernel.programs[name];
            if runs == 0 {
                print!(" no runs |");
            } else {
                print!(" {ns:.0} ns ({} runs) |", thousands(runs as f64));
            }
        }
        println!();
    }
    println!();

    println!("### UDP flood into a DROP rule: the sender\n");
    let base = best_rate(r.baseline.iter());
    let range = |floods: &[&Flood]| {
        let rates: Vec<f64> = floods.iter().map(|f| f.rate()).collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        format!("{} – {}", thousands(min), thousands(max))
    };
    println!(
        "| agent | sender rate /s (best of {}) | range | vs no agent | added per drop |\n|---|---|---|---|---|",
        r.modes.first().map_or(0, |m| m.full.len())
    );
    println!(
        "| none ({} floods, before and after the agent runs) | {} | {} | — | — |",
        r.baseline.len(),
        thousands(base),
        range(&r.baseline.iter().collect::<Vec<_>>())
    );
    let floor_rate = best_rate(r.floor.floods.iter());
    println!(
        "| none, an empty program on {} | {} | {} | {:+.1} % | {:.0} ns |",
        FloorHook::KfreeSkb.name(),
        thousands(floor_rate),
        range(&r.floor.floods.iter().collect::<Vec<_>>()),
        (floor_rate / base - 1.0) * 100.0,
        (1.0 / floor_rate - 1.0 / base) * 1e9,
    );
    for mode in &r.modes {
        let floods: Vec<&Flood> = mode.full.iter().map(|d| &d.flood).collect();
        let best = best_rate(floods.iter().copied());
        println!(
            "| {} | {} | {} | {:+.1} % | {:.0} ns |",
            mode.mode.label(),
            thousands(best),
            range(&floods),
            (best / base - 1.0) * 100.0,
            (1.0 / best - 1.0 / base) * 1e9,
        );
    }
    println!();

    print_floor(r, base, floor_rate);

    println!("### UDP flood into a DROP rule: the agent\n");
    println!(
        "| agent, flood | sender rate /s | drops counted | events on stdout | suppressed | lost: ring buffer | \
         lost: sink queue | unaccounted | agent CPU (% of a core) | agent CPU per event | write(2) per event | drain lag |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let runs: Vec<(String, &Drain)> =
        r.modes
            .iter()
            .flat_map(|mode| {
                let full = mode.full.iter().enumerate().map(move |(i, d)| {
                    (format!("{}, full speed #{}", mode.mode.label(), i + 1), d)
                });
                let search = mode.search.iter().map(move |d| {
                    let verdict = if d.zero_loss() { "no loss" } else { "loss" };
                    let target = thousands(d.flood.target.unwrap_or(0) as f64);
                    (
                        format!("{}, paced {target}/s ({verdict})", mode.mode.label()),
                        d,
                    )
                });
                full.chain(search)
            })
            .collect();
    for (label, d) in &runs {
        let per_event = |x: f64| {
            if d.events == 0 {
                "—".to_string()
            } else {
                format!("{:.2}", x / d.events as f64)
            }
        };
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} ms |",
            thousands(d.flood.rate()),
            thousands(d.counted.drops as f64),
            thousands(d.events as f64),
            thousands(d.counted.suppressed as f64),
            thousands(d.counted.lost as f64),
            thousands(d.counted.sink_dropped as f64),
            d.missing(),
            d.cpu * 100.0,
            d.cpu_us_per_event()
                .map_or("—".to_string(), |us| format!("{us:.2} µs")),
            per_event(d.writes as f64),
            d.lag.as_millis(),
        );
    }
    let send_errors: u64 = r.baseline.iter().map(|b| b.send_errors).sum::<u64>()
        + runs.iter().map(|(_, d)| d.flood.send_errors).sum::<u64>();
    println!();
    if send_errors > 0 {
        println!("Send errors over all floods: {send_errors}.\n");
    }

    println!("### Highest zero-loss drain rate (events unlimited, stdout sink)\n");
    if let Some(unlimited) = r.modes.iter().find(|m| m.mode == Mode::EventsUnlimited) {
        let clean: Vec<&Drain> = unlimited
            .full
            .iter()
            .chain(&unlimited.search)
            .filter(|d| d.zero_loss())
            .collect();
        let best = clean
            .iter()
            .max_by(|a, b| a.flood.rate().total_cmp(&b.flood.rate()));
        let lossy = unlimited.full.iter().filter(|d| !d.zero_loss()).count();
        if lossy == 0 {
            let best = best.expect("loss-free runs");
            println!(
                "Zero loss in all {} full-speed floods, up to {} events/s (the most one sender core \
                 made here); agent CPU at that rate {:.1} % of a core.\n",
                unlimited.full.len(),
                thousands(best.flood.rate()),
                best.cpu * 100.0
            );
        } else {
            println!(
                "Loss in {lossy} of {} full-speed floods (best sender rate {} drops/s).",
                unlimited.full.len(),
                thousands(best_rate(unlimited.full.iter().map(|d| &d.flood))),
            );
            match best {
                Some(d) => println!(
                    "Highest rate with zero loss: {} events/s{}, agent CPU {:.1} % of a core.\n",
                    thousands(d.flood.rate()),
                    d.flood.target.map_or(String::new(), |t| format!(
                        " (paced at {})",
                        thousands(t as f64)
                    )),
                    d.cpu * 100.0
                ),
                None => println!("No rate tried was loss-free.\n"),
            }
        }
    }

    println!("### Memory (agent)\n");
    println!(
        "| agent | VmRSS when ready | peak while starting | after the full-speed floods | at the \
         end | peak after ready | at the end: main heap / other anon / BPF map mmaps / files \
         |\n|---|---|---|---|---|---|---|"
    );
    for mode in &r.modes {
        let b = &mode.breakdown;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} / {} / {} / {} |",
            mode.mode.label(),
            mib(mode.idle_rss_kib),
            mib(mode.start_hwm_kib),
            mib(mode.flooded_rss_kib),
            mib(mode.end_rss_kib),
            mib(mode.hwm_kib),
            mib(b.heap),
            mib(b.other_anon),
            mib(b.bpf),
            mib(b.files),
        );
    }
    println!();
    if r.foreign_after > 0 {
        println!(
            "**Warning:** up to {} other Sonde programs were loaded during the bench; another \
             agent or test ran beside it and the rates above are disturbed.\n",
            r.foreign_after
        );
    }
}
