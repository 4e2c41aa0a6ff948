//! `trace-bench`: `sonde trace` against bpftrace on the same drops, printed as Markdown for
//! docs/benchmarks.md.
//!
//! Both tools run the "drops by reason" one-liner at the same time while one pinned sender
//! core floods a known number of UDP datagrams from pod A into an iptables DROP rule in pod B:
//! - `sonde trace -e 'fn on_packet_drop(e) { count("drops", [e.pod, e.reason]); }'`, which
//!   ships every drop through a ring buffer to a rhai handler in user space;
//! - `bpftrace -e 'tracepoint:skb:kfree_skb { @[args->reason] = count(); }'`, which counts in
//!   a kernel map.
//!
//! For each flood: the drops each tool counted (every datagram is one), the events sonde lost,
//! the sender's rate, each tool's CPU and peak RSS, and each tool's kernel cost per drop (the
//! kernel's BPF run-time statistics).
//!
//! `cargo build --release -p sonde && cargo run --release -p sonde-tests --bin trace-bench`
//! (as root, with bpftrace installed). Options: `--datagrams N` (per flood, default
//! 3,000,000), `--repeat N` (floods with both tools, default 3), `--no-half-rate` (skip the
//! flood paced at half the bare rate), `--no-alone` (skip the floods with one tool at a time).
//! docs/benchmarks.md says what each number means.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sonde_tests::bench::{
    cpu_seconds, load_average, median, memory_kib, mib, positive_number, program_stats,
    programs_of, require_root_and_sonde, thousands, udp_flood, version_of, Flood, FloodLength,
    Machine, RunTimeStats, PAYLOAD,
};
use sonde_tests::{run_command, send_udp, sonde_bin, try_poll_until, IpFamily, PodPair, Trace};

/// UDP port in pod B behind the DROP rule.
const DROP_PORT: u16 = 9999;
/// UDP port in pod B with no socket and no rule: drops that confirm the tools have attached.
const CLOSED_PORT: u16 = 9998;
const SONDE_SCRIPT: &str = r#"fn on_packet_drop(e) { count("drops", [e.pod, e.reason]); }"#;
const BPFTRACE_SCRIPT: &str = "tracepoint:skb:kfree_skb { @[args->reason] = count(); }";
/// An upper bound only: the bench stops `sonde trace` with SIGINT once it has drained.
const TRACE_DURATION: &str = "10m";
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
/// `sonde trace` has drained a flood once its CPU time has not moved for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
const DRAIN_POLL: Duration = Duration::from_millis(20);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const TRACEFS: &str = "/sys/kernel/tracing";

fn main() {
    let opts = Options::parse();
    let netfilter_drop = preflight();
    let machine = Machine::read();
    let bpftrace_version = version_of(Path::new("bpftrace"));
    let load_before = load_average();
    eprintln!(
        "trace-bench: {} and {bpftrace_version} on {}",
        machine.sonde_version, machine.kernel
    );

    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {DROP_PORT} -j DROP"),
    );
    // On for the whole bench; the kernel turns it off when this descriptor closes.
    let _stats = RunTimeStats::enable();
    let bench = Bench {
        pods,
        datagrams: opts.datagrams,
        sender_cpu: machine.sender_cpu(),
        netfilter_drop,
    };

    let mut runs = Vec::new();
    eprintln!("trace-bench: flood without a tool");
    let bare = bench.run(Tools::None, None);
    let bare_rate = bare.flood.rate();
    runs.push(bare);
    for i in 1..=opts.repeat {
        eprintln!("trace-bench: both tools, full speed #{i}");
        runs.push(bench.run(Tools::Both, None));
    }
    if opts.half_rate {
        let target = (bare_rate / 2.0) as u64;
        eprintln!("trace-bench: both tools, paced at {target}/s");
        runs.push(bench.run(Tools::Both, Some(target)));
    }
    if opts.alone {
        for tools in [Tools::Sonde, Tools::Bpftrace] {
            eprintln!("trace-bench: {} alone, full speed", tools.label());
            runs.push(bench.run(tools, None));
        }
    }
    eprintln!("trace-bench: flood without a tool, again");
    runs.push(bench.run(Tools::None, None));
    let load_after = load_average();
    print_report(
        &machine,
        &bpftrace_version,
        (&load_before, &load_after),
        &runs,
        opts.datagrams,
    );
}

struct Options {
    datagrams: u64,
    repeat: u32,
    half_rate: bool,
    alone: bool,
}

impl Options {
    fn parse() -> Options {
        let mut opts = Options {
            datagrams: 3_000_000,
            repeat: 3,
            half_rate: true,
            alone: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> u64 {
                positive_number(&mut args, name).unwrap_or_else(|e| usage(&e))
            };
            match arg.as_str() {
                "--datagrams" => opts.datagrams = number("--datagrams"),
                "--repeat" => opts.repeat = number("--repeat") as u32,
                "--no-half-rate" => opts.half_rate = false,
                "--no-alone" => opts.alone = false,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => usage(&format!("unknown argument {other}")),
            }
        }
        opts
    }
}

const USAGE: &str =
    "usage: trace-bench [--datagrams N] [--repeat N] [--no-half-rate] [--no-alone]\n\
    Run as root with bpftrace installed, after `cargo build --release -p sonde`; SONDE_BIN \
    overrides the sonde binary.";

fn usage(reason: &str) -> ! {
    eprintln!("trace-bench: {reason}\n{USAGE}");
    std::process::exit(2);
}

/// Checks root, the sonde binary and bpftrace, mounts tracefs for bpftrace if it is not, and
/// returns the kernel's number for the NETFILTER_DROP reason (bpftrace prints the enum's
/// value, read from the tracepoint's format).
fn preflight() -> u64 {
    if let Err(reason) = require_root_and_sonde() {
        usage(&reason);
    }
    if Command::new("bpftrace").arg("--version").output().is_err() {
        usage("bpftrace is not installed (`apt-get install -y bpftrace`)");
    }
    let mounted = Command::new("mountpoint")
        .args(["-q", TRACEFS])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("trace-bench: mounting tracefs on {TRACEFS} for bpftrace");
        run_command(&format!("mount -t tracefs tracefs {TRACEFS}"));
    }
    let format = format!("{TRACEFS}/events/skb/kfree_skb/format");
    let text =
        std::fs::read_to_string(&format).unwrap_or_else(|e| panic!("cannot read {format}: {e}"));
    // `... __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ..., { 12, "NETFILTER_DROP" }, ...`
    let at = text
        .find("\"NETFILTER_DROP\"")
        .unwrap_or_else(|| panic!("no NETFILTER_DROP in {format}"));
    let open = text[..at].rfind('{').expect("malformed kfree_skb format");
    text[open + 1..at]
        .trim()
        .trim_end_matches(',')
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("cannot read NETFILTER_DROP's value in {format}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Processes: CPU, memory, programs

/// Peak resident memory (`VmHWM`) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    memory_kib(pid).1
}

/// The pid of this process's child running `exe` (`Trace` keeps its child private).
fn child_pid(exe: &Path) -> u32 {
    let exe = exe
        .canonicalize()
        .unwrap_or_else(|e| panic!("cannot resolve {}: {e}", exe.display()));
    let me = std::process::id().to_string();
    let found = std::fs::read_dir("/proc")
        .expect("cannot list /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The parent's pid is the second field after the command, which is in parentheses.
            let ppid = stat
                .rfind(')')
                .and_then(|close| stat[close + 2..].split_whitespace().nth(1));
            ppid == Some(me.as_str())
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
        });
    found.unwrap_or_else(|| panic!("no child process runs {}", exe.display()))
}

/// A tool's kernel cost per drop between two readings: the time of all its programs divided
/// by the runs of the busiest one (each drop runs it once).
fn ns_per_drop(before: &HashMap<u32, (u64, u64)>, after: &HashMap<u32, (u64, u64)>) -> f64 {
    let mut time = 0;
    let mut runs = 0;
    for (id, (t, n)) in after {
        let (t0, n0) = before.get(id).copied().unwrap_or((0, 0));
        time += t - t0;
        runs = runs.max(n - n0);
    }
    if runs == 0 {
        0.0
    } else {
        time as f64 / runs as f64
    }
}

// ---------------------------------------------------------------------------------------------
// bpftrace

/// `bpftrace -f json -e SCRIPT` as a child: its stdout lines are kept (a few: the attach
/// message, then the map at exit). Killed when dropped.
struct Bpftrace {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl Bpftrace {
    fn start() -> Bpftrace {
        let mut child = Command::new("bpftrace")
            .args(["-f", "json", "-e", BPFTRACE_SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run bpftrace: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&lines);
        let out = child.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                into.lock().unwrap().push(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            text
        });
        Bpftrace {
            child,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for bpftrace's `attached_probes` message (it compiles the script with LLVM first).
    fn wait_attached(&mut self) {
        let attached = try_poll_until(ATTACH_TIMEOUT, || {
            let lines = self.lines.lock().unwrap();
            if lines.iter().any(|l| l.contains("\"attached_probes\"")) {
                return Some(true);
            }
            drop(lines);
            matches!(self.child.try_wait(), Ok(Some(_))).then_some(false)
        });
        if attached != Some(true) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
            panic!("bpftrace did not attach: {}", stderr.trim());
        }
    }

    /// SIGINT, as Ctrl-C: bpftrace prints its map and exits. Returns the map's count for
    /// `reason` (the enum's value).
    fn stop(mut self, reason: u64) -> u64 {
        // SAFETY: signalling our own child, whose pid is not yet reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGINT) };
        let status = try_poll_until(EXIT_TIMEOUT, || self.child.try_wait().ok().flatten());
        let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "bpftrace did not exit cleanly ({status:?}): {}",
            stderr.trim()
        );
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap();
        // {"type": "map", "data": {"@": {"12": 3000000, "3": 17}}}
        let map = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["type"] == "map")
            .unwrap_or_else(|| panic!("bpftrace printed no map: {lines:?}"));
        map["data"]["@"][reason.to_string()].as_u64().unwrap_or(0)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Floods

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tools {
    None,
    Both,
    Sonde,
    Bpftrace,
}

impl Tools {
    fn label(self) -> &'static str {
        match self {
            Tools::None => "no tool",
            Tools::Both => "both",
            Tools::Sonde => "sonde trace",
            Tools::Bpftrace => "bpftrace",
        }
    }

    fn sonde(self) -> bool {
        matches!(self, Tools::Both | Tools::Sonde)
    }

    fn bpftrace(self) -> bool {
        matches!(self, Tools::Both | Tools::Bpftrace)
    }
}

struct Bench {
    pods: PodPair,
    datagrams: u64,
    sender_cpu: usize,
    netfilter_drop: u64,
}

/// What one tool did over one flood.
#[derive(Clone, Debug)]
struct ToolResult {
    /// NETFILTER_DROP drops counted: sonde's for pod B, bpftrace's node-wide.
    counted: u64,
    /// Events lost on the way to user space (sonde: ring buffer, then the script's queue).
    lost: Option<(u64, u64)>,
    /// CPU seconds (user + system) over the flood and sonde's drain.
    cpu_seconds: f64,
    peak_rss_kib: u64,
    /// Kernel time of the tool's programs per drop.
    kernel_ns: f64,
    /// sonde's `--stats`: ns per event in conversion and handler.
    handler_ns: Option<u64>,
}

struct Run {
    tools: Tools,
    flood: Flood,
    /// From the end of the flood to sonde's last CPU activity (20 ms resolution).
    drain_lag: Duration,
    /// From the start of the flood to the end of sonde's drain: what the CPU is divided by.
    span: Duration,
    sonde: Option<ToolResult>,
    bpftrace: Option<ToolResult>,
    /// Other processes' Sonde `packet_drop` programs loaded at the end of the flood: another
    /// agent or test fires on the same drops and competes for the CPUs.
    foreign: usize,
}

impl Bench {
    /// `datagrams` UDP datagrams from pod A into the DROP rule in pod B, from one thread pinned
    /// to one CPU: as fast as it goes, or paced at `target` per second.
    fn flood(&self, target: Option<u64>) -> Flood {
        let length = FloodLength::Datagrams(self.datagrams);
        udp_flood(&self.pods, DROP_PORT, self.sender_cpu, target, length)
    }

    /// Both tools say they attached, but bpftrace says so before it attaches: send single
    /// datagrams to a closed port of pod B (NO_SOCKET drops, which the flood's NETFILTER_DROP
    /// counts leave out) until each tool's programs have run. Returns their program ids.
    fn confirm_attached(
        &self,
        sonde: Option<u32>,
        bpftrace: Option<u32>,
    ) -> (HashSet<u32>, HashSet<u32>) {
        let dst = SocketAddr::new(IpAddr::V4(self.pods.b_end.ipv4), CLOSED_PORT);
        let src = IpAddr::V4(self.pods.a_end.ipv4);
        let ran = |pid: Option<u32>| -> Option<HashSet<u32>> {
            let Some(pid) = pid else {
                return Some(HashSet::new());
            };
            let ids = programs_of(pid);
            let runs: u64 = program_stats(&ids).values().map(|(_, n)| n).sum();
            (runs > 0).then_some(ids)
        };
        let confirmed = try_poll_until(ATTACH_TIMEOUT, || {
            send_udp(&self.pods.a, src, dst, 1);
            thread::sleep(Duration::from_millis(20));
            Some((ran(sonde)?, ran(bpftrace)?))
        });
        confirmed.unwrap_or_else(|| {
            panic!("the tools' programs did not run on drops within {ATTACH_TIMEOUT:?}")
        })
    }

    /// Starts the tools, waits for both to attach, floods, waits for sonde to drain, stops them.
    fn run(&self, tools: Tools, target: Option<u64>) -> Run {
        let pod_b = self.pods.b.name().to_string();
        let mut sonde = tools.sonde().then(|| {
            Trace::start(&[
                "-e",
                SONDE_SCRIPT,
                "--duration",
                TRACE_DURATION,
                "--output",
                "json",
                "--stats",
            ])
        });
        let mut bpftrace = tools.bpftrace().then(Bpftrace::start);
        if let Some(t) = sonde.as_mut() {
            t.wait_attached(ATTACH_TIMEOUT);
        }
        if let Some(b) = bpftrace.as_mut() {
            b.wait_attached();
        }
        let sonde_pid = sonde.as_ref().map(|_| child_pid(&sonde_bin()));
        let bpftrace_pid = bpftrace.as_ref().map(Bpftrace::pid);
        let (sonde_progs, bpftrace_progs) = self.confirm_attached(sonde_pid, bpftrace_pid);
        let cpu = |pid: Option<u32>| pid.map_or(0.0, cpu_seconds);

        let (sonde_stats0, bpftrace_stats0) =
            (program_stats(&sonde_progs), program_stats(&bpftrace_progs));
        let start = Instant::now();
        let (sonde_cpu0, bpftrace_cpu0) = (cpu(sonde_pid), cpu(bpftrace_pid));
        let flood = self.flood(target);
        let flood_end = Instant::now();
        let (sonde_stats1, bpftrace_stats1) =
            (program_stats(&sonde_progs), program_stats(&bpftrace_progs));
        let foreign = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some("packet_drop") && !sonde_progs.contains(&p.id()))
            .count();
        eprintln!(
            "trace-bench:   sent {} in {:.2} s ({:.0}/s; {:.0} per sender CPU-second)",
            flood.sent,
            flood.elapsed.as_secs_f64(),
            flood.rate(),
            flood.rate_per_cpu_second()
        );

        // Drained: sonde's CPU time has not moved for DRAIN_QUIET.
        let mut last_change = flood_end;
        let mut sonde_cpu1 = cpu(sonde_pid);
        let mut bpftrace_cpu1 = cpu(bpftrace_pid);
        if sonde_pid.is_some() {
            let deadline = flood_end + DRAIN_TIMEOUT;
            while last_change.elapsed() < DRAIN_QUIET && Instant::now() < deadline {
                thread::sleep(DRAIN_POLL);
                let now = cpu(sonde_pid);
                if now != sonde_cpu1 {
                    (sonde_cpu1, last_change) = (now, Instant::now());
                    bpftrace_cpu1 = cpu(bpftrace_pid);
                }
            }
        }
        let span = last_change.duration_since(start);
        let drain_lag = last_change.duration_since(flood_end);

        let sonde = sonde.map(|trace| {
            let pid = sonde_pid.unwrap();
            let peak = peak_rss_kib(pid);
            trace.interrupt();
            let finished = trace.finish(EXIT_TIMEOUT);
            assert!(
                finished.status.success(),
                "sonde trace failed ({}): {}",
                finished.status,
                finished.stderr
            );
            let (handler_ns, lost) = parse_sonde_stats(&finished.stderr);
            ToolResult {
                counted: sonde_count(&finished.stdout, &pod_b),
                lost: Some(lost),
                cpu_seconds: sonde_cpu1 - sonde_cpu0,
                peak_rss_kib: peak,
                kernel_ns: ns_per_drop(&sonde_stats0, &sonde_stats1),
                handler_ns: Some(handler_ns),
            }
        });
        let bpftrace = bpftrace.map(|b| {
            let peak = peak_rss_kib(b.pid());
            ToolResult {
                counted: b.stop(self.netfilter_drop),
                lost: None,
                cpu_seconds: bpftrace_cpu1 - bpftrace_cpu0,
                peak_rss_kib: peak,
                kernel_ns: ns_per_drop(&bpftrace_stats0, &bpftrace_stats1),
                handler_ns: None,
            }
        });
        Run {
            tools,
            flood,
            drain_lag,
            span,
            sonde,
            bpftrace,
            foreign,
        }
    }
}

/// The `["<pod B>", "NETFILTER_DROP"]` entry of `sonde trace --output json`'s `drops` map.
fn sonde_count(stdout: &str, pod_b: &str) -> u64 {
    let doc: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("sonde trace printed no JSON ({e}): {stdout}"));
    let key = serde_json::json!([pod_b, "NETFILTER_DROP"]);
    doc["maps"]["drops"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|entry| entry["key"] == key)
        .and_then(|entry| entry["value"].as_u64())
        .unwrap_or(0)
}

/// From `--stats`' line, `sonde trace: N events handled in S s, X ns/event (conversion and
/// handler); lost K in the kernel, Q in the queue`: X, and (K, Q).
fn parse_sonde_stats(stderr: &str) -> (u64, (u64, u64)) {
    let line = stderr
        .lines()
        .find(|l| l.contains("events handled in"))
        .unwrap_or_else(|| panic!("no --stats line from sonde trace: {stderr}"));
    let number_before = |marker: &str| -> u64 {
        let head = &line[..line
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))];
        head.rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number before {marker:?} in {line:?}"))
    };
    (
        number_before(" ns/event"),
        (
            number_before(" in the kernel"),
            number_before(" in the queue"),
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Report

fn run_label(run: &Run, index: usize) -> String {
    let speed = match run.flood.target {
        None => "full speed".to_string(),
        Some(t) => format!("paced at {}/s", thousands(t as f64)),
    };
    match run.tools {
        Tools::Both if run.flood.target.is_none() => format!("both, {speed} #{index}"),
        tools => format!("{}, {speed}", tools.label()),
    }
}

/// `load`: the load average before and after the runs.
fn print_report(
    m: &Machine,
    bpftrace_version: &str,
    load: (&str, &str),
    runs: &[Run],
    datagrams: u64,
) {
    m.print_first_rows();
    println!("| sonde | {} ({}) |", m.sonde_version, m.source);
    println!("| bpftrace | {bpftrace_version} (Debian package) |");
    println!(
        "| flood | {} UDP datagrams of {} B per run, one sender thread pinned to CPU {} |",
        thousands(datagrams as f64),
        PAYLOAD.len(),
        m.sender_cpu()
    );
    println!(
        "| load average (1, 5, 15 min) | before: {}; after: {} |",
        load.0, load.1
    );
    println!();

    let dash = || "—".to_string();
    let (mut index, mut bare) = (0, 0);
    let labels: Vec<String> = runs
        .iter()
        .map(|r| match r.tools {
            Tools::None => {
                bare += 1;
                let when = if bare == 1 { "first" } else { "last" };
                format!("no tool, full speed ({when})")
            }
            Tools::Both if r.flood.target.is_none() => {
                index += 1;
                run_label(r, index)
            }
            _ => run_label(r, index),
        })
        .collect();

    println!("### Counts\n");
    println!(
        "| run | datagrams sent | send errors | sender rate /s | per sender CPU-second | sonde: drops counted (pod B, NETFILTER_DROP) | sonde: lost (ring buffer / queue) | bpftrace: drops counted (NETFILTER_DROP, node-wide) | bpftrace: lost |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (run, label) in runs.iter().zip(&labels) {
        let f = &run.flood;
        let (s_count, s_lost) = match &run.sonde {
            Some(s) => {
                let (k, q) = s.lost.unwrap_or((0, 0));
                (thousands(s.counted as f64), format!("{k} / {q}"))
            }
            None => (dash(), dash()),
        };
        let (b_count, b_lost) = match &run.bpftrace {
            Some(b) => (
                thousands(b.counted as f64),
                "0 (counted in the kernel)".into(),
            ),
            None => (dash(), dash()),
        };
        println!(
            "| {label} | {} | {} | {} | {} | {s_count} | {s_lost} | {b_count} | {b_lost} |",
            thousands(f.sent as f64),
            f.send_errors,
            thousands(f.rate()),
            thousands(f.rate_per_cpu_second()),
        );
    }
    println!();

    println!("### Cost\n");
    println!(
        "| run | sonde CPU (% of a core) | sonde CPU per event | sonde handler per event (`--stats`) | sonde drain lag | sonde peak RSS | sonde kernel ns/drop | bpftrace CPU (% of a core) | bpftrace peak RSS | bpftrace kernel ns/drop |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (run, label) in runs.iter().zip(&labels) {
        let span = run.span.as_secs_f64();
        let sonde = match &run.sonde {
            Some(s) => format!(
                "{:.1} | {:.2} µs | {:.2} µs | {} ms | {} | {:.0}",
                s.cpu_seconds / span * 100.0,
                s.cpu_seconds * 1e6 / s.counted.max(1) as f64,
                s.handler_ns.unwrap_or(0) as f64 / 1e3,
                run.drain_lag.as_millis(),
                mib(s.peak_rss_kib),
                s.kernel_ns
            ),
            None => ["—"; 6].join(" | "),
        };
        let bpftrace = match &run.bpftrace {
            Some(b) => format!(
                "{:.1} | {} | {:.0}",
                b.cpu_seconds / span * 100.0,
                mib(b.peak_rss_kib),
                b.kernel_ns
            ),
            None => ["—"; 3].join(" | "),
        };
        println!("| {label} | {sonde} | {bpftrace} |");
    }
    println!();
    let foreign: Vec<&str> = runs
        .iter()
        .zip(&labels)
        .filter(|(r, _)| r.foreign > 0)
        .map(|(_, l)| l.as_str())
        .collect();
    if !foreign.is_empty() {
        println!(
            "Warning: other Sonde `packet_drop` programs were loaded during {} (another agent or \
             test): they ran on the same drops, slowed the sender and competed for the CPUs.\n",
            foreign.join(", ")
        );
    }

    let both: Vec<&Run> = runs
        .iter()
        .filter(|r| r.tools == Tools::Both && r.flood.target.is_none())
        .collect();
    if both.is_empty() {
        return;
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(both.iter().map(|r| f(r)).collect());
    let sonde = |r: &Run| r.sonde.clone().unwrap();
    let bpftrace = |r: &Run| r.bpftrace.clone().unwrap();
    println!(
        "### Median of the {} full-speed floods with both tools\n",
        both.len()
    );
    println!("| | sonde trace | bpftrace |\n|---|---:|---:|");
    println!(
        "| sender rate /s (per sender CPU-second) | {} ({}) | (same flood) |",
        thousands(med(&|r| r.flood.rate())),
        thousands(med(&|r| r.flood.rate_per_cpu_second()))
    );
    println!(
        "| drops counted / datagrams sent | {} / {} | {} / {} |",
        thousands(med(&|r| sonde(r).counted as f64)),
        thousands(datagrams as f64),
        thousands(med(&|r| bpftrace(r).counted as f64)),
        thousands(datagrams as f64)
    );
    println!(
        "| lost events | {} | 0 (no events leave the kernel) |",
        thousands(med(&|r| {
            let (k, q) = sonde(r).lost.unwrap_or((0, 0));
            (k + q) as f64
        }))
    );
    println!(
        "| CPU, % of one core | {:.1} | {:.1} |",
        med(&|r| sonde(r).cpu_seconds / r.span.as_secs_f64() * 100.0),
        med(&|r| bpftrace(r).cpu_seconds / r.span.as_secs_f64() * 100.0)
    );
    println!(
        "| kernel time per drop | {:.0} ns | {:.0} ns |",
        med(&|r| sonde(r).kernel_ns),
        med(&|r| bpftrace(r).kernel_ns)
    );
    println!(
        "| peak RSS | {} | {} |",
        mib(med(&|r| sonde(r).peak_rss_kib as f64) as u64),
        mib(med(&|r| bpftrace(r).peak_rss_kib as f64) as u64)
    );
}
