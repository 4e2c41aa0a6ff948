//! `pods-bench`: what the number of pods on a node costs the agent, printed as Markdown for
//! docs/benchmarks.md.
//!
//! One agent (`sonde run` on the embedded default config, standalone topology: every named
//! network namespace is a pod) runs throughout while the bench adds pods in steps (0, 100,
//! 300, 600 by default). A pod is a named network namespace with its loopback up and one
//! refused TCP connect on it, so that it has drop, reset and connect-failure series besides
//! its netstat counters. At each step, once every pod's drop counter and netstat counters are
//! in /metrics, the bench measures:
//! - /metrics: its size and its series (sample lines), its size gzip-compressed (what
//!   Prometheus fetches: it asks with `Accept-Encoding: gzip`), and the time of N scrapes as
//!   Prometheus makes them, over HTTP with gzip, from connect to the last byte of the body;
//! - the agent's resident memory (`VmRSS`, `VmHWM`), and its growth per pod since the first
//!   step;
//! - the agent's CPU time (`utime + stime`) over an idle window with no traffic, as a share of
//!   one core, beside the duration of the netstat probe's last round of reading (it reads every
//!   namespace once per `probes.netstat.interval`).
//!
//! A second agent with the netstat probe off runs beside it, over the same pods and the same
//! idle windows, for reference.
//!
//! `cargo build --release -p sonde && cargo run --release -p sonde-tests --bin pods-bench`
//! (as root). Options: `--pods 0,100,300,600` (the steps, ascending), `--idle SECS` (the idle
//! window, default 30), `--scrapes N` (timed scrapes per step and agent, default 20),
//! `--pod-address` (each pod also gets an address of its own, a /32 on its loopback, as a
//! real pod has one: the standalone topology reads the addresses of a namespace that has none
//! more often than those of one that has one).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use sonde_tests::bench::{
    cpu_seconds, load_average, median, memory_kib, mib, options_or_exit, positive_number, Machine,
};
use sonde_tests::{
    http_get, http_get_with, metric_series, metric_value, refused_connects, try_poll_every, Agent,
    Netns, READY_TIMEOUT, SETTLE_TIMEOUT,
};

/// The embedded default config, as `sonde run` without `--config` uses it.
const DEFAULT_CONFIG: &str = include_str!("../../../runtime/src/default.yaml");
/// A port nothing listens on in a new namespace: every connect to it is refused.
const CLOSED_PORT: u16 = 9998;
/// The series that show the agent knows a pod: its drop counter (the eBPF probes and the
/// topology) and a netstat counter (the netstat probe's last round read its namespace).
const DROPS: &str = "sonde_packet_drops_total";
const NETSTAT: &str = "sonde_netstat_tcp_total";
const NETSTAT_ROUND: &str = "sonde_netstat_read_duration_seconds";
/// How often the bench scrapes while it waits for the agents to know every pod: a scrape of
/// hundreds of pods is too costly to repeat every 50 ms.
const SYNC_POLL: Duration = Duration::from_secs(1);

struct Options {
    steps: Vec<usize>,
    idle: Duration,
    scrapes: usize,
    /// Give each pod an address of its own (a /32 on its loopback), as a real pod has one.
    pod_address: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        steps: vec![0, 100, 300, 600],
        idle: Duration::from_secs(30),
        scrapes: 20,
        pod_address: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pods" => {
                let list = args.next().ok_or("--pods needs a list such as 0,100,300")?;
                let steps: Vec<usize> = list
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("--pods {list}: not a list of numbers"))?;
                if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!("--pods {list}: the steps must go up"));
                }
                options.steps = steps;
            }
            "--idle" => options.idle = Duration::from_secs(positive_number(&mut args, "--idle")?),
            "--scrapes" => options.scrapes = positive_number(&mut args, "--scrapes")?,
            "--pod-address" => options.pod_address = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

fn main() {
    let options = options_or_exit(
        "pods-bench",
        "[--pods 0,100,300,600] [--idle SECS] [--scrapes N] [--pod-address]",
        parse_options(),
    );
    let machine = Machine::read();
    let interval = sonde::config::AgentConfig::embedded()
        .probes
        .netstat
        .interval;
    eprintln!(
        "pods-bench: {} on {}; netstat reads every {interval:?}",
        machine.sonde_version, machine.kernel
    );
    let load_before = load_average();

    // Declared before the agents, so that it is dropped after them: on a panic too, every
    // namespace is deleted once the agents are stopped.
    let mut pods: Vec<Netns> = Vec::new();
    let agents = [
        BenchAgent::start("default", true),
        BenchAgent::start("netstat off", false),
    ];
    let cpu_seconds = || -> Vec<f64> { agents.iter().map(BenchAgent::cpu_seconds).collect() };
    let mut steps = Vec::new();
    let mut others = 0;
    for &n in &options.steps {
        add_pods(&mut pods, n, options.pod_address);
        let names: HashSet<&str> = pods.iter().map(Netns::name).collect();
        let sync_start = Instant::now();
        for agent in &agents {
            agent.wait_synced(&names, interval);
        }
        eprintln!(
            "pods-bench: {n} pods: in both agents' /metrics {:.1} s after the last was made",
            sync_start.elapsed().as_secs_f64()
        );
        others = others.max(other_namespaces(&names));
        let mut scrapes: Vec<Scrapes> = agents
            .iter()
            .map(|agent| agent.scrapes(options.scrapes))
            .collect();
        eprintln!("pods-bench: {n} pods: idle for {:?}", options.idle);
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        thread::sleep(options.idle);
        let (wall, cpu_end) = (start.elapsed(), cpu_seconds());
        let results: Vec<AgentStep> = agents
            .iter()
            .zip(scrapes.drain(..))
            .zip(cpu_start.into_iter().zip(cpu_end))
            .map(|((agent, scrapes), (before, after))| {
                let (rss_kib, peak_kib) = memory_kib(agent.pid());
                let netstat_round = agent.netstat_round();
                let step = AgentStep {
                    scrapes,
                    rss_kib,
                    peak_kib,
                    idle_cpu: (after - before) / wall.as_secs_f64(),
                    netstat_round,
                };
                eprintln!(
                    "pods-bench: {n} pods, {}: {} series, {:.1} KiB, scrape {:.1} ms, RSS {}, \
                     idle CPU {:.2} %",
                    agent.label,
                    step.scrapes.series,
                    step.scrapes.bytes as f64 / 1024.0,
                    ms(step.scrapes.median()),
                    mib(step.rss_kib),
                    step.idle_cpu * 100.0
                );
                step
            })
            .collect();
        steps.push(Step { pods: n, results });
    }
    drop(agents);
    eprintln!("pods-bench: deleting {} namespaces", pods.len());
    drop(pods);
    print_report(&Report {
        machine,
        options,
        interval,
        load: (load_before, load_average()),
        others,
        steps,
    });
}

/// Adds pods until there are `n`, each with one refused connect on its loopback and, with
/// `address`, an address of its own: 198.19.X.Y/32 on its loopback (in the benchmark range
/// 198.18.0.0/15; each pod's address lives in its own namespace only).
fn add_pods(pods: &mut Vec<Netns>, n: usize, address: bool) {
    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, CLOSED_PORT));
    if pods.len() < n {
        eprintln!("pods-bench: making pods {} to {n}", pods.len() + 1);
    }
    while pods.len() < n {
        let pod = Netns::new("pod");
        refused_connects(&pod, closed, 1);
        if address {
            let i = pods.len();
            pod.ip(&format!(
                "addr add 198.19.{}.{}/32 dev lo",
                i / 250 % 256,
                i % 250 + 1
            ));
        }
        pods.push(pod);
        if pods.len().is_multiple_of(100) {
            eprintln!("pods-bench:   {} pods", pods.len());
        }
    }
}

/// Named namespaces in /run/netns that are not the bench's pods (another test's or agent's):
/// they are pods to the agent too, and add to what it exports.
fn other_namespaces(ours: &HashSet<&str>) -> usize {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .filter(|e| !ours.contains(e.file_name().to_string_lossy().as_ref()))
                .count()
        })
        .unwrap_or(0)
}

/// The distinct `pod` labels among `ours` that series of `metric` carry.
fn pods_in<'a>(metrics: &str, metric: &str, ours: &HashSet<&'a str>) -> HashSet<&'a str> {
    metric_series(metrics, metric)
        .iter()
        .flat_map(|(labels, _)| labels.iter().filter(|(k, _)| k == "pod"))
        .filter_map(|(_, pod)| ours.get(pod.as_str()).copied())
        .collect()
}

/// One of the bench's agents.
struct BenchAgent {
    label: &'static str,
    netstat: bool,
    agent: Agent,
}

impl BenchAgent {
    /// `sonde run` on the embedded default config with the standalone topology, and netstat on
    /// or off.
    fn start(label: &'static str, netstat: bool) -> BenchAgent {
        eprintln!("pods-bench: starting the agent ({label})");
        let mut config: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(DEFAULT_CONFIG).expect("the embedded default config is YAML");
        config["topology"]["source"] = "standalone".into();
        config["probes"]["netstat"]["enabled"] = netstat.into();
        let agent = Agent::spawn_yaml(&serde_yaml_ng::to_string(&config).unwrap());
        agent.wait_ready(READY_TIMEOUT);
        BenchAgent {
            label,
            netstat,
            agent,
        }
    }

    fn pid(&self) -> u32 {
        self.agent.pid()
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// Scrapes until every pod of `ours` has its drop counter, and its netstat counters where
    /// the probe is on: the first reading of a new namespace can take one netstat interval.
    fn wait_synced(&self, ours: &HashSet<&str>, interval: Duration) {
        let mut seen = (0, 0);
        let timeout = SETTLE_TIMEOUT + 2 * interval;
        let synced = try_poll_every(SYNC_POLL, timeout, || {
            let metrics = self.agent.metrics();
            let drops = pods_in(&metrics, DROPS, ours).len();
            let netstat = if self.netstat {
                pods_in(&metrics, NETSTAT, ours).len()
            } else {
                ours.len()
            };
            seen = (drops, netstat);
            (drops == ours.len() && netstat == ours.len()).then_some(())
        });
        if synced.is_none() {
            panic!(
                "timed out after {timeout:?} waiting for the {} agent to show {} pods; it shows \
                 the drop counters of {} and the netstat counters of {}",
                self.label,
                ours.len(),
                seen.0,
                seen.1
            );
        }
    }

    /// `n` scrapes of /metrics as Prometheus makes them (asking for gzip), each timed from
    /// connect to the end of the body, then one plain, for its size and series.
    fn scrapes(&self, n: usize) -> Scrapes {
        let mut times = Vec::with_capacity(n);
        let mut gzip = 0;
        for _ in 0..n {
            let start = Instant::now();
            let r = http_get_with(
                self.agent.addr(),
                "/metrics",
                &[("Accept-Encoding", "gzip")],
            )
            .unwrap_or_else(|e| panic!("GET /metrics of the {} agent: {e}", self.label));
            times.push(start.elapsed());
            assert_eq!(r.status, 200, "GET /metrics answered {}", r.status);
            assert_eq!(r.header("content-encoding"), Some("gzip"));
            gzip = r.body.len();
        }
        let (status, last) = http_get(self.agent.addr(), "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics of the {} agent: {e}", self.label));
        assert_eq!(status, 200, "GET /metrics answered {status}");
        Scrapes {
            gzip,
            bytes: last.len(),
            series: last
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count(),
            times,
        }
    }

    /// How long the netstat probe's last round of reading every namespace took.
    fn netstat_round(&self) -> Option<Duration> {
        if !self.netstat {
            return None;
        }
        metric_value(&self.agent.metrics(), NETSTAT_ROUND, &[]).map(Duration::from_secs_f64)
    }
}

/// The timed scrapes of one agent at one step, and what the last one returned.
struct Scrapes {
    /// The plain exposition's size.
    bytes: usize,
    /// The size of the last gzip body.
    gzip: usize,
    series: usize,
    times: Vec<Duration>,
}

impl Scrapes {
    fn median(&self) -> Duration {
        median(self.times.clone())
    }

    fn max(&self) -> Duration {
        self.times.iter().copied().max().unwrap_or_default()
    }
}

/// One agent at one step.
struct AgentStep {
    scrapes: Scrapes,
    rss_kib: u64,
    peak_kib: u64,
    /// CPU seconds per second of the idle window.
    idle_cpu: f64,
    netstat_round: Option<Duration>,
}

struct Step {
    pods: usize,
    /// One per agent, in the order of `BenchAgent`s.
    results: Vec<AgentStep>,
}

struct Report {
    machine: Machine,
    options: Options,
    interval: Duration,
    load: (String, String),
    others: usize,
    steps: Vec<Step>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_report(r: &Report) {
    let m = &r.machine;
    m.print_first_rows();
    println!("| sonde | {} ({}) |", m.sonde_version, m.source);
    println!(
        "| agent | embedded default config, `topology.source: standalone`; \
         `probes.netstat.interval` {:?} |",
        r.interval
    );
    println!(
        "| pods | named network namespaces, loopback up, one refused TCP connect each{}; \
         steps {:?}, one agent throughout |",
        if r.options.pod_address {
            ", a /32 address each on the loopback"
        } else {
            ", no address but the loopback's"
        },
        r.options.steps
    );
    println!(
        "| measured | {} scrapes per step; idle window {} s |",
        r.options.scrapes,
        r.options.idle.as_secs()
    );
    println!(
        "| other named namespaces | {} (not the bench's; the agent exports them too) |",
        r.others
    );
    println!(
        "| load average (1, 5, 15 min) | before: {}; after: {} |",
        r.load.0, r.load.1
    );
    println!();
    let base = &r.steps[0];
    // The growth since the first step, per pod added.
    let per_pod =
        |step: &Step, i: usize, f: fn(&AgentStep) -> f64, unit: &str| match step.pods - base.pods {
            0 => "—".to_string(),
            added => format!(
                "{:.1}{unit}",
                (f(&step.results[i]) - f(&base.results[i])) / added as f64
            ),
        };
    for (i, agent) in [
        "Default config",
        "Default config with netstat off (reference, same run)",
    ]
    .iter()
    .enumerate()
    {
        // The agents' order in `main`: netstat on, then off.
        let netstat = i == 0;
        println!("### {agent}\n");
        println!(
            "| pods | series | series per pod | /metrics | gzip | bytes per series | \
             scrape median | scrape max | RSS | RSS per pod | peak RSS | idle CPU |{}",
            if netstat { " netstat round |" } else { "" }
        );
        println!(
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}",
            if netstat { "---:|" } else { "" }
        );
        for step in &r.steps {
            let a = &step.results[i];
            let round = a.netstat_round.map_or(String::new(), |d| {
                format!(
                    " {:.1} ms ({:.2} % of the interval) |",
                    ms(d),
                    d.as_secs_f64() / r.interval.as_secs_f64() * 100.0
                )
            });
            println!(
                "| {} | {} | {} | {:.1} KiB | {:.1} KiB | {:.0} | {:.1} ms | {:.1} ms | {} | {} | \
                 {} | {:.2} % |{round}",
                step.pods,
                a.scrapes.series,
                per_pod(step, i, |a| a.scrapes.series as f64, ""),
                a.scrapes.bytes as f64 / 1024.0,
                a.scrapes.gzip as f64 / 1024.0,
                a.scrapes.bytes as f64 / a.scrapes.series as f64,
                ms(a.scrapes.median()),
                ms(a.scrapes.max()),
                mib(a.rss_kib),
                per_pod(step, i, |a| a.rss_kib as f64, " KiB"),
                mib(a.peak_kib),
                a.idle_cpu * 100.0,
            );
        }
        println!();
    }
    println!(
        "Per pod: the growth since the {}-pod step divided by the pods added. /metrics: the \
         plain exposition; gzip: the body Prometheus fetches. Scrapes ask for gzip, as \
         Prometheus does. Idle CPU: `utime + stime` of the agent over the idle window, as a \
         share of one core.",
        base.pods
    );
}
