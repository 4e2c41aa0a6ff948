//! `plugin-bench`: what delivering events to a WebAssembly plugin costs, printed as Markdown for
//! docs/benchmarks.md ("Plugin delivery").
//!
//! Everything runs in this process, without probes (no root needed): the agent's own
//! `Metrics`, `FanOut`, probe `Context` and `PluginHost`, fed synthetic events through
//! `FanOut::publish` exactly as a probe's drain publishes them. It measures:
//!
//! - the wall time per event from publishing batches of 1, 64 and 1024 events until the
//!   plugin's `sonde_plugin_events_delivered_total` has counted them all (queueing, the host's
//!   conversion to WIT records, the call, the plugin's work), and the time inside the calls
//!   from `sonde_plugin_call_duration_seconds{call="on-packet-drop"}`;
//! - the same analysis (drops per pod and reason into a counter) as native Rust: a fan-out
//!   consumer on its own thread, measured the same way, and the bare loop;
//! - the host's conversion of events to WIT records alone, replicated here (the host's
//!   `deliver` is private), and both again with records of 3 strings instead of 8, for the
//!   cost per string;
//! - the time of `PluginHost::start` (compile on first use, then cached in memory; and in a
//!   new host with `plugins.cacheDir`, empty then filled) and the memory: RSS added by the
//!   first start and by each extra instance, and linear memory (read from /proc/self/smaps).
//!
//! Plugins: `tests/plugins/bench` (modes `idle`, `count`, `count-batch`), the test suite's
//! `hostile` plugin in mode `count` (a series resolved with string labels on every event), and
//! the first-party JavaScript (`drop-budget-js`, fed `packet_drop`) and Python
//! (`reset-report-py`, fed `tcp_reset`) bundles when `cargo xtask plugins` has built them.
//!
//! Build the plugins first, then run it:
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 -p bench-plugin -p hostile-plugin
//! cargo xtask plugins        # optional: the Python and JavaScript bundles in target/bundles/
//! cargo run --release -p sonde-tests --bin plugin-bench > plugin-bench.md
//! ```
//!
//! Options: `--repeat N` (timed runs per configuration, median shown; default 5), `--events N`
//! (events per run at batches 64 and 1024; batch 1 runs N/16, the Python and JavaScript
//! plugins an eighth of those; default 262144), `--copies N` (extra instances for the memory
//! per instance; default 8), `--only-rust` (skip the Python and JavaScript bundles),
//! `--in-process` (compile components in this process; by default they are compiled as the
//! agent compiles them, by `target/release/sonde plugin compile` in a child process, when that
//! binary exists).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prom::{IntCounter, IntCounterVec, Opts, Registry};
use sonde::event::{Event, Flow, Kind, Severity};
use sonde::metrics::Metrics;
use sonde::plugin_host::delivery::{self as host_delivery, Probe};
use sonde::plugin_host::{Bundle, Compiler, HostContext, PluginHost, PluginsConfig};
use sonde::probes::packet_drop::PacketDrop;
use sonde::probes::tcp_reset::TcpReset;
use sonde::probes::{Context, Probes};
use sonde::topology::netns::NetnsTopology;
use sonde::topology::Workload;
use sonde_tests::bench::{cpu_model, load_average, median, positive_number, print_targets, Target};

/// The most a plugin's delivery may cost per event, wall to wall, at batch 1024.
const TYPED_TARGET_NS: f64 = 120.0;
const PACKED_TARGET_NS: f64 = 40.0;

const BATCH_SIZES: [usize; 3] = [1, 64, 1024];
/// Batches a plugin may have queued: large, so that nothing is dropped while the bench
/// publishes a whole run at once.
const QUEUE: usize = 1_000_000;
/// The longest a run may take to be delivered.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_micros(50);
/// Linear memories are reservations of this much address space (wasmtime's default
/// `memory_reservation` on 64-bit hosts), with guard pages of `GUARD` on both sides.
const RESERVATION: u64 = 4 << 30;
const GUARD: u64 = 32 << 20;

struct Options {
    repeat: usize,
    events: usize,
    copies: usize,
    only_rust: bool,
    /// Compile in the bench's process instead of a child `sonde plugin compile`.
    in_process: bool,
}

fn options() -> Options {
    let mut o = Options {
        repeat: 5,
        events: 262_144,
        copies: 8,
        only_rust: false,
        in_process: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> usize {
            positive_number(&mut args, name)
                .unwrap_or_else(|_| panic!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--repeat" => o.repeat = number("--repeat"),
            "--events" => o.events = number("--events").max(1024),
            "--copies" => o.copies = number("--copies"),
            "--only-rust" => o.only_rust = true,
            "--in-process" => o.in_process = true,
            "-h" | "--help" => {
                eprintln!(
                    "usage: plugin-bench [--repeat N] [--events N] [--copies N] [--only-rust] [--in-process]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown option {other} (see --help)"),
        }
    }
    o
}

// ---------------------------------------------------------------------------------------------
// The agent's pieces, as `agent.rs` puts them together, without probes.

struct Bench {
    dir: PathBuf,
    ctx: Arc<Context>,
    host: Arc<PluginHost>,
}

impl Bench {
    /// A host in a fresh temporary directory `tag`, keeping compiled components in `cache`
    /// (`plugins.cacheDir`) when given.
    fn new(tag: &str, cache: Option<PathBuf>, compiler: &Compiler) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sonde-plugin-bench-{}-{tag}", std::process::id()));
        let netns = dir.join("netns");
        std::fs::create_dir_all(&netns).unwrap_or_else(|e| panic!("{}: {e}", netns.display()));
        let topology = NetnsTopology::new(&netns, sonde::topology::index::GONE_RETENTION);
        let ctx = Context::new("bench-node", topology, Arc::new(Metrics::new()));
        let probes = Arc::new(Mutex::new(Probes::new(Arc::clone(&ctx))));
        let host = PluginHost::new(
            HostContext::new(Arc::clone(&ctx), probes, u64::MAX),
            &PluginsConfig {
                cache_dir: cache.map(|c| c.display().to_string()).unwrap_or_default(),
                ..PluginsConfig::default()
            },
            compiler.clone(),
        )
        .expect("plugin host");
        Bench { dir, ctx, host }
    }

    /// Writes a bundle `name` for the plugin's module (hard-linked beside its manifest) and
    /// reads it back.
    fn bundle(&self, plugin: &PluginSpec, name: &str, copy: usize) -> Bundle {
        let dir = self.dir.join("bundles").join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let file = plugin.module.file_name().expect("module file name");
        let module = dir.join(file);
        if !module.exists() && std::fs::hard_link(&plugin.module, &module).is_err() {
            std::fs::copy(&plugin.module, &module)
                .unwrap_or_else(|e| panic!("copy {}: {e}", plugin.module.display()));
        }
        let manifest = format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: Plugin\nmetadata:\n  name: {name}\nspec:\n  \
             module: {}\n  subscribe: [{}]\n  delivery: {}\n  config: {}\n  limits:\n    \
             memory: {}\n    callTimeout: 10s\n    queue: {QUEUE}\n    batch: {}\n  \
             capabilities: [metrics, events]\n",
            file.to_string_lossy(),
            plugin.probe,
            plugin.delivery,
            plugin.config.replace("{i}", &copy.to_string()),
            plugin.memory,
            plugin.batch,
        );
        std::fs::write(dir.join("plugin.yaml"), manifest).expect("write manifest");
        Bundle::read(&dir).unwrap_or_else(|e| panic!("bundle {name}: {e}"))
    }

    /// Starts copy `copy` of a plugin; the time `PluginHost::start` took.
    fn start(&self, plugin: &PluginSpec, name: &str, copy: usize) -> Duration {
        let bundle = self.bundle(plugin, name, copy);
        let t = Instant::now();
        self.host
            .start(bundle)
            .unwrap_or_else(|e| panic!("plugin {name} refused: {e}"));
        t.elapsed()
    }

    /// Publishes `batches` and waits until plugin `name` has been handed every event.
    fn deliver(&self, name: &str, call: &str, batches: Vec<Vec<Event>>) -> Run {
        let m = &self.host.host.self_metrics;
        let delivered = m.delivered.with_label_values(&[name]);
        let dropped = m.dropped.with_label_values(&[name]);
        let errors = m.errors.clone();
        let calls = m.call_seconds.with_label_values(&[name, call]);
        let (d0, x0) = (delivered.get(), dropped.get());
        let (sum0, count0) = (calls.get_sample_sum(), calls.get_sample_count());
        let n: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let start = Instant::now();
        for b in batches {
            self.ctx.fanout.publish(b);
        }
        while delivered.get() - d0 < n {
            if dropped.get() != x0 {
                panic!("plugin {name} dropped {} events", dropped.get() - x0);
            }
            if start.elapsed() > RUN_TIMEOUT {
                let failures: Vec<String> = ["trap", "timeout", "memory"]
                    .iter()
                    .map(|k| format!("{k}={}", errors.with_label_values(&[name, k]).get()))
                    .collect();
                panic!(
                    "plugin {name}: {} of {n} events delivered after {RUN_TIMEOUT:?} ({})",
                    delivered.get() - d0,
                    failures.join(" ")
                );
            }
            thread::sleep(POLL);
        }
        let wall = start.elapsed();
        Run {
            wall,
            events: n,
            calls: calls.get_sample_count() - count0,
            in_calls: calls.get_sample_sum() - sum0,
        }
    }

    /// The native analysis as a fan-out consumer on its own thread, measured like a plugin.
    fn deliver_native(&self, batches: Vec<Vec<Event>>) -> Run {
        const NAME: &str = "bench-native";
        let rx = self.ctx.fanout.subscribe(NAME, QUEUE);
        let done = Arc::new(AtomicU64::new(0));
        let in_calls = Arc::new(AtomicU64::new(0));
        let worker = {
            let (done, in_calls) = (Arc::clone(&done), Arc::clone(&in_calls));
            thread::spawn(move || {
                let mut rx = rx;
                let mut analysis = NativeCount::new();
                while let Some(batch) = rx.blocking_recv() {
                    let t = Instant::now();
                    analysis.count(&batch);
                    in_calls.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    done.fetch_add(batch.len() as u64, Ordering::Release);
                }
            })
        };
        let n: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let calls = batches.len() as u64;
        let start = Instant::now();
        for b in batches {
            self.ctx.fanout.publish(b);
        }
        while done.load(Ordering::Acquire) < n {
            assert!(start.elapsed() < RUN_TIMEOUT, "native consumer stalled");
            thread::sleep(POLL);
        }
        let wall = start.elapsed();
        self.ctx.fanout.unsubscribe(NAME);
        worker.join().expect("native consumer");
        Run {
            wall,
            events: n,
            calls,
            in_calls: in_calls.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }

    /// Values of a gauge in a running plugin's own registry.
    fn plugin_gauge(&self, name: &str, metric: &str) -> Option<f64> {
        let registries = self.host.host.registries.lock().unwrap();
        let (_, registry) = registries.get(name)?;
        registry
            .gather()
            .iter()
            .find(|f| f.name() == metric)
            .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value()))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Events.

/// Synthetic `packet_drop` events as a busy node's drain publishes them: 24 pods in 3
/// namespaces, 6 drop reasons with their kernel functions, IPv4 UDP and TCP flows; each event
/// mentions 6 strings (node, namespace, pod, protocol, reason, location) and two addresses.
fn drop_events(n: usize, node: &Arc<str>) -> Vec<Event> {
    const REASONS: [(&str, &str); 6] = [
        ("NETFILTER_DROP", "nf_hook_slow"),
        ("NO_SOCKET", "__udp4_lib_rcv"),
        ("TCP_INVALID_SEQUENCE", "tcp_validate_incoming"),
        ("SOCKET_RCVBUFF", "__udp_enqueue_schedule_skb"),
        ("OTHERHOST", "ip_rcv_core"),
        ("TCP_RESET", "tcp_validate_incoming"),
    ];
    let reasons: Vec<(Arc<str>, Arc<str>)> = REASONS
        .iter()
        .map(|(r, l)| (Arc::from(*r), Arc::from(*l)))
        .collect();
    let workloads = workloads();
    let mut rng = Lcg(0x5eed);
    (0..n)
        .map(|i| {
            let w = rng.next() as usize % workloads.len();
            let (reason, location) = &reasons[rng.next() as usize % reasons.len()];
            let tcp = rng.next().is_multiple_of(3);
            let flow = flow(&mut rng, w, tcp);
            let kind = Kind::PacketDrop(PacketDrop {
                flow,
                reason: Arc::clone(reason),
                location: Arc::clone(location),
                stack: None,
            });
            event(i, node, &workloads, w, Severity::Warning, kind)
        })
        .collect()
}

/// Synthetic `tcp_reset` events (for the Python plugin, which subscribes to them).
fn reset_events(n: usize, node: &Arc<str>) -> Vec<Event> {
    let workloads = workloads();
    let mut rng = Lcg(0x7e5e7);
    (0..n)
        .map(|i| {
            let w = rng.next() as usize % workloads.len();
            let sent = rng.next().is_multiple_of(2);
            let kind = Kind::TcpReset(TcpReset {
                flow: flow(&mut rng, w, true),
                direction: if sent { "sent" } else { "received" },
                state: if sent { None } else { Some("ESTABLISHED") },
            });
            event(i, node, &workloads, w, Severity::Info, kind)
        })
        .collect()
}

fn workloads() -> Vec<Workload> {
    let mut out = Vec::new();
    for (ns, apps) in [
        ("shop", ["web", "cart", "checkout", "search"]),
        ("payments", ["api", "ledger", "fraud", "gateway"]),
        (
            "kube-system",
            ["coredns", "kube-proxy", "metrics", "csi-node"],
        ),
    ] {
        for app in apps {
            for replica in ["7d9f8b6c4-x2k9p", "7d9f8b6c4-qm4zt"] {
                out.push(Workload {
                    namespace: Arc::from(ns),
                    pod: Arc::from(format!("{app}-{replica}")),
                });
            }
        }
    }
    out
}

fn flow(rng: &mut Lcg, workload: usize, tcp: bool) -> Flow {
    let r = rng.next();
    Flow {
        protocol: if tcp { "tcp".into() } else { "udp".into() },
        saddr: Some(std::net::Ipv4Addr::new(10, 244, (r >> 8) as u8 % 16, (r >> 16) as u8).into()),
        sport: 32768 + (r >> 24) as u16 % 28000,
        daddr: Some(std::net::Ipv4Addr::new(10, 244, 32, workload as u8 + 2).into()),
        dport: [53, 80, 443, 5432, 8080][(r >> 40) as usize % 5],
    }
}

fn event(
    i: usize,
    node: &Arc<str>,
    workloads: &[Workload],
    w: usize,
    severity: Severity,
    kind: Kind,
) -> Event {
    let mut e = Event::kernel(
        UNIX_EPOCH + Duration::from_nanos(1_790_000_000_000_000_000 + i as u64 * 1000),
        4_026_532_000 + w as u32,
        severity,
        kind,
    );
    e.node = Arc::clone(node);
    e.workload = Some(workloads[w].clone());
    e
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

fn batches(events: &[Event], size: usize) -> Vec<Vec<Event>> {
    events.chunks(size).map(<[Event]>::to_vec).collect()
}

// ---------------------------------------------------------------------------------------------
// The native analysis, and the host's conversion replicated.

/// Drops per (pod, reason) into a Prometheus counter, each label set resolved once: what the
/// `count` mode of the bench plugin does, as native Rust inside the agent would.
struct NativeCount {
    counter: IntCounterVec,
    series: HashMap<Arc<str>, HashMap<Arc<str>, IntCounter>>,
}

impl NativeCount {
    fn new() -> Self {
        let counter = IntCounterVec::new(
            Opts::new("sonde_bench_native_drops_total", "Drops by pod and reason."),
            &["pod", "reason"],
        )
        .expect("metric");
        Registry::new()
            .register(Box::new(counter.clone()))
            .expect("register");
        NativeCount {
            counter,
            series: HashMap::new(),
        }
    }

    fn count(&mut self, batch: &[Event]) {
        for e in batch {
            let Kind::PacketDrop(d) = &e.kind else {
                continue;
            };
            let pod: &Arc<str> = match &e.workload {
                Some(w) => &w.pod,
                None => continue,
            };
            let reasons = match self.series.get_mut(&**pod) {
                Some(r) => r,
                None => self.series.entry(Arc::clone(pod)).or_default(),
            };
            match reasons.get(&*d.reason) {
                Some(c) => c.inc(),
                None => {
                    let c = self.counter.with_label_values(&[&**pod, &*d.reason]);
                    c.inc();
                    reasons.insert(Arc::clone(&d.reason), c);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    events: u64,
    calls: u64,
    /// Seconds spent inside the calls.
    in_calls: f64,
}

impl Run {
    fn wall_ns(&self) -> f64 {
        self.wall.as_nanos() as f64 / self.events as f64
    }
    fn call_ns(&self) -> f64 {
        self.in_calls * 1e9 / self.calls.max(1) as f64
    }
    fn call_ns_per_event(&self) -> f64 {
        self.in_calls * 1e9 / self.events as f64
    }
}

/// The median of each figure over the runs.
struct Summary {
    wall_ns: f64,
    call_ns: f64,
    call_ns_per_event: f64,
    events: u64,
}

fn summarize(runs: &[Run]) -> Summary {
    let median = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    Summary {
        wall_ns: median(&Run::wall_ns),
        call_ns: median(&Run::call_ns),
        call_ns_per_event: median(&Run::call_ns_per_event),
        events: runs[0].events,
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Drops,
    Resets,
}

/// A plugin as the bench runs it.
#[derive(Clone)]
struct PluginSpec {
    /// What the tables call it.
    label: String,
    language: &'static str,
    module: PathBuf,
    /// The probe it subscribes to, and the events it is fed.
    probe: &'static str,
    events: Shape,
    /// `spec.delivery`: `typed` or `packed`.
    delivery: &'static str,
    call: &'static str,
    /// `spec.config`, as inline YAML; `{i}` is replaced by the number of the copy.
    config: String,
    memory: &'static str,
    /// `spec.limits.batch`: the most events per call (larger batches are split).
    batch: u32,
    /// Divides `--events` (slow interpreters get fewer).
    scale: usize,
}

struct Delivery {
    label: String,
    language: &'static str,
    by_batch: Vec<(usize, Summary)>,
    /// The plugin's linear memory after its runs.
    memory: Option<Memories>,
}

fn measure_plugin(bench: &Bench, p: &PluginSpec, o: &Options, node: &Arc<str>) -> Delivery {
    let name = format!("bench-{}", p.label.replace([' ', '(', ')', ','], ""));
    bench.start(p, &name, 0);
    let make = |n: usize| match p.events {
        Shape::Resets => reset_events(n, node),
        Shape::Drops => drop_events(n, node),
    };
    // Warm up: the first calls grow the instance's memory and create its series.
    let warm = make(8192 / p.scale.min(8));
    bench.deliver(&name, p.call, batches(&warm, 1024));
    let mut by_batch = Vec::new();
    for size in BATCH_SIZES {
        let n = events_for(o, size) / p.scale;
        let events = make(n.max(size));
        let runs: Vec<Run> = (0..o.repeat)
            .map(|_| bench.deliver(&name, p.call, batches(&events, size)))
            .collect();
        let s = summarize(&runs);
        eprintln!(
            "  {:<28} batch {size:>4}: {:>9.0} ns/event wall, {:>9.0} ns/event in calls",
            p.label, s.wall_ns, s.call_ns_per_event
        );
        by_batch.push((size, s));
    }
    // The only plugin running: every linear memory found is this instance's.
    let memory = memories();
    bench.host.stop(&name);
    Delivery {
        label: p.label.clone(),
        language: p.language,
        by_batch,
        memory: Some(memory),
    }
}

fn events_for(o: &Options, size: usize) -> usize {
    if size == 1 {
        o.events / 16
    } else {
        o.events
    }
}

fn measure_native(bench: &Bench, o: &Options, node: &Arc<str>) -> (Delivery, Vec<(usize, f64)>) {
    let mut by_batch = Vec::new();
    let mut bare = Vec::new();
    let warm = drop_events(8192, node);
    bench.deliver_native(batches(&warm, 1024));
    for size in BATCH_SIZES {
        let events = drop_events(events_for(o, size), node);
        let runs: Vec<Run> = (0..o.repeat)
            .map(|_| bench.deliver_native(batches(&events, size)))
            .collect();
        let s = summarize(&runs);
        // The bare loop, on this thread, over the same batches.
        let chunks = batches(&events, size);
        let mut analysis = NativeCount::new();
        analysis.count(&warm);
        let samples: Vec<f64> = (0..o.repeat)
            .map(|_| {
                let t = Instant::now();
                for c in &chunks {
                    analysis.count(std::hint::black_box(c));
                }
                t.elapsed().as_nanos() as f64 / events.len() as f64
            })
            .collect();
        let bare_ns = median(samples);
        eprintln!(
            "  {:<28} batch {size:>4}: {:>9.0} ns/event wall, {:>9.1} ns/event bare loop",
            "native Rust consumer", s.wall_ns, bare_ns
        );
        bare.push((size, bare_ns));
        by_batch.push((size, s));
    }
    (
        Delivery {
            label: "native Rust, count per (pod, reason)".into(),
            language: "Rust (native)",
            by_batch,
            memory: None,
        },
        bare,
    )
}

/// The host's conversion alone, ns/event at each batch size: to a typed batch and to a packed
/// one; `hot`: converting one batch over and over, so that its events are in the caches.
fn measure_conversion(
    bench: &Bench,
    o: &Options,
    node: &Arc<str>,
    hot: bool,
) -> Vec<(usize, f64, f64)> {
    let time = |events: &[Event], size: usize, packed: bool| {
        let chunks = batches(events, size);
        let chunks = if hot {
            // The first batch again and again: its events stay in the CPU's caches.
            vec![chunks[0].clone(); chunks.len()]
        } else {
            chunks
        };
        let mut symbols = host_delivery::Symbols::default();
        let samples: Vec<f64> = (0..o.repeat)
            .map(|_| {
                let t = Instant::now();
                for c in &chunks {
                    std::hint::black_box(host_delivery::batches(
                        c,
                        Probe::PacketDrop,
                        packed,
                        size,
                        &mut symbols,
                    ));
                }
                t.elapsed().as_nanos() as f64 / events.len() as f64
            })
            .collect();
        median(samples)
    };
    BATCH_SIZES
        .iter()
        .map(|&size| {
            // Enriched first, as the agent does before the fan-out (their peers included).
            let mut events = drop_events(events_for(o, size), node);
            events.iter_mut().for_each(|e| bench.ctx.enrich(e));
            (size, time(&events, size, false), time(&events, size, true))
        })
        .collect()
}

struct Footprint {
    label: String,
    language: &'static str,
    module_bytes: u64,
    first_start: Duration,
    /// RSS added by the first start, as it returns and after `malloc_trim`.
    first_rss: (i64, i64),
    /// RSS still added once every instance has stopped (after `malloc_trim`).
    retained_rss: i64,
    next_start: Duration,
    per_instance_rss: f64,
    per_instance_linear: (f64, f64),
    reported_linear: Option<f64>,
}

fn measure_footprint(bench: &Bench, p: &PluginSpec, copies: usize) -> Footprint {
    let base = format!("mem-{}", p.label.replace([' ', '(', ')', ','], ""));
    trim();
    let rss0 = rss();
    let first = format!("{base}-0");
    let first_start = bench.start(p, &first, 0);
    let rss1_raw = rss();
    trim();
    let (rss1, lin1) = (rss(), memories());
    let mut starts: Vec<Duration> = (1..=copies)
        .map(|i| bench.start(p, &format!("{base}-{i}"), i))
        .collect();
    trim();
    let (rss2, lin2) = (rss(), memories());
    starts.sort();
    // The Rust bench plugin reports its memory.size itself.
    let reported_linear = bench.plugin_gauge(&first, "sonde_bench_0_linear_memory_bytes");
    for i in 0..=copies {
        bench.host.stop(&format!("{base}-{i}"));
    }
    // Let the stopped workers end and free their stores.
    thread::sleep(Duration::from_millis(500));
    trim();
    let rss3 = rss();
    let mut fp = Footprint {
        label: p.label.clone(),
        language: p.language,
        module_bytes: std::fs::metadata(&p.module).map(|m| m.len()).unwrap_or(0),
        first_start,
        first_rss: (rss1_raw as i64 - rss0 as i64, rss1 as i64 - rss0 as i64),
        retained_rss: 0,
        next_start: starts[starts.len() / 2],
        per_instance_rss: (rss2 as f64 - rss1 as f64) / copies as f64,
        per_instance_linear: (
            (lin2.accessible as f64 - lin1.accessible as f64) / copies as f64,
            (lin2.resident as f64 - lin1.resident as f64) / copies as f64,
        ),
        reported_linear,
    };
    eprintln!(
        "  {:<28} start {:>8.1} ms first, {:>6.2} ms next; {:>6.1} MiB RSS and {:>6.1} MiB linear memory per instance",
        fp.label,
        ms(fp.first_start),
        ms(fp.next_start),
        fp.per_instance_rss / MIB,
        fp.per_instance_linear.0 / MIB
    );
    fp.retained_rss = rss3 as i64 - rss0 as i64;
    fp
}

/// Hands freed heap back to the kernel, as the agent does after loading probes (glibc keeps
/// what the compiler freed otherwise).
fn trim() {
    // SAFETY: malloc_trim only returns unused heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident set of this process, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The process's WebAssembly linear memories, found in /proc/self/smaps by their layout:
/// bytes accessible (the memories' current sizes, mapped read-write) and resident.
#[derive(Clone, Copy, Default)]
struct Memories {
    accessible: u64,
    resident: u64,
}

fn memories() -> Memories {
    struct Vma {
        start: u64,
        end: u64,
        readable: bool,
        rss: u64,
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut vmas: Vec<Vma> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = line.split_whitespace().nth(1).unwrap_or("");
                vmas.push(Vma {
                    start,
                    end,
                    readable: perms.starts_with('r'),
                    rss: 0,
                });
                continue;
            }
        }
        if let (Some(v), Some(rss)) = (vmas.last_mut(), line.strip_prefix("Rss:")) {
            v.rss = rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                * 1024;
        }
    }
    // wasmtime lays a linear memory out as [guard][accessible, read-write][rest of the
    // reservation and guard, inaccessible]; the accessible part may be several mappings, and
    // neighbouring reservations' inaccessible parts merge. Count each run of readable mappings
    // between an inaccessible one of at least the guard's size before it and one of at least
    // half a reservation after it.
    let mut total = Memories::default();
    let mut k = 1;
    while k < vmas.len() {
        let before = &vmas[k - 1];
        if !(vmas[k].readable && !before.readable && before.end == vmas[k].start) {
            k += 1;
            continue;
        }
        let mut end = k;
        while end + 1 < vmas.len() && vmas[end + 1].readable && vmas[end + 1].start == vmas[end].end
        {
            end += 1;
        }
        let after = vmas.get(end + 1);
        let is_memory = before.end - before.start >= GUARD
            && after.is_some_and(|a| {
                !a.readable && a.start == vmas[end].end && a.end - a.start >= RESERVATION / 2
            });
        if is_memory {
            for v in &vmas[k..=end] {
                total.accessible += v.end - v.start;
                total.resident += v.rss;
            }
        }
        k = end + 1;
    }
    total
}

const MIB: f64 = 1024.0 * 1024.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("{} is not under target/", exe.display()))
}

fn rust_module(target: &Path, krate: &str) -> PathBuf {
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", krate.replace('-', "_")));
    if !path.exists() {
        eprintln!(
            "{} is missing: build it with\n  cargo build --release --target wasm32-wasip2 -p bench-plugin -p hostile-plugin",
            path.display()
        );
        std::process::exit(2);
    }
    path
}

/// The module of a first-party bundle in target/bundles/, if built.
fn bundle_module(target: &Path, bundle: &str) -> Option<PathBuf> {
    let dir = target.join("bundles").join(bundle);
    let manifest = std::fs::read_to_string(dir.join("plugin.yaml")).ok()?;
    let module = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("module:"))?
        .split('#')
        .next()?
        .trim()
        .to_string();
    Some(dir.join(module)).filter(|p| p.exists())
}

fn main() {
    let o = options();
    let target = target_dir();
    let bench_module = rust_module(&target, "bench-plugin");
    let hostile_module = rust_module(&target, "hostile-plugin");
    let node: Arc<str> = Arc::from("bench-node");
    // As the agent does: compile in a child process, with the sonde binary built beside this
    // bench (`cargo build --release --workspace --bins`); in process without one.
    let sonde_bin = target.join("release").join("sonde");
    let compiler = if sonde_bin.exists() && !o.in_process {
        Compiler::Child(sonde_bin)
    } else {
        Compiler::InProcess
    };
    eprintln!("compiling components: {compiler:?}");
    let load_before = load_average();
    let started = SystemTime::now();

    let rust = |label: &str, module: &PathBuf, config: String| PluginSpec {
        label: label.to_string(),
        language: "Rust",
        module: module.clone(),
        probe: "packet_drop",
        events: Shape::Drops,
        delivery: "typed",
        call: "on-packet-drop",
        config,
        memory: "32Mi",
        batch: 1024,
        scale: 1,
    };
    // Copies of the bench plugin name their metrics apart; the hostile plugin's copies run in
    // a mode that registers none (two plugins may not export the same metric).
    let bench_mode = |mode: &str| format!("{{mode: {mode}, metricPrefix: sonde_bench_{{i}}}}");
    let mut plugins = vec![
        rust("bench (idle)", &bench_module, bench_mode("idle")),
        rust("bench (count)", &bench_module, bench_mode("count")),
        rust(
            "bench (count-batch)",
            &bench_module,
            bench_mode("count-batch"),
        ),
        rust("hostile (count)", &hostile_module, "{mode: count}".into()),
    ];
    // The same plugins again, handed packed batches (`spec.delivery: packed`).
    let packed: Vec<PluginSpec> = plugins
        .iter()
        .filter(|p| p.label.starts_with("bench"))
        .map(|p| PluginSpec {
            label: format!("{}, packed", p.label),
            delivery: "packed",
            call: "on-packed",
            ..p.clone()
        })
        .collect();
    plugins.extend(packed);
    let mut footprint_plugins = vec![
        rust("bench (count)", &bench_module, bench_mode("count")),
        rust("hostile (idle)", &hostile_module, "{mode: idle}".into()),
    ];
    let mut others = Vec::new();
    if !o.only_rust {
        match bundle_module(&target, "drop-budget-js") {
            Some(module) => others.push(PluginSpec {
                label: "drop-budget-js".into(),
                language: "JavaScript",
                module,
                probe: "packet_drop",
                events: Shape::Drops,
                delivery: "typed",
                call: "on-packet-drop",
                config: "{budget: 1000000000}".into(),
                memory: "128Mi",
                // As its plugin.yaml: componentize-js's heap grows with the batch.
                batch: 256,
                scale: 8,
            }),
            None => {
                eprintln!("target/bundles/drop-budget-js missing (cargo xtask plugins): skipped")
            }
        }
        match bundle_module(&target, "reset-report-py") {
            Some(module) => others.push(PluginSpec {
                label: "reset-report-py".into(),
                language: "Python",
                module,
                probe: "tcp_reset",
                events: Shape::Resets,
                delivery: "typed",
                call: "on-tcp-reset",
                config: "{threshold: 1000000000}".into(),
                memory: "64Mi",
                batch: 1024,
                scale: 8,
            }),
            None => {
                eprintln!("target/bundles/reset-report-py missing (cargo xtask plugins): skipped")
            }
        }
    }

    for p in others {
        footprint_plugins.push(p.clone());
        plugins.push(p);
    }

    let bench = Bench::new("main", None, &compiler);

    // Footprint first, before the delivery runs' event vectors grow the heap.
    eprintln!(
        "instantiate time and memory ({} extra copies each):",
        o.copies
    );
    let footprints: Vec<Footprint> = footprint_plugins
        .iter()
        .map(|p| measure_footprint(&bench, p, o.copies))
        .collect();
    eprintln!("start with a disk cache (plugins.cacheDir):");
    let cache = bench.dir.join("cache");
    let disk: Vec<DiskStart> = footprint_plugins
        .iter()
        .map(|p| {
            let d = disk_cache_starts(p, &cache, &compiler);
            eprintln!(
                "  {:<28} {:>8.1} ms compiling and writing, {:>8.1} ms from the cache",
                p.label,
                ms(d.write),
                ms(d.read)
            );
            d
        })
        .collect();

    eprintln!("delivery ({} runs each, median):", o.repeat);
    let (native, bare) = measure_native(&bench, &o, &node);
    let conversion = measure_conversion(&bench, &o, &node, false);
    let hot_conversion = measure_conversion(&bench, &o, &node, true);
    let deliveries: Vec<Delivery> = plugins
        .iter()
        .map(|p| measure_plugin(&bench, p, &o, &node))
        .collect();
    let load_after = load_average();

    report(
        &o,
        started,
        (&load_before, &load_after),
        &native,
        &bare,
        &conversion,
        &hot_conversion,
        &deliveries,
        &footprints,
        &disk,
    );
}

/// The first start of a plugin in a new host (a restarted agent) with a cache directory:
/// once with the cache empty (compile, then write), once with it filled (deserialise).
fn disk_cache_starts(p: &PluginSpec, cache: &Path, compiler: &Compiler) -> DiskStart {
    let _ = std::fs::remove_dir_all(cache);
    let runs: Vec<(Duration, i64)> = ["cold", "warm"]
        .iter()
        .map(|tag| {
            let b = Bench::new(tag, Some(cache.to_path_buf()), compiler);
            let name = format!("disk-{tag}");
            trim();
            let before = rss();
            let t = b.start(p, &name, 0);
            trim();
            let added = rss() as i64 - before as i64;
            b.host.stop(&name);
            thread::sleep(Duration::from_millis(300));
            (t, added)
        })
        .collect();
    DiskStart {
        write: runs[0].0,
        read: runs[1].0,
        read_rss: runs[1].1,
    }
}

/// A plugin's first start in a new host with `plugins.cacheDir`.
struct DiskStart {
    /// Cache empty: compile, then write.
    write: Duration,
    /// Cache filled: deserialise.
    read: Duration,
    /// RSS the start from the cache added (after `malloc_trim`).
    read_rss: i64,
}

#[allow(clippy::too_many_arguments)]
fn report(
    o: &Options,
    started: SystemTime,
    load: (&str, &str),
    native: &Delivery,
    bare: &[(usize, f64)],
    conversion: &[(usize, f64, f64)],
    hot_conversion: &[(usize, f64, f64)],
    deliveries: &[Delivery],
    footprints: &[Footprint],
    disk: &[DiskStart],
) {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Measured {} on {} ({cpus} CPUs), load average {} before and {} after; \
         {} runs per row (median), {} events per run at batches 64 and 1024 ({} at batch 1; \
         an eighth of those for Python and JavaScript).\n",
        sonde::timefmt::rfc3339(started),
        cpu_model().unwrap_or_else(|| "unknown CPU".into()),
        load.0,
        load.1,
        o.repeat,
        o.events,
        o.events / 16,
    );

    let native_at = |size: usize| {
        native
            .by_batch
            .iter()
            .find(|(s, _)| *s == size)
            .map(|(_, s)| s.wall_ns)
            .unwrap_or(f64::NAN)
    };
    let bare_at = |size: usize| {
        bare.iter()
            .find(|(s, _)| *s == size)
            .map_or(f64::NAN, |(_, v)| *v)
    };

    println!("**Delivery** (typed: one `on-packet-drop(batch)` call per batch, `on-tcp-reset` for Python; packed: one `on-packed(batch)` call per batch).\n");
    println!("| plugin | language | batch | events/run | wall ns/event | in call, ns/call | in call, ns/event | outside the call, ns/event | wall vs native consumer |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for d in deliveries.iter().chain(std::iter::once(native)) {
        for (size, s) in &d.by_batch {
            let ratio = if std::ptr::eq(d, native) {
                "1".to_string()
            } else {
                format!("{:.1}x", s.wall_ns / native_at(*size))
            };
            println!(
                "| {} | {} | {size} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {ratio} |",
                d.label,
                d.language,
                s.events,
                s.wall_ns,
                s.call_ns,
                s.call_ns_per_event,
                s.wall_ns - s.call_ns_per_event,
            );
        }
    }

    println!("\n**Native baseline and host conversion** (ns/event).\n");
    println!("| batch | native analysis, bare loop | native as a fan-out consumer (wall) | host conversion: typed batch / packed batch | the same, one batch converted again and again (events in cache) |");
    println!("|---:|---:|---:|---:|---:|");
    for (&(size, typed, packed), &(_, hot_typed, hot_packed)) in
        conversion.iter().zip(hot_conversion)
    {
        println!(
            "| {size} | {:.1} | {:.0} | {typed:.1} / {packed:.1} | {hot_typed:.1} / {hot_packed:.1} |",
            bare_at(size),
            native_at(size),
        );
    }

    println!();
    let at = |label: &str, size: usize| {
        deliveries
            .iter()
            .find(|d| d.label == label)
            .and_then(|d| d.by_batch.iter().find(|(s, _)| *s == size))
            .map(|(_, s)| s)
    };
    let mut targets = Vec::new();
    for (path, limit) in [("", TYPED_TARGET_NS), (", packed", PACKED_TARGET_NS)] {
        let delivery = if path.is_empty() { "typed" } else { "packed" };
        for mode in ["idle", "count", "count-batch"] {
            let label = format!("bench ({mode}){path}");
            if let Some(s) = at(&label, 1024) {
                targets.push(Target::new(
                    format!("{delivery} delivery at most {limit:.0} ns/event wall at batch 1024: {label}"),
                    format!("{:.0} ns/event ({:.0} in the call)", s.wall_ns, s.call_ns_per_event),
                    Some(s.wall_ns <= limit),
                ));
            }
        }
    }
    for label in ["bench (count), packed", "bench (count-batch), packed"] {
        if let Some(s) = at(label, 1024) {
            let ratio = s.wall_ns / native_at(1024);
            targets.push(Target::new(
                format!("packed delivery within 3x of native at batch 1024: {label}"),
                format!(
                    "{ratio:.1}x the native consumer ({:.0}x the bare loop)",
                    s.wall_ns / bare_at(1024)
                ),
                Some(ratio <= 3.0),
            ));
        }
    }
    print_targets("**Targets** (plugin-bench)", &targets);

    println!(
        "\n**Start time per plugin** (`PluginHost::start`: compile unless cached, check against \
         the world, instantiate, `init`).\n"
    );
    println!("| plugin | language | module | first start (compiles) | next start, same module (median of {}) | new host with `cacheDir`: empty (compile + write) / filled (deserialise) |", o.copies);
    println!("|---|---|---:|---:|---:|---:|");
    for (f, d) in footprints.iter().zip(disk) {
        println!(
            "| {} | {} | {:.2} MiB | {:.0} ms | {:.2} ms | {:.0} ms / {:.1} ms |",
            f.label,
            f.language,
            f.module_bytes as f64 / MIB,
            ms(f.first_start),
            ms(f.next_start),
            ms(d.write),
            ms(d.read),
        );
    }
    println!(
        "\n**Memory per plugin** (RSS of this process; linear memories found in \
         /proc/self/smaps; {} extra instances of the same module).\n",
        o.copies
    );
    println!("| plugin | RSS added by the first start (compiles): as it returns / after `malloc_trim` | still added once all its instances stopped | RSS added by a start from the disk cache | RSS per extra instance | linear memory per instance: size / resident |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (f, d) in footprints.iter().zip(disk) {
        let reported = f
            .reported_linear
            .map(|b| format!(" (the plugin reports memory.size {:.2} MiB)", b / MIB))
            .unwrap_or_default();
        println!(
            "| {} | {:.1} / {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} MiB | {:.2} / {:.2} MiB{reported} |",
            f.label,
            f.first_rss.0 as f64 / MIB,
            f.first_rss.1 as f64 / MIB,
            f.retained_rss as f64 / MIB,
            d.read_rss as f64 / MIB,
            f.per_instance_rss / MIB,
            f.per_instance_linear.0 / MIB,
            f.per_instance_linear.1 / MIB,
        );
    }
    println!("\n**Linear memory after the delivery runs** (size / resident).\n");
    println!("| plugin | linear memory |");
    println!("|---|---:|");
    for d in deliveries {
        if let Some(m) = d.memory {
            println!(
                "| {} | {:.2} / {:.2} MiB |",
                d.label,
                m.accessible as f64 / MIB,
                m.resident as f64 / MIB
            );
        }
    }
}
