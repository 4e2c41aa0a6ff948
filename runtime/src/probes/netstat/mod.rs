//! `netstat` probe: the counters operators already know from /proc, per pod network
//! namespace. Not an eBPF program: a dedicated thread enters each pod's namespace with
//! `setns`, reads `/proc/thread-self/net/{snmp,netstat,dev,sockstat,stat/nf_conntrack}`, the
//! conntrack sysctls and the qdisc statistics (an rtnetlink dump), and returns to the agent's
//! namespace before the next one. Every `interval` the whole reading replaces the previous
//! one, and a scrape exports the latest reading: the kernel's own totals as counters, so
//! series of a namespace that is gone disappear instead of lingering.
//!
//! A dedicated thread because a namespace is a property of the thread that joined it: no
//! tokio worker ever leaves the agent's namespace. `/proc/thread-self/net` (not
//! `/proc/self/net`, which is the main thread's) shows the namespace the thread is in.

pub mod procfs;
pub mod qdisc;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use serde::{Deserialize, Deserializer};

use super::{Context, ProbeStatus};

pub const NAME: &str = "netstat";
pub const DESCRIPTION: &str = "the kernel's network counters (snmp, TcpExt, dev, sockstat, softnet, conntrack, qdisc), read from /proc/net in each pod namespace (not eBPF)";
/// What the probe reads, shown where the eBPF probes show their hooks.
pub const SOURCES: &[&str] = &["procfs:/proc/net/* in each netns", "rtnetlink:RTM_GETQDISC"];

/// `probes.netstat` in the agent config. The probe emits no events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub enabled: bool,
    /// How often every namespace is read; a scrape exports the latest reading.
    #[serde(deserialize_with = "interval")]
    pub interval: Duration,
    /// Read the agent's own (host) namespace too, with empty `namespace` and `pod` labels.
    pub include_host: bool,
    /// What to read: any of snmp, snmp6, netstat, dev, sockstat, softnet, conntrack, qdisc.
    pub groups: Vec<Group>,
}

/// One source of counters (see the README's metric list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// /proc/net/snmp: Ip, Icmp, Tcp, Udp, UdpLite.
    Snmp,
    /// /proc/net/snmp6: Ip6, Icmp6, Udp6, UdpLite6.
    Snmp6,
    /// /proc/net/netstat: TcpExt, IpExt.
    Netstat,
    /// /proc/net/dev: per interface.
    Dev,
    /// /proc/net/sockstat.
    Sockstat,
    /// /proc/net/softnet_stat: per CPU, host only (it is not per namespace).
    Softnet,
    /// /proc/net/stat/nf_conntrack and the conntrack count and limit, when loaded.
    Conntrack,
    /// rtnetlink qdisc statistics, per interface.
    Qdisc,
}

const ALL_GROUPS: [Group; 8] = [
    Group::Snmp,
    Group::Snmp6,
    Group::Netstat,
    Group::Dev,
    Group::Sockstat,
    Group::Softnet,
    Group::Conntrack,
    Group::Qdisc,
];

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            interval: Duration::from_secs(10),
            include_host: true,
            groups: ALL_GROUPS.to_vec(),
        }
    }
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    crate::plugin_host::manifest::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("interval: {e}")))
}

pub fn validate(c: &Config) -> Result<(), String> {
    if c.interval < Duration::from_millis(100) || c.interval > Duration::from_secs(3600) {
        return Err(format!(
            "probes.netstat.interval: {:?} must be between 100ms and 1h",
            c.interval
        ));
    }
    Ok(())
}

/// Whether the probe can run here, for `sonde probes`: joining a network namespace needs
/// CAP_SYS_ADMIN, tried by re-joining our own on a throwaway thread.
pub fn check() -> Result<(), String> {
    std::fs::read_to_string("/proc/net/snmp")
        .map_err(|e| format!("cannot read /proc/net/snmp: {e}"))?;
    std::thread::spawn(|| {
        let own = File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("cannot open /proc/thread-self/ns/net: {e}"))?;
        setns(&own).map_err(|e| {
            format!("cannot enter network namespaces (setns: {e}; needs CAP_SYS_ADMIN)")
        })
    })
    .join()
    .unwrap_or_else(|_| Err("namespace check panicked".into()))
}

fn setns(fd: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd; it changes only the calling thread's namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A metric family the probe exports; every series has `node`, `namespace`, `pod`, then
/// `labels`.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    labels: &'static [&'static str],
}

macro_rules! families {
    ($($id:ident = $name:literal, $counter:literal, [$($label:literal),*], $help:literal;)*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum F { $($id),* }
        const FAMILIES: &[Family] = &[$(Family {
            name: $name,
            help: $help,
            counter: $counter,
            labels: &[$($label),*],
        }),*];
    };
}

families! {
    Ip = "sonde_netstat_ip_total", true, ["counter"], "Ip counters of /proc/net/snmp, by the kernel's field name.";
    Icmp = "sonde_netstat_icmp_total", true, ["counter"], "Icmp counters of /proc/net/snmp, by the kernel's field name.";
    Tcp = "sonde_netstat_tcp_total", true, ["counter"], "Tcp counters of /proc/net/snmp, by the kernel's field name.";
    TcpEstablished = "sonde_netstat_tcp_current_established", false, [], "TCP connections in state ESTABLISHED or CLOSE-WAIT (Tcp CurrEstab).";
    Udp = "sonde_netstat_udp_total", true, ["counter"], "Udp counters of /proc/net/snmp, by the kernel's field name.";
    UdpLite = "sonde_netstat_udp_lite_total", true, ["counter"], "UdpLite counters of /proc/net/snmp, by the kernel's field name.";
    Ip6 = "sonde_netstat_ip6_total", true, ["counter"], "Ip6 counters of /proc/net/snmp6, by the kernel's field name without the Ip6 prefix.";
    Icmp6 = "sonde_netstat_icmp6_total", true, ["counter"], "Icmp6 counters of /proc/net/snmp6, by the kernel's field name without the Icmp6 prefix.";
    Udp6 = "sonde_netstat_udp6_total", true, ["counter"], "Udp6 counters of /proc/net/snmp6, by the kernel's field name without the Udp6 prefix.";
    UdpLite6 = "sonde_netstat_udp_lite6_total", true, ["counter"], "UdpLite6 counters of /proc/net/snmp6, by the kernel's field name without the UdpLite6 prefix.";
    TcpExt = "sonde_netstat_tcp_ext_total", true, ["counter"], "TcpExt counters of /proc/net/netstat (ListenOverflows, ListenDrops, TCPSynRetrans, ...), by the kernel's field name.";
    IpExt = "sonde_netstat_ip_ext_total", true, ["counter"], "IpExt counters of /proc/net/netstat, by the kernel's field name.";
    RxBytes = "sonde_netstat_dev_receive_bytes_total", true, ["device"], "Bytes received, per interface (/proc/net/dev).";
    RxPackets = "sonde_netstat_dev_receive_packets_total", true, ["device"], "Packets received, per interface (/proc/net/dev).";
    RxErrors = "sonde_netstat_dev_receive_errors_total", true, ["device"], "Receive errors, per interface (/proc/net/dev).";
    RxDrops = "sonde_netstat_dev_receive_drops_total", true, ["device"], "Received packets dropped, per interface (/proc/net/dev).";
    TxBytes = "sonde_netstat_dev_transmit_bytes_total", true, ["device"], "Bytes transmitted, per interface (/proc/net/dev).";
    TxPackets = "sonde_netstat_dev_transmit_packets_total", true, ["device"], "Packets transmitted, per interface (/proc/net/dev).";
    TxErrors = "sonde_netstat_dev_transmit_errors_total", true, ["device"], "Transmit errors, per interface (/proc/net/dev).";
    TxDrops = "sonde_netstat_dev_transmit_drops_total", true, ["device"], "Packets dropped on transmit, per interface (/proc/net/dev).";
    Sockets = "sonde_netstat_sockstat_sockets", false, ["protocol", "state"], "Sockets by protocol and state (inuse, orphan, tw, alloc; protocol sockets: used), from /proc/net/sockstat.";
    SocketMemory = "sonde_netstat_sockstat_memory_bytes", false, ["protocol"], "Memory of sockets by protocol, from /proc/net/sockstat (pages times the page size).";
    SoftnetProcessed = "sonde_netstat_softnet_processed_total", true, ["cpu"], "Packets processed by the CPU's backlog (host only: softnet_stat is not per namespace).";
    SoftnetDropped = "sonde_netstat_softnet_dropped_total", true, ["cpu"], "Packets dropped because the CPU's backlog was full (host only).";
    SoftnetSqueezed = "sonde_netstat_softnet_times_squeezed_total", true, ["cpu"], "Times net_rx_action ran out of budget or time with work left (host only).";
    Conntrack = "sonde_netstat_conntrack_total", true, ["counter"], "Conntrack statistics of /proc/net/stat/nf_conntrack summed over CPUs, by column name.";
    ConntrackEntries = "sonde_netstat_conntrack_entries", false, [], "Conntrack entries of the namespace (nf_conntrack_count).";
    ConntrackLimit = "sonde_netstat_conntrack_entries_limit", false, [], "Conntrack table limit (nf_conntrack_max).";
    QdiscBytes = "sonde_netstat_qdisc_bytes_total", true, ["device", "kind", "handle", "parent"], "Bytes sent through the qdisc.";
    QdiscPackets = "sonde_netstat_qdisc_packets_total", true, ["device", "kind", "handle", "parent"], "Packets sent through the qdisc.";
    QdiscDrops = "sonde_netstat_qdisc_drops_total", true, ["device", "kind", "handle", "parent"], "Packets the qdisc dropped.";
    QdiscRequeues = "sonde_netstat_qdisc_requeues_total", true, ["device", "kind", "handle", "parent"], "Packets the qdisc requeued.";
    QdiscOverlimits = "sonde_netstat_qdisc_overlimits_total", true, ["device", "kind", "handle", "parent"], "Times the qdisc was over its limit.";
    QdiscBacklogBytes = "sonde_netstat_qdisc_backlog_bytes", false, ["device", "kind", "handle", "parent"], "Bytes queued in the qdisc.";
    QdiscBacklogPackets = "sonde_netstat_qdisc_backlog_packets", false, ["device", "kind", "handle", "parent"], "Packets queued in the qdisc.";
}

/// The probe's own health: labels `node` only.
const SELF_NAMESPACES: &str = "sonde_netstat_namespaces";
const SELF_DURATION: &str = "sonde_netstat_read_duration_seconds";
const SELF_FAILURES: &str = "sonde_netstat_namespace_read_failures_total";

/// One value of one series: (family, label values after the workload's, value).
type Sample = (F, Vec<String>, f64);

/// The latest reading of every namespace, shared by the reading thread and the scrapes.
#[derive(Default)]
struct Reading {
    /// (namespace, pod) -> its samples.
    by_workload: BTreeMap<(String, String), Vec<Sample>>,
    namespaces: usize,
    duration: Duration,
    failures: u64,
    /// Why the reading thread stopped, when it did.
    fatal: Option<String>,
}

/// The probe's series, registered once with the agent's registry; empty while the probe is
/// off.
#[derive(Clone)]
pub struct Series {
    node: Arc<str>,
    descs: Arc<Vec<Desc>>,
    reading: Arc<Mutex<Reading>>,
}

impl Series {
    pub fn new(node: Arc<str>) -> Self {
        let workload = ["node", "namespace", "pod"];
        let mut descs: Vec<Desc> = FAMILIES
            .iter()
            .map(|f| {
                let labels = workload.iter().chain(f.labels).map(|l| l.to_string());
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    labels.collect(),
                    Default::default(),
                )
                .expect("valid metric definition")
            })
            .collect();
        for (name, help) in [
            (
                SELF_NAMESPACES,
                "Network namespaces the netstat probe read in its last round.",
            ),
            (
                SELF_DURATION,
                "How long the netstat probe's last round of reading took.",
            ),
            (
                SELF_FAILURES,
                "Namespaces the netstat probe could not read (gone, or not enterable).",
            ),
        ] {
            descs.push(
                Desc::new(
                    name.into(),
                    help.into(),
                    vec!["node".into()],
                    Default::default(),
                )
                .expect("valid metric definition"),
            );
        }
        Series {
            node,
            descs: Arc::new(descs),
            reading: Arc::new(Mutex::new(Reading::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reading> {
        self.reading.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.into());
    pair.set_value(value.into());
    pair
}

fn metric(labels: Vec<proto::LabelPair>, counter: bool, value: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels);
    if counter {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}

fn family(name: &str, help: &str, counter: bool, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(if counter {
        MetricType::COUNTER
    } else {
        MetricType::GAUGE
    });
    f.set_metric(metrics);
    f
}

impl Collector for Series {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let reading = self.lock();
        let mut metrics: BTreeMap<F, Vec<proto::Metric>> = BTreeMap::new();
        for ((namespace, pod), samples) in &reading.by_workload {
            for (f, values, value) in samples {
                let def = &FAMILIES[*f as usize];
                let mut labels = vec![
                    label("node", &self.node),
                    label("namespace", namespace),
                    label("pod", pod),
                ];
                labels.extend(def.labels.iter().zip(values).map(|(n, v)| label(n, v)));
                metrics
                    .entry(*f)
                    .or_default()
                    .push(metric(labels, def.counter, *value));
            }
        }
        let mut out: Vec<MetricFamily> = metrics
            .into_iter()
            .map(|(f, m)| {
                let def = &FAMILIES[f as usize];
                family(def.name, def.help, def.counter, m)
            })
            .collect();
        if reading.namespaces > 0 || reading.failures > 0 {
            let own = |name: &str, counter: bool, value: f64| {
                let desc = self
                    .descs
                    .iter()
                    .find(|d| d.fq_name == name)
                    .expect("own desc");
                family(
                    name,
                    &desc.help,
                    counter,
                    vec![metric(vec![label("node", &self.node)], counter, value)],
                )
            };
            out.push(own(SELF_NAMESPACES, false, reading.namespaces as f64));
            out.push(own(SELF_DURATION, false, reading.duration.as_secs_f64()));
            out.push(own(SELF_FAILURES, true, reading.failures as f64));
        }
        out
    }
}

/// The netstat probe as the agent holds it: its series, and the reading thread while on.
pub struct Netstat {
    series: Series,
    running: Option<Reader>,
    /// Why it could not start, when it could not.
    failed: Option<String>,
}

struct Reader {
    config: Config,
    /// New configs for the thread; dropping it stops the thread.
    tx: mpsc::Sender<Config>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current namespace at the latest.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Netstat {
    /// The probe, off; its series registered with the agent's registry.
    pub fn new(ctx: &Context) -> Self {
        let series = Series::new(Arc::clone(&ctx.node));
        if let Err(e) = ctx.metrics.registry.register(Box::new(series.clone())) {
            tracing::error!(probe = NAME, error = %e, "cannot register the netstat series");
        }
        Netstat {
            series,
            running: None,
            failed: None,
        }
    }

    /// Starts, reconfigures or stops the reading thread to match `config`; true when running.
    pub fn apply(&mut self, config: &Config, ctx: &Arc<Context>) -> bool {
        if !config.enabled {
            if self.running.take().is_some() {
                tracing::info!(probe = NAME, "probe disabled");
            }
            self.failed = None;
            *self.series.lock() = Reading::default();
            return false;
        }
        if let Some(r) = &mut self.running {
            if r.config != *config {
                if r.tx.send(config.clone()).is_ok() {
                    r.config = config.clone();
                    tracing::info!(probe = NAME, "probe reconfigured");
                } else {
                    self.running = None;
                }
            }
        }
        if self.running.is_none() {
            match self.start(config, ctx) {
                Ok(r) => {
                    self.running = Some(r);
                    self.failed = None;
                    tracing::info!(
                        probe = NAME,
                        "probe started (reads /proc/net in each pod namespace)"
                    );
                }
                Err(e) => {
                    tracing::error!(probe = NAME, error = %e, "probe cannot load");
                    self.failed = Some(e);
                }
            }
        }
        self.running.is_some() && self.fatal().is_none()
    }

    fn start(&self, config: &Config, ctx: &Arc<Context>) -> Result<Reader, String> {
        check()?;
        *self.series.lock() = Reading::default();
        let (tx, rx) = mpsc::channel();
        let series = self.series.clone();
        let topology = Arc::clone(&ctx.topology);
        let first = config.clone();
        let thread = std::thread::Builder::new()
            .name("sonde-netstat".into())
            .spawn(move || {
                let run =
                    std::panic::AssertUnwindSafe(|| read_loop(first, rx, &series, &*topology));
                let stopped = match std::panic::catch_unwind(run) {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(_) => "the reading thread panicked".to_string(),
                };
                tracing::error!(probe = NAME, error = %stopped, "netstat reading stopped");
                series.lock().fatal = Some(stopped);
            })
            .map_err(|e| format!("cannot start the netstat thread: {e}"))?;
        Ok(Reader {
            config: config.clone(),
            tx,
            thread: Some(thread),
        })
    }

    fn fatal(&self) -> Option<String> {
        self.series.lock().fatal.clone()
    }

    /// True while reading.
    pub fn up(&self) -> bool {
        self.running.is_some() && self.fatal().is_none()
    }

    pub fn status(&self) -> ProbeStatus {
        let (state, error) = match (&self.running, &self.failed, self.fatal()) {
            (Some(_), _, Some(e)) => ("failed", Some(e)),
            (Some(_), _, None) => ("running", None),
            (None, Some(e), _) => ("failed", Some(e.clone())),
            (None, None, _) => ("disabled", None),
        };
        ProbeStatus {
            name: NAME,
            description: DESCRIPTION,
            hooks: SOURCES.iter().map(ToString::to_string).collect(),
            state,
            error,
        }
    }
}

/// A namespace to read: its labels and how to enter it (`None`: the agent's own).
struct Target {
    namespace: String,
    pod: String,
    inode: u32,
    path: Option<PathBuf>,
}

/// The reading thread: a round now, then one every interval, until the channel closes.
/// Returns an error only when it cannot get back to the agent's namespace (the thread ends
/// then, so nothing else ever runs in a pod's namespace).
fn read_loop(
    mut config: Config,
    rx: mpsc::Receiver<Config>,
    series: &Series,
    topology: &dyn crate::topology::Topology,
) -> Result<(), String> {
    let host = File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|e| format!("cannot open /proc/thread-self/ns/net: {e}"))?;
    loop {
        let start = Instant::now();
        let mut targets: Vec<Target> = topology
            .pod_netns()
            .into_iter()
            .map(|p| Target {
                namespace: p.workload.namespace.to_string(),
                pod: p.workload.pod.to_string(),
                inode: p.inode,
                path: Some(p.path),
            })
            .collect();
        targets.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        if config.include_host {
            targets.insert(
                0,
                Target {
                    namespace: String::new(),
                    pod: String::new(),
                    inode: 0,
                    path: None,
                },
            );
        }
        let mut by_workload = BTreeMap::new();
        let mut failures = 0;
        for t in &targets {
            match read_target(t, &config, &host)? {
                Some(samples) => {
                    by_workload
                        .entry((t.namespace.clone(), t.pod.clone()))
                        .or_insert_with(Vec::new)
                        .extend(samples);
                }
                None => failures += 1,
            }
        }
        if config.groups.contains(&Group::Softnet) {
            if let Ok(text) = std::fs::read_to_string("/proc/net/softnet_stat") {
                let host = by_workload
                    .entry((String::new(), String::new()))
                    .or_insert_with(Vec::new);
                for s in procfs::softnet(&text) {
                    let cpu = vec![s.cpu.to_string()];
                    host.push((F::SoftnetProcessed, cpu.clone(), s.processed as f64));
                    host.push((F::SoftnetDropped, cpu.clone(), s.dropped as f64));
                    host.push((F::SoftnetSqueezed, cpu, s.time_squeeze as f64));
                }
            }
        }
        {
            let mut reading = series.lock();
            reading.namespaces = targets.len() - failures as usize;
            reading.by_workload = by_workload;
            reading.duration = start.elapsed();
            reading.failures += failures;
        }
        let wait = config.interval.saturating_sub(start.elapsed());
        match rx.recv_timeout(wait) {
            Ok(new) => config = new,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // Only the latest of several queued configs matters.
        while let Ok(new) = rx.try_recv() {
            config = new;
        }
    }
}

/// Reads one namespace: `Ok(None)` when it cannot be entered (gone since the topology saw
/// it, or refused), `Err` only when the thread could not return to `host`.
fn read_target(t: &Target, config: &Config, host: &OwnedFd) -> Result<Option<Vec<Sample>>, String> {
    let Some(path) = &t.path else {
        return Ok(Some(read_netns(config)));
    };
    // Holding the fd keeps the namespace alive while it is read, even if it is deleted now.
    let ns = match File::open(path) {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            tracing::debug!(probe = NAME, path = %path.display(), error = %e, "namespace gone");
            return Ok(None);
        }
    };
    // The file may now be another namespace (deleted and made again): skip it this round.
    match File::from(ns.try_clone().map_err(|e| e.to_string())?).metadata() {
        Ok(m) if m.ino() as u32 == t.inode => {}
        _ => return Ok(None),
    }
    if let Err(e) = setns(&ns) {
        tracing::warn!(probe = NAME, path = %path.display(), error = %e, "cannot enter namespace");
        return Ok(None);
    }
    let samples = read_netns(config);
    setns(host).map_err(|e| {
        format!(
            "cannot return to the agent's network namespace after reading {}: {e}",
            path.display()
        )
    })?;
    Ok(Some(samples))
}

/// Everything `config` asks for, in the calling thread's namespace.
fn read_netns(config: &Config) -> Vec<Sample> {
    let net = Path::new("/proc/thread-self/net");
    let read = |file: &str| std::fs::read_to_string(net.join(file)).ok();
    let mut out: Vec<Sample> = Vec::new();
    let named = |f: F, name: &str, v: f64| (f, vec![name.to_string()], v);
    for group in &config.groups {
        match group {
            Group::Snmp => {
                for (section, name, v) in read("snmp")
                    .map(|t| procfs::sections(&t))
                    .unwrap_or_default()
                {
                    let f = match (section.as_str(), name.as_str()) {
                        // Settings, not counters.
                        ("Ip", "Forwarding" | "DefaultTTL") => continue,
                        ("Tcp", "RtoAlgorithm" | "RtoMin" | "RtoMax" | "MaxConn") => continue,
                        ("Tcp", "CurrEstab") => {
                            out.push((F::TcpEstablished, Vec::new(), v as f64));
                            continue;
                        }
                        ("Ip", _) => F::Ip,
                        ("Icmp", _) => F::Icmp,
                        ("Tcp", _) => F::Tcp,
                        ("Udp", _) => F::Udp,
                        ("UdpLite", _) => F::UdpLite,
                        _ => continue,
                    };
                    out.push(named(f, &name, v as f64));
                }
            }
            Group::Snmp6 => {
                for (section, name, v) in
                    read("snmp6").map(|t| procfs::snmp6(&t)).unwrap_or_default()
                {
                    let f = match section.as_str() {
                        "Ip6" => F::Ip6,
                        "Icmp6" => F::Icmp6,
                        "Udp6" => F::Udp6,
                        _ => F::UdpLite6,
                    };
                    out.push(named(f, &name, v as f64));
                }
            }
            Group::Netstat => {
                for (section, name, v) in read("netstat")
                    .map(|t| procfs::sections(&t))
                    .unwrap_or_default()
                {
                    let f = match section.as_str() {
                        "TcpExt" => F::TcpExt,
                        "IpExt" => F::IpExt,
                        _ => continue,
                    };
                    out.push(named(f, &name, v as f64));
                }
            }
            Group::Dev => {
                for d in read("dev").map(|t| procfs::dev(&t)).unwrap_or_default() {
                    for (f, v) in [
                        (F::RxBytes, d.rx_bytes),
                        (F::RxPackets, d.rx_packets),
                        (F::RxErrors, d.rx_errors),
                        (F::RxDrops, d.rx_drops),
                        (F::TxBytes, d.tx_bytes),
                        (F::TxPackets, d.tx_packets),
                        (F::TxErrors, d.tx_errors),
                        (F::TxDrops, d.tx_drops),
                    ] {
                        out.push(named(f, &d.device, v as f64));
                    }
                }
            }
            Group::Sockstat => {
                let page = page_size();
                for (proto, key, v) in read("sockstat")
                    .map(|t| procfs::sockstat(&t))
                    .unwrap_or_default()
                {
                    match key.as_str() {
                        "mem" => out.push(named(F::SocketMemory, &proto, (v * page) as f64)),
                        "memory" => out.push(named(F::SocketMemory, &proto, v as f64)),
                        _ => out.push((F::Sockets, vec![proto, key], v as f64)),
                    }
                }
            }
            // Read once per round for the host: see read_loop.
            Group::Softnet => {}
            Group::Conntrack => {
                for (name, v) in read("stat/nf_conntrack")
                    .map(|t| procfs::conntrack_stat(&t))
                    .unwrap_or_default()
                {
                    // entries is the table size (exported from the sysctl below); chainlength
                    // a gauge of the longest hash chain.
                    if name != "entries" && name != "chainlength" {
                        out.push(named(F::Conntrack, &name, v as f64));
                    }
                }
                let sysctl = |name: &str| {
                    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                };
                if let Some(v) = sysctl("nf_conntrack_count") {
                    out.push((F::ConntrackEntries, Vec::new(), v as f64));
                }
                if let Some(v) = sysctl("nf_conntrack_max") {
                    out.push((F::ConntrackLimit, Vec::new(), v as f64));
                }
            }
            Group::Qdisc => match qdisc::dump() {
                Ok(qdiscs) => {
                    for q in qdiscs {
                        let Some(device) = qdisc::interface_name(q.ifindex) else {
                            continue;
                        };
                        let labels = vec![device, q.kind, q.handle, q.parent];
                        for (f, v) in [
                            (F::QdiscBytes, q.bytes),
                            (F::QdiscPackets, q.packets),
                            (F::QdiscDrops, q.drops.into()),
                            (F::QdiscRequeues, q.requeues.into()),
                            (F::QdiscOverlimits, q.overlimits.into()),
                            (F::QdiscBacklogBytes, q.backlog.into()),
                            (F::QdiscBacklogPackets, q.qlen.into()),
                        ] {
                            out.push((f, labels.clone(), v as f64));
                        }
                    }
                }
                Err(e) => tracing::debug!(probe = NAME, error = %e, "qdisc dump failed"),
            },
        }
    }
    out
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_prometheus_conventions() {
        for f in FAMILIES {
            assert!(f.name.starts_with("sonde_netstat_"), "{}", f.name);
            assert_eq!(f.counter, f.name.ends_with("_total"), "{}", f.name);
            assert!(
                f.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn config_defaults_and_checks() {
        let c: Config = serde_yaml::from_str("interval: 2s\ngroups: [snmp, qdisc]\n").unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.groups, vec![Group::Snmp, Group::Qdisc]);
        assert!(c.enabled && c.include_host);
        let e = serde_yaml::from_str::<Config>("groups: [tcp]\n").unwrap_err();
        assert!(e.to_string().contains("snmp"), "{e}");
        let c: Config = serde_yaml::from_str("interval: 10ms\n").unwrap();
        assert!(validate(&c)
            .unwrap_err()
            .contains("probes.netstat.interval"));
    }

    #[test]
    fn reads_the_agents_own_namespace() {
        let samples = read_netns(&Config::default());
        // Every Linux has these.
        assert!(samples
            .iter()
            .any(|(f, l, _)| *f == F::TcpExt && l[0] == "ListenOverflows"));
        assert!(samples
            .iter()
            .any(|(f, l, _)| *f == F::RxBytes && l[0] == "lo"));
    }
}
