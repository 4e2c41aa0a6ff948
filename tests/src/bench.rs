//! What `sonde-bench`, `trace-bench`, `plugin-bench` and `pods-bench` share: the machine and the
//! binary their reports describe, the root and agent checks, option values, the pinned UDP flood
//! sender, processes' CPU time, memory and BPF programs, the kernel's BPF run-time statistics, and
//! the number formats of the Markdown reports. One place, so that the benches measure and print these alike.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use aya::sys::{enable_stats, Stats};

use crate::{in_netns, run_command, sonde_bin, PodPair};

// ---------------------------------------------------------------------------------------------
// Machine

/// The machine a bench ran on and the sonde binary it measured.
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub sonde_bin: PathBuf,
    pub sonde_version: String,
    /// The workspace's commit, `+` if its tree differs from it, and when the binary was built.
    pub source: String,
}

impl Machine {
    pub fn read() -> Machine {
        let bin = sonde_bin();
        Machine {
            date: run_command("date -u +%Y-%m-%dT%H:%MZ").trim().to_string(),
            kernel: run_command("uname -r").trim().to_string(),
            cpus: thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: cpu_model().unwrap_or_else(|| "unknown".into()),
            sonde_version: version_of(&bin),
            source: source_of(&bin),
            sonde_bin: bin,
        }
    }

    /// The CPU a flood's sender thread is pinned to: the last one.
    pub fn sender_cpu(&self) -> usize {
        self.cpus.saturating_sub(1)
    }

    /// The report's `### Machine` heading and the first rows of its table (date, kernel, CPUs);
    /// the bench prints its own rows after them.
    pub fn print_first_rows(&self) {
        println!("### Machine\n");
        println!("| | |\n|---|---|");
        println!("| date | {} |", self.date);
        println!("| kernel | {} |", self.kernel);
        println!("| CPUs | {} × {} |", self.cpus, self.cpu_model);
    }
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
}

/// The first three fields of /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `program --version` prints, or why it could not run.
pub fn version_of(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// `commit abc1234[ + modified tree], binary built 2026-01-02T03:04Z`: the numbers belong to
/// the binary, which may have been built from a tree that differs from the commit.
pub fn source_of(bin: &Path) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain", "--untracked-files=no"]),
    ) {
        (Some(c), Some(status)) if status.is_empty() => format!("commit {c}"),
        (Some(c), Some(_)) => format!("commit {c} + modified tree"),
        _ => "commit unknown".to_string(),
    };
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            run_command(&format!("date -u -d @{} +%Y-%m-%dT%H:%MZ", d.as_secs()))
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{commit}, binary built {built}")
}

// ---------------------------------------------------------------------------------------------
// Preflight and options

/// Checks that this process is root and that the sonde binary exists, pointing `SONDE_BIN` at
/// the one built beside the bench unless it is set. Call it before starting any thread. The
/// error says what is missing, for the bench's usage message.
pub fn require_root_and_sonde() -> Result<(), String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (eBPF, network namespaces, iptables)".into());
    }
    if std::env::var_os("SONDE_BIN").is_none() {
        // The harness looks beside target/<profile>/deps/; a bin lives in target/<profile>/.
        let exe = std::env::current_exe().expect("cannot find the bench executable");
        let bin = exe.with_file_name("sonde");
        if !bin.exists() {
            return Err(format!(
                "{} does not exist: `cargo build --release -p sonde` first, or set SONDE_BIN",
                bin.display()
            ));
        }
        // Sound: no other thread exists yet to read the environment concurrently.
        std::env::set_var("SONDE_BIN", &bin);
    }
    Ok(())
}

/// The options `parsed` holds, once this process is root and has the agent binary (see
/// [`require_root_and_sonde`]); otherwise prints why and `usage: BENCH USAGE`, and exits with
/// status 2.
pub fn options_or_exit<T>(bench: &str, usage: &str, parsed: Result<T, String>) -> T {
    match parsed.and_then(|o| require_root_and_sonde().map(|()| o)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{bench}: {e}");
            eprintln!("usage: {bench} {usage}");
            std::process::exit(2);
        }
    }
}

/// The value of option `name`, the next of `args`, if it parses and `accept`s; otherwise why
/// not: `--repeat needs a value`, `--repeat x: not {what}`.
pub fn option_value<T: FromStr>(
    args: &mut impl Iterator<Item = String>,
    name: &str,
    what: &str,
    accept: impl Fn(&T) -> bool,
) -> Result<T, String> {
    let v = args.next().ok_or_else(|| format!("{name} needs a value"))?;
    v.parse()
        .ok()
        .filter(accept)
        .ok_or_else(|| format!("{name} {v}: not {what}"))
}

/// The value of option `name` as a number above zero; see [`option_value`].
pub fn positive_number<T: FromStr + PartialOrd + Default>(
    args: &mut impl Iterator<Item = String>,
    name: &str,
) -> Result<T, String> {
    option_value(args, name, "a positive number", |n| *n > T::default())
}

// ---------------------------------------------------------------------------------------------
// The flood's sender

/// The datagram floods send: small, as drop storms of tiny packets are the expensive case.
pub const PAYLOAD: &[u8] = b"sonde-bench";

/// How long a flood lasts.
#[derive(Clone, Copy, Debug)]
pub enum FloodLength {
    /// Until this many datagrams are sent.
    Datagrams(u64),
    /// Until this much time has passed.
    Time(Duration),
}

/// What one flood did.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// Paced rate asked for; `None` = as fast as the sender core goes.
    pub target: Option<u64>,
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
    /// The sender thread's CPU time, which includes the kernel's work on each datagram (the
    /// drop and the probes' programs run in its softirq) but not the time other processes
    /// took its core.
    pub cpu: Duration,
}

impl Flood {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }

    /// Datagrams per second of the sender's CPU time: the rate one core sustains when it is
    /// not shared.
    pub fn rate_per_cpu_second(&self) -> f64 {
        self.sent as f64 / self.cpu.as_secs_f64()
    }
}

/// [`PAYLOAD`] datagrams from pod A to `port` of pod B, sent by one thread pinned to
/// `sender_cpu`: as fast as it goes, or paced at `target` per second.
pub fn udp_flood(
    pods: &PodPair,
    port: u16,
    sender_cpu: usize,
    target: Option<u64>,
    length: FloodLength,
) -> Flood {
    let src = IpAddr::V4(pods.a_end.ipv4);
    let dst = SocketAddr::new(IpAddr::V4(pods.b_end.ipv4), port);
    in_netns(pods.a.name(), move || {
        pin_to_cpu(sender_cpu);
        let socket = UdpSocket::bind(SocketAddr::new(src, 0))
            .unwrap_or_else(|e| panic!("cannot bind a UDP socket to {src}: {e}"));
        socket
            .connect(dst)
            .unwrap_or_else(|e| panic!("cannot connect a UDP socket to {dst}: {e}"));
        let (mut sent, mut send_errors) = (0u64, 0u64);
        let (start, cpu_start) = (Instant::now(), thread_cpu());
        loop {
            let left = match length {
                FloodLength::Datagrams(total) => total - sent,
                FloodLength::Time(time) if start.elapsed() >= time => 0,
                FloodLength::Time(_) => u64::MAX,
            };
            if left == 0 {
                break;
            }
            let batch = match target {
                None => 256,
                Some(rate) => {
                    let due = (rate as u128 * start.elapsed().as_nanos() / 1_000_000_000) as u64;
                    if due <= sent {
                        thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    (due - sent).min(256)
                }
            };
            for _ in 0..batch.min(left) {
                match socket.send(PAYLOAD) {
                    Ok(_) => sent += 1,
                    Err(_) => send_errors += 1,
                }
            }
        }
        Flood {
            target,
            sent,
            send_errors,
            elapsed: start.elapsed(),
            cpu: thread_cpu() - cpu_start,
        }
    })
}

/// Pins the calling thread to CPU `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity(0, ..) affects this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!(
                "cannot pin the sender to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

// ---------------------------------------------------------------------------------------------
// Processes and their BPF programs

/// User + system CPU seconds of `pid` (all threads), from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("malformed /proc/PID/stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: plain getter.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// (`VmRSS`, `VmHWM`) of `pid` in KiB, from /proc/PID/status: its resident memory now and at
/// its peak.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {path}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets `pid`'s `VmHWM` to its resident memory now (`5` to /proc/PID/clear_refs), so that
/// the next reading is the peak from here on, not the one while it started.
pub fn reset_peak_rss(pid: u32) {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
}

/// `VmRSS` of `pid` in KiB once it has settled: the agent still finishes work after it is
/// ready (it reads the kernel's symbols and hands back what loading freed), so the reading
/// is taken when two in a row, 200 ms apart, differ by at most 64 KiB (or after 5 s).
pub fn settled_rss_kib(pid: u32) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut last = memory_kib(pid).0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = memory_kib(pid).0;
        if now.abs_diff(last) <= 64 || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Ids of the BPF programs `pid` holds (its `anon_inode:bpf-prog` descriptors).
pub fn programs_of(pid: u32) -> HashSet<u32> {
    let fd_dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&fd_dir)
        .unwrap_or_else(|e| panic!("cannot list {fd_dir}: {e}"))
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog")
        })
        .filter_map(|entry| {
            let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            std::fs::read_to_string(info).ok()?.lines().find_map(|l| {
                l.strip_prefix("prog_id:")
                    .and_then(|v| v.trim().parse::<u32>().ok())
            })
        })
        .collect()
}

/// Turns on the kernel's BPF run-time statistics (`run_time_ns`, `run_cnt`) while it lives.
/// It is the switch behind `kernel.bpf_stats_enabled`, taken with `BPF_ENABLE_STATS`: the
/// kernel turns it off again when the descriptor closes, however this process ends, so there
/// is no sysctl to restore.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> RunTimeStats {
        RunTimeStats {
            _fd: enable_stats(Stats::RunTime).expect("cannot enable BPF run-time statistics"),
        }
    }
}

/// A hook of `tests/bpf/floor.bpf.c`'s empty programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FloorHook {
    /// packet_drop's tracepoint.
    KfreeSkb,
    /// tcp_rtt's tracepoint.
    TcpProbe,
    /// socket_latency's per-packet tracepoint.
    NetifReceiveSkb,
    /// flow's and dns's classifiers, in both directions of the interfaces given to
    /// [`Floor::attach`].
    Tc,
}

impl FloorHook {
    /// What the hook is called in reports: the tracepoint, or `tc` for the classifier.
    pub fn name(self) -> &'static str {
        match self {
            FloorHook::KfreeSkb => "kfree_skb",
            FloorHook::TcpProbe => "tcp_probe",
            FloorHook::NetifReceiveSkb => "netif_receive_skb",
            FloorHook::Tc => "tc",
        }
    }

    fn program(self) -> &'static str {
        match self {
            FloorHook::KfreeSkb => "floor_kfree_skb",
            FloorHook::TcpProbe => "floor_tcp_probe",
            FloorHook::NetifReceiveSkb => "floor_netif_receive_skb",
            FloorHook::Tc => "floor_tc",
        }
    }

    /// The hook a probe's program runs on, for the programs the floors stand beside
    /// (`probe/program` as the benches name them).
    pub fn of_program(program: &str) -> Option<FloorHook> {
        match program {
            "packet_drop/packet_drop" => Some(FloorHook::KfreeSkb),
            "tcp_rtt/tcp_rtt" => Some(FloorHook::TcpProbe),
            "socket_latency/socklat_arrive" => Some(FloorHook::NetifReceiveSkb),
            "flow/flow_ingress" | "flow/flow_egress" | "dns/dns_ingress" | "dns/dns_egress" => {
                Some(FloorHook::Tc)
            }
            _ => None,
        }
    }
}

/// Empty programs on probes' hooks (`tests/bpf/floor.bpf.c`), attached while this lives: what
/// any program on each hook costs, against which a probe's own work is read.
pub struct Floor {
    _ebpf: aya::Ebpf,
    ids: Vec<(FloorHook, u32)>,
}

impl Floor {
    /// Attaches the empty program of each of `hooks`; the TC one to ingress and egress of
    /// every interface of `interfaces` (host-side interfaces, as flow watches them).
    pub fn attach(hooks: &[FloorHook], interfaces: &[&str]) -> Floor {
        use aya::programs::{tc, BtfTracePoint, SchedClassifier, TcAttachType};

        let mut ebpf = aya::Ebpf::load(aya::include_bytes_aligned!("../bpf/floor.bpf.o"))
            .unwrap_or_else(|e| panic!("cannot load tests/bpf/floor.bpf.o: {e}"));
        let btf = aya::Btf::from_sys_fs().unwrap_or_else(|e| panic!("cannot read kernel BTF: {e}"));
        let mut ids = Vec::new();
        for &hook in hooks {
            let name = hook.program();
            let program = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("floor.bpf.o has no {name}"));
            let failed = |what: &str, e: &dyn std::fmt::Display| -> ! {
                panic!("cannot {what} the empty program on {}: {e}", hook.name())
            };
            if hook == FloorHook::Tc {
                let program: &mut SchedClassifier =
                    program.try_into().expect("floor_tc is a classifier");
                program.load().unwrap_or_else(|e| failed("load", &e));
                for interface in interfaces {
                    // An interface that has clsact already (another program's) keeps it.
                    let _ = tc::qdisc_add_clsact(interface);
                    for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
                        program
                            .attach(interface, direction)
                            .unwrap_or_else(|e| failed(&format!("attach to {interface}"), &e));
                    }
                }
                let id = program.info().unwrap_or_else(|e| failed("read", &e)).id();
                ids.push((hook, id));
            } else {
                let program: &mut BtfTracePoint = program
                    .try_into()
                    .expect("the floor's tracepoint programs are tp_btf");
                program
                    .load(hook.name(), &btf)
                    .unwrap_or_else(|e| failed("load", &e));
                program.attach().unwrap_or_else(|e| failed("attach", &e));
                let id = program.info().unwrap_or_else(|e| failed("read", &e)).id();
                ids.push((hook, id));
            }
        }
        Floor { _ebpf: ebpf, ids }
    }

    /// The kernel's id of the empty program on `hook`, for [`program_stats`].
    pub fn id(&self, hook: FloorHook) -> u32 {
        self.ids
            .iter()
            .find(|(h, _)| *h == hook)
            .map(|(_, id)| *id)
            .unwrap_or_else(|| panic!("no empty program attached on {}", hook.name()))
    }

    /// Each attached hook with its program's id.
    pub fn ids(&self) -> &[(FloorHook, u32)] {
        &self.ids
    }
}

/// (run_time_ns, run_cnt) of each program id, from the kernel's run-time statistics.
pub fn program_stats(ids: &HashSet<u32>) -> HashMap<u32, (u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| ids.contains(&info.id()))
        .map(|info| {
            (
                info.id(),
                (info.run_time().as_nanos() as u64, info.run_count()),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Targets

/// The most a probe's program may cost per run over an empty program on its hook.
pub const FLOOR_TARGET_NS: f64 = 30.0;

/// A target's verdict as the tables print it.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The header of every bench's table of targets: `sonde-bench all` gathers the rows under it
/// from each bench's output.
pub const TARGETS_HEADER: &str = "| target | measured | verdict |";

/// A target of docs/benchmarks.md and what a bench measured for it; `met` is none when the
/// bench could not measure it here (the reason in `measured`).
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Target {
    pub fn new(target: impl Into<String>, measured: impl Into<String>, met: Option<bool>) -> Self {
        Target {
            target: target.into(),
            measured: measured.into(),
            met,
        }
    }

    /// The target as a row of the table under [`TARGETS_HEADER`].
    pub fn row(&self) -> String {
        let verdict = self.met.map_or("not measured", verdict);
        format!("| {} | {} | {verdict} |", self.target, self.measured)
    }
}

/// Prints `targets` as a table under `heading`.
pub fn print_targets(heading: &str, targets: &[Target]) {
    println!("{heading}\n");
    println!("{TARGETS_HEADER}\n|---|---|---|");
    for t in targets {
        println!("{}", t.row());
    }
    println!();
}

/// The rows of every table of targets in a bench's Markdown output.
pub fn target_rows(markdown: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        if line == TARGETS_HEADER {
            inside = true;
        } else if inside && line.starts_with('|') {
            if !line.starts_with("|---") {
                rows.push(line.to_string());
            }
        } else {
            inside = false;
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Report

/// `n` rounded, with commas between thousands: `3,000,000`.
pub fn thousands(n: f64) -> String {
    let s = (n.round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// KiB as `12.3 MiB`.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The middle of `values` (the upper middle one of an even count). Panics if there are none.
pub fn median<T: Ranked>(mut values: Vec<T>) -> T {
    values.sort_by(T::rank);
    values[values.len() / 2]
}

/// A total order for [`median`]: `f64`'s `total_cmp`, `Duration`'s own.
pub trait Ranked: Copy {
    fn rank(&self, other: &Self) -> Ordering;
}

impl Ranked for f64 {
    fn rank(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Ranked for Duration {
    fn rank(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_rows_are_those_under_the_targets_header() {
        let markdown = format!(
            "| a | b |\n|---|---|\n| x | y |\n\n### Targets\n\n{TARGETS_HEADER}\n|---|---|---|\n\
             | t1 | 1 ns | PASS |\n| t2 | 2 ns | FAIL |\n\ntext\n{TARGETS_HEADER}\n|---|---|---|\n\
             | t3 | — | not measured |\n"
        );
        assert_eq!(
            target_rows(&markdown),
            [
                "| t1 | 1 ns | PASS |",
                "| t2 | 2 ns | FAIL |",
                "| t3 | — | not measured |"
            ]
        );
    }
}
