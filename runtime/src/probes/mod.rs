//! The collectors: the agent side of each probe of the catalogue. A probe is loaded and
//! attached when its config enables it, reconfigured in place when its settings change, and
//! unloaded when disabled, without touching the others. Its ring buffer is drained by a task
//! that decodes records into typed events, enriches them and publishes them in batches; its
//! in-kernel counters are turned into Prometheus counters by [`Probes::sync`].
//!
//! Adding a probe: a module here with its config struct, decoder, counter sync and
//! [`Driver`], and its line in the `catalogue!` below (which declares the module, its field
//! in [`ProbesConfig`], its place in [`DRIVERS`] and, when it has events, its `Kind`).
//!
//! [`netstat`] loads no program: it owns a thread that reads /proc/net in each pod's
//! namespace, and [`Probes`] starts, reconfigures, stops and reports it beside the drivers.

mod interfaces;
pub mod netstat;

use crate::config::Invalid;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use ebpf_core::btf::KernelBtf;
use ebpf_core::{
    FnAttach, FnMode, LoadedProbe, ProbeError, ProbeLoader, ProbeSettings, ProbeSpec, Stats,
    TcAttach, TcMode,
};
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::enrich::Enrichers;
use crate::event::Event;
use crate::fanout::FanOut;
use crate::kallsyms::Kallsyms;
use crate::metrics::Metrics;
use crate::timefmt::BootClock;
use crate::topology::{Netns, Topology, Workload};
use crate::units::ByteSize;

/// How often a ring buffer is drained when the kernel has not woken the agent, while events
/// come: records under the kernel's wake-up threshold wait at most this long.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The longest wait between drains of a probe that has had no events: each empty pass
/// doubles the wait from [`POLL_INTERVAL`] up to this, and a record brings it back. An idle
/// agent then wakes a few times a second per probe rather than forty.
pub const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Events per published batch, at most.
const MAX_BATCH: usize = 1024;
/// Records one pass of a ring buffer's drain takes before it yields its worker.
const MAX_PER_PASS: usize = 4 * MAX_BATCH;

/// What every collector shares.
pub struct Context {
    pub node: Arc<str>,
    pub topology: Arc<dyn Topology>,
    pub metrics: Arc<Metrics>,
    /// Read on first use (see [`Context::symbols`]).
    pub symbols: OnceLock<Kallsyms>,
    pub clock: BootClock,
    pub fanout: Arc<FanOut>,
    /// Workload labels from enrichment plugins.
    pub enrichers: Enrichers,
}

impl Context {
    /// The context of node `node`: the one way the agent (`sonde run`), `sonde trace` and the
    /// benches make it, so that each runs the probes, enrichment and fan-out the same way.
    /// Its fan-out counts what consumers lose in `metrics`.
    pub fn new(node: &str, topology: Arc<dyn Topology>, metrics: Arc<Metrics>) -> Arc<Context> {
        let fanout = FanOut::new(metrics.consumer_events_dropped.clone());
        Arc::new(Context {
            node: Arc::from(node),
            topology,
            metrics,
            symbols: OnceLock::new(),
            clock: BootClock::new(),
            fanout,
            enrichers: Enrichers::default(),
        })
    }

    /// Kernel symbols, read from /proc/kallsyms the first time they are needed: after the
    /// probes are loaded, so that its memory does not add to the peak of loading them.
    pub fn symbols(&self) -> &Kallsyms {
        self.symbols.get_or_init(Kallsyms::load)
    }

    /// Adds `n` to the series of `counter` for the workload of `netns`: labels `node`,
    /// `namespace`, `pod` (empty for the host), the additional labels, then `extra`.
    pub fn count_for_netns(&self, counter: &IntCounterVec, netns: Netns, extra: &[&str], n: u64) {
        let labels = self.labels_for_netns(netns, extra);
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.metrics.budget.inc_counter(counter, &labels, n);
    }

    /// The label values `node`, `namespace`, `pod` (empty for the host) of the workload of
    /// `netns`, the additional labels' (`topology.additionalLabels`; empty where unknown), then
    /// `extra`: the one place every workload-labelled series gets its labels.
    pub fn labels_for_netns(&self, netns: Netns, extra: &[&str]) -> Vec<String> {
        self.labels_for_workload(self.topology.workload_of_netns(netns), extra)
    }

    /// As [`Context::labels_for_netns`], for a workload already looked up (`None`: the host
    /// or unknown), such as the owner of an address.
    pub fn labels_for_workload(&self, workload: Option<Workload>, extra: &[&str]) -> Vec<String> {
        let (namespace, pod) = match &workload {
            Some(w) => (&*w.namespace, &*w.pod),
            None => ("", ""),
        };
        let mut labels = vec![self.node.to_string(), namespace.into(), pod.into()];
        let additional = self.metrics.additional_labels.len();
        if additional > 0 {
            let values = workload
                .as_ref()
                .and_then(|w| self.topology.label_values(w));
            labels.extend((0..additional).map(|i| {
                values
                    .as_ref()
                    .and_then(|v| v.get(i))
                    .cloned()
                    .unwrap_or_default()
            }));
        }
        labels.extend(extra.iter().map(|s| s.to_string()));
        labels
    }

    /// The one enrichment stage: every event, whatever made it (a probe's ring buffer, the
    /// dns probe's tables, a plugin or a script), passes here on its way to the fan-out, so
    /// that sinks, scripts, plugins and the events API see the same event. See
    /// [`Context::enrich`].
    pub fn publish(&self, mut events: Vec<Event>) {
        let mut owners = Owners::default();
        for e in &mut events {
            self.enrich_with(e, &mut owners);
        }
        self.fanout.publish(events);
    }

    /// Fills in an event's node; its workload (from its network namespace, unless its maker
    /// knew it already: the dns probe names the client by its address); the other end of its
    /// flow (`peer`: the workload that owns the destination, or the source when the
    /// destination is the event's own workload, as for a packet dropped in the pod it was
    /// sent to); then its `labels`: the additional labels' non-empty values, and the
    /// enrichment plugins' (which win on the same name).
    pub fn enrich(&self, event: &mut Event) {
        self.enrich_with(event, &mut Owners::default());
    }

    /// [`Context::enrich`], with the owners already looked up for the events before it in
    /// the same batch.
    fn enrich_with(&self, event: &mut Event, owners: &mut Owners) {
        event.node = Arc::clone(&self.node);
        if event.workload.is_none() {
            let netns = Netns::new(event.netns, event.netns_cookie);
            event.workload = owners.of_netns(netns, |n| self.topology.workload_of_netns(n));
        }
        if let Some(flow) = event.kind.flow() {
            let mut owner = |a: Option<std::net::IpAddr>| {
                a.and_then(|a| owners.of_ip(a, |a| self.topology.workload_of_ip(a)))
            };
            event.peer = match owner(flow.daddr) {
                Some(w) if Some(&w) == event.workload.as_ref() => owner(flow.saddr),
                other => other,
            };
        }
        self.enrichers.label(event);
        let names = &self.metrics.additional_labels;
        let Some(values) = (!names.is_empty())
            .then_some(event.workload.as_ref())
            .flatten()
            .and_then(|w| self.topology.label_values(w))
        else {
            return;
        };
        let mut merged: Vec<(String, String)> = names
            .iter()
            .zip(values.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in event.labels.iter().flat_map(|l| l.iter()) {
            merged.retain(|(mk, _)| mk != k);
            merged.push((k.clone(), v.clone()));
        }
        if !merged.is_empty() {
            event.labels = Some(Arc::from(merged));
        }
    }
}

/// The owners of the namespace and the addresses the last events of a batch had: a flood
/// comes from one pod to one peer, and each lookup in the topology takes a lock, hashes and
/// clones. Lives for one batch, a few milliseconds of events, so a pod that comes or goes is
/// seen from the next batch on.
#[derive(Default)]
struct Owners {
    netns: Option<(Netns, Option<Workload>)>,
    /// The last two addresses looked up (a flow's destination, then its source).
    ips: [Option<(std::net::IpAddr, Option<Workload>)>; 2],
}

impl Owners {
    fn of_netns(
        &mut self,
        netns: Netns,
        look_up: impl FnOnce(Netns) -> Option<Workload>,
    ) -> Option<Workload> {
        match &self.netns {
            Some((n, w)) if *n == netns => w.clone(),
            _ => {
                let w = look_up(netns);
                self.netns = Some((netns, w.clone()));
                w
            }
        }
    }

    fn of_ip(
        &mut self,
        ip: std::net::IpAddr,
        look_up: impl FnOnce(std::net::IpAddr) -> Option<Workload>,
    ) -> Option<Workload> {
        if let Some((_, w)) = self.ips.iter().flatten().find(|(a, _)| *a == ip) {
            return w.clone();
        }
        let w = look_up(ip);
        self.ips.rotate_right(1);
        self.ips[0] = Some((ip, w.clone()));
        w
    }
}

/// `events:` of a probe's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct EventsConfig {
    /// Emit per-event records to the consumers (counting happens either way).
    pub enabled: bool,
    /// Events per second per CPU; 0 = unlimited. Enforced in the kernel.
    pub rate_per_cpu: u64,
    /// Events a CPU may emit in a burst above the rate.
    pub burst: u64,
    /// Events per second from one network namespace (all CPUs), in front of the per-CPU
    /// limit, so that one pod's flood does not silence the others; 0 = no such limit.
    /// Enforced in the kernel.
    pub rate_per_namespace: u64,
    /// Events a namespace may emit in a burst above its rate.
    pub burst_per_namespace: u64,
    /// Size of the probe's ring buffer (a power of two, at least 64Ki: smaller ones wake the
    /// agent every few records and lose events under load); `None` = the probe's own default
    /// ([`RING_TRAFFIC`] or [`RING_EXCEPTIONS`]), also when a config's `events:` names other
    /// fields only.
    pub ring_buffer_size: Option<ByteSize>,
}

/// Ring buffer of a probe whose events follow the traffic (drops, retransmits, connections
/// that end): bursts of thousands of records between two drains.
pub const RING_TRAFFIC: u32 = 1 << 20;

/// Ring buffer of a probe whose events are exceptions past a threshold or failures (slow
/// handshakes, resets, hung IO, slow softirqs): a quarter of [`RING_TRAFFIC`]. Each ring is
/// mapped into the agent twice, so this saves 1.5 MiB of resident memory per probe; at 96-byte
/// records it still holds over 2,500 events, past a 2-CPU node's whole burst allowance.
pub const RING_EXCEPTIONS: u32 = 256 << 10;

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            rate_per_cpu: 1000,
            burst: 1000,
            rate_per_namespace: 100,
            burst_per_namespace: 100,
            ring_buffer_size: None,
        }
    }
}

impl EventsConfig {
    /// The defaults with a ring buffer of `ring` bytes: a probe's default config.
    pub fn with_ring(ring: u32) -> Self {
        EventsConfig {
            ring_buffer_size: Some(ByteSize(ring as u64)),
            ..EventsConfig::default()
        }
    }

    fn validate(&self, probe: &str) -> Result<(), Invalid> {
        let Some(ByteSize(size)) = self.ring_buffer_size else {
            return Ok(());
        };
        if size < 64 << 10 || !size.is_power_of_two() || size > 1 << 30 {
            return Err(Invalid::new(
                format!("probes.{probe}.events.ringBufferSize"),
                format!("{size} must be a power of two between 64Ki and 1Gi"),
            ));
        }
        Ok(())
    }

    /// Kernel settings from these; `ring` is the probe's ring buffer size when the config
    /// does not set one ([`RING_TRAFFIC`] or [`RING_EXCEPTIONS`]).
    fn settings(&self, stack: bool, ring: u32) -> ProbeSettings {
        ProbeSettings {
            events: self.enabled,
            rate_per_cpu: self.rate_per_cpu,
            burst: self.burst,
            rate_per_namespace: self.rate_per_namespace,
            burst_per_namespace: self.burst_per_namespace,
            stack,
            ring_buffer_size: self.ring_buffer_size.map_or(ring, |b| b.0 as u32),
            params: [0; 4],
            table_size: 0,
            tc_attach: TcAttach::Auto,
            fn_attach: FnAttach::Auto,
        }
    }
}

/// The bounds of a sampling rate (`sampleSegments`, `samplePackets`): one in `n`, 1 being
/// every one.
fn sample_rate(field: &str, n: u32, every: &str) -> Result<(), crate::config::Invalid> {
    if (1..=65536).contains(&n) {
        return Ok(());
    }
    Err(crate::config::Invalid::new(
        field,
        format!("{n} must be between 1 ({every}) and 65536"),
    ))
}

/// Kernel settings of a probe that keeps a table of `table_size` rows and emits no events.
fn table_settings(table_size: u32) -> ProbeSettings {
    ProbeSettings {
        events: false,
        // No events: the smallest ring buffer the config allows.
        ring_buffer_size: 64 << 10,
        table_size,
        ..ProbeSettings::default()
    }
}

/// A probe's default ring buffer size, as a type for [`ProbeConfig`].
pub trait DefaultRing {
    const BYTES: u32;
}

/// [`RING_TRAFFIC`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficRing;

impl DefaultRing for TrafficRing {
    const BYTES: u32 = RING_TRAFFIC;
}

/// [`RING_EXCEPTIONS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionsRing;

impl DefaultRing for ExceptionsRing {
    const BYTES: u32 = RING_EXCEPTIONS;
}

/// Config of a probe with no settings beyond being on and its events, whose ring buffer is
/// `R::BYTES` unless the config says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    default,
    bound = "R: DefaultRing"
)]
pub struct ProbeConfig<R> {
    pub enabled: bool,
    pub events: EventsConfig,
    #[serde(skip)]
    ring: std::marker::PhantomData<R>,
}

impl<R: DefaultRing> Default for ProbeConfig<R> {
    fn default() -> Self {
        ProbeConfig {
            enabled: true,
            events: EventsConfig::with_ring(R::BYTES),
            ring: std::marker::PhantomData,
        }
    }
}

impl<R: DefaultRing> ProbeConfig<R> {
    /// The probe's kernel settings, `None` when it is off.
    pub fn settings(&self) -> Option<ProbeSettings> {
        self.enabled.then(|| self.events.settings(false, R::BYTES))
    }
}

impl ProbesConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        DRIVERS.iter().try_for_each(|d| (d.validate)(self))?;
        netstat::validate(&self.netstat)
    }
}

/// Turns one ring buffer record into an event (not yet enriched).
pub type Decoder = Box<dyn FnMut(&[u8]) -> Option<Event> + Send>;

/// The decoder of a probe whose kernel side emits no records (its ring buffer stays empty).
fn no_events(_probe: &mut LoadedProbe, _ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    Ok(Box::new(|_| None))
}

/// The agent side of one probe.
pub struct Driver {
    pub spec: &'static ProbeSpec,
    /// The probe's settings, `None` when the config disables it.
    pub settings: fn(&ProbesConfig) -> Option<ProbeSettings>,
    pub validate: fn(&ProbesConfig) -> Result<(), Invalid>,
    pub decoder: fn(&mut LoadedProbe, &Arc<Context>) -> Result<Decoder, ProbeError>,
    /// Adds what the in-kernel counters gained since the last sync to the metrics.
    pub sync: fn(&LoadedProbe, &mut Deltas, &Context) -> Result<(), ProbeError>,
    /// The in-kernel counters as (netns, key, total): the key names what is counted (drop
    /// reason, reset direction), "" when nothing is.
    pub snapshot: fn(&LoadedProbe) -> Result<Vec<CounterRow>, ProbeError>,
    /// The probe's in-kernel table (tcp_rtt: its live flows), one JSON object per row with
    /// the field names events use; `None` for probes without one. For `/api/v1/` and the
    /// plugins' `maps` interface.
    pub table: Option<TableReader>,
    /// Whether it hands over events (its config takes an `events` block): what scripts can
    /// have `on_<probe>` handlers for.
    pub events: bool,
    /// For a probe with TC hooks: the interfaces it attaches to and how.
    pub tc: Option<TcConfig>,
    /// For a probe with kernel-function hooks in two forms (fentry or kprobe): how it is to
    /// attach them (`attach` in its config).
    pub fn_attach: Option<fn(&ProbesConfig) -> FnAttach>,
    /// Makes the probe's series (its metric families, in its own file); the probe finds them
    /// again with `ctx.metrics.of::<Series>()`.
    pub series: Option<fn(&mut crate::metrics::Families) -> ProbeSeries>,
}

/// A probe's series, as its driver makes them (`Driver::series`).
pub type ProbeSeries = Box<dyn std::any::Any + Send + Sync>;

/// The settings of a probe with TC hooks, whose programs are attached to each interface that
/// matches its patterns.
pub struct TcConfig {
    /// The interface patterns (`interfaces` in its config).
    pub interfaces: fn(&ProbesConfig) -> &[String],
    /// How to attach (`attach` in its config).
    pub attach: fn(&ProbesConfig) -> TcAttach,
}

/// Reads a probe's in-kernel table: one JSON object per row (see [`Driver::table`]).
pub type TableReader = fn(&LoadedProbe, &Context) -> Result<Vec<serde_json::Value>, ProbeError>;

/// One in-kernel counter: (netns, key, total).
pub type CounterRow = (Netns, String, u64);

/// Counters keyed by a network namespace and a small code (a reset's direction, a TCP state),
/// as `part` splits a key; `label` names the code (`None`: the counter has no label of its
/// own). The shared sync and snapshot of such probes.
pub(crate) struct CodedCounter<K> {
    pub part: fn(&K) -> (Netns, u32),
    pub label: fn(u32) -> Option<&'static str>,
}

impl<K: aya::Pod + Eq + std::hash::Hash> CodedCounter<K> {
    /// Adds what each key gained since the last sync to `counter`'s series of its workload
    /// (with the code's label, when it has one).
    pub fn sync(
        &self,
        probe: &LoadedProbe,
        deltas: &mut Deltas,
        ctx: &Context,
        counter: &IntCounterVec,
    ) -> Result<(), ProbeError> {
        let current = probe.counters::<K>()?;
        let id = |k: &K| {
            let (netns, code) = (self.part)(k);
            netns_id(netns) | code as u128
        };
        for (key, gained) in deltas.update(current, id) {
            let (netns, code) = (self.part)(&key);
            let label = (self.label)(code);
            ctx.count_for_netns(counter, netns, label.as_slice(), gained);
        }
        Ok(())
    }

    /// The counters as (netns, label or "", total).
    pub fn snapshot(&self, probe: &LoadedProbe) -> Result<Vec<CounterRow>, ProbeError> {
        Ok(probe
            .counters::<K>()?
            .into_iter()
            .map(|(k, v)| {
                let (netns, code) = (self.part)(&k);
                (netns, (self.label)(code).unwrap_or_default().to_string(), v)
            })
            .collect())
    }
}

/// A namespace as the high 96 bits of a counter key's id for [`Deltas::update`]: the low 32
/// are the key's other fields.
pub fn netns_id(netns: Netns) -> u128 {
    (netns.cookie as u128) << 64 | (netns.inode as u128) << 32
}

/// The probes that hand over events (every driver but those that keep only metrics and a
/// table, such as tcp_rtt): what scripts can have `on_<probe>` handlers for.
pub fn event_probes() -> Vec<&'static str> {
    DRIVERS
        .iter()
        .filter(|d| d.events)
        .map(|d| d.spec.name)
        .collect()
}

/// The driver of the probe named `name`.
pub fn driver(name: &str) -> Option<&'static Driver> {
    DRIVERS.iter().find(|d| d.spec.name == name)
}

/// The driver of `probe`, which a request (an API call, a plugin) names.
fn known(probe: &str) -> Result<&'static Driver, ControlError> {
    driver(probe).ok_or_else(|| ControlError::Unknown(probe.to_string()))
}

/// Why a request about a probe (its counters or table, its event rate, a stream of its
/// events) cannot be met; the text is what the API and plugins are told.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown probe {0:?}")]
    Unknown(String),
    #[error("probe {0} is not running")]
    NotRunning(&'static str),
    #[error("probe {0} has no table")]
    NoTable(&'static str),
    #[error("probe {0} needs a reload for these settings")]
    NeedsReload(&'static str),
    /// The kernel refused a map read or update.
    #[error(transparent)]
    Kernel(#[from] ProbeError),
}

/// Declares the catalogue from one line per probe: `module` for a probe without events,
/// `module: Variant(Event, "wit-name", WitBatch)` for one with events. It makes the probe's
/// module (`<module>.rs`, the probe's descriptor), its field in [`ProbesConfig`] (its
/// `Config`, under `probes.<module>`), its [`Driver`] in [`DRIVERS`], and for a probe with
/// events its variant of `Kind`, `EventProbe` and `Delivery` (through
/// `schema::catalogue_events!`).
macro_rules! catalogue {
    ($($probe:ident $(: $variant:ident($event:ident, $kebab:literal, $batch:ident))?),* $(,)?) => {
        $(pub mod $probe;)*

        /// `probes:` in the agent config, one field per probe of the catalogue.
        #[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct ProbesConfig {
            $(pub $probe: $probe::Config,)*
            /// Not eBPF: reads /proc/net in each pod's namespace (see [`netstat`]).
            pub netstat: netstat::Config,
        }

        /// Every collector, one per probe of the catalogue.
        pub const DRIVERS: &[Driver] = &[$($probe::DRIVER,)*];

        // The probes with events: what plugins and scripts subscribe to.
        crate::catalogue_events! {
            $($($variant($probe::$event, $kebab, $batch),)?)*
        }
    };
}

// The catalogue, in the order probes are loaded, listed and handed over to plugins. Each
// line with events gives the variant of `Kind` (and of `EventProbe` and `Delivery`), the
// event its module declares with `probe_event!`, its name in the WIT (`<name>-handler`) and
// its WIT batch record.
catalogue! {
    packet_drop: PacketDrop(PacketDrop, "packet-drop", PacketDropBatch),
    tcp_retrans: TcpRetrans(TcpRetrans, "tcp-retrans", TcpRetransBatch),
    tcp_reset: TcpReset(TcpReset, "tcp-reset", TcpResetBatch),
    tcp_connect: TcpConnect(TcpConnect, "tcp-connect", TcpConnectBatch),
    tcp_rtt,
    softirq: Softirq(Softirq, "softirq", SoftirqBatch),
    netdev_latency: NetdevLatency(NetdevLatency, "netdev-latency", NetdevLatencyBatch),
    socket_latency,
    io_latency: IoLatency(IoLatency, "io-latency", IoLatencyBatch),
    stack_latency,
    virtio_net,
    flow,
    dns: Dns(Dns, "dns", DnsBatch),
    tcp_state: TcpState(TcpState, "tcp-state", TcpStateBatch),
}

/// The interface patterns of a probe with TC hooks (none for the others).
fn tc_interfaces(probe: &str, config: &ProbesConfig) -> Vec<String> {
    driver(probe)
        .and_then(|d| d.tc.as_ref())
        .map_or_else(Vec::new, |tc| (tc.interfaces)(config).to_vec())
}

/// How a probe with TC hooks is to attach them (`attach` in its config); `auto` for the
/// others.
pub fn tc_attach(probe: &str, config: &ProbesConfig) -> TcAttach {
    driver(probe)
        .and_then(|d| d.tc.as_ref())
        .map_or(TcAttach::Auto, |tc| (tc.attach)(config))
}

/// How a probe with kernel-function hooks in two forms is to attach them (`attach` in its
/// config); `auto` for the others.
pub fn fn_attach(probe: &str, config: &ProbesConfig) -> FnAttach {
    driver(probe)
        .and_then(|d| d.fn_attach)
        .map_or(FnAttach::Auto, |f| f(config))
}

/// Last-seen values of in-kernel counters, to add only what they gained to Prometheus
/// counters (which keep their totals across probe reloads and namespace changes).
#[derive(Debug, Default)]
pub struct Deltas {
    last: HashMap<u128, u64>,
    peaks: HashMap<u64, u64>,
    synced: Option<Instant>,
}

impl Deltas {
    /// Pairs each key with its gain since the last call; `id` packs a key into a number
    /// (see [`netns_id`]). A value below the last one means the kernel evicted the slot and
    /// started it again (counter maps are LRU), so all of it is new.
    pub fn update<K, I: Into<u128>>(
        &mut self,
        current: HashMap<K, u64>,
        id: impl Fn(&K) -> I,
    ) -> Vec<(K, u64)> {
        let mut gained = Vec::new();
        let mut seen = HashMap::with_capacity(current.len());
        for (key, value) in current {
            let k = id(&key).into();
            let prev = self.last.get(&k).copied().unwrap_or(0);
            let gain = if value >= prev { value - prev } else { value };
            if gain > 0 {
                gained.push((key, gain));
            }
            seen.insert(k, value);
        }
        // Slots the kernel evicted are forgotten too, so the table stays as small as the map.
        self.last = seen;
        gained
    }

    /// Seconds since the previous call (none at the first): the span of the last gains, for
    /// rates.
    pub fn since_last_sync(&mut self) -> Option<f64> {
        let now = Instant::now();
        self.synced
            .replace(now)
            .map(|t| now.duration_since(t).as_secs_f64())
    }

    /// What a total that may read low at times (an estimate) gained over the highest value it
    /// had: a counter fed with it never goes back. `id` must not be one `update` uses.
    pub fn rising(&mut self, id: u64, value: u64) -> u64 {
        let peak = self.peaks.entry(id).or_insert(0);
        let gain = value.saturating_sub(*peak);
        *peak = (*peak).max(value);
        gain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch looks each namespace and address up once while they repeat, and again when
    /// another came between (for addresses: two others).
    #[test]
    fn owners_are_looked_up_once_while_they_repeat() {
        let pod = |name: &str| Workload {
            namespace: Arc::from("ns"),
            pod: Arc::from(name),
        };
        let mut owners = Owners::default();
        let mut lookups = Vec::new();
        let a = Netns::new(1, 10);
        let b = Netns::new(2, 20);
        for n in [a, a, b, a] {
            let w = owners.of_netns(n, |n| {
                lookups.push(n.inode);
                Some(pod(&n.inode.to_string()))
            });
            assert_eq!(w, Some(pod(&n.inode.to_string())));
        }
        assert_eq!(lookups, [1, 2, 1]);

        let mut looked: Vec<std::net::IpAddr> = Vec::new();
        let [x, y, z]: [std::net::IpAddr; 3] =
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(|a| a.parse().unwrap());
        for ip in [x, y, x, y, z, x, y] {
            let w = owners.of_ip(ip, |ip| {
                looked.push(ip);
                (ip != z).then(|| pod(&ip.to_string()))
            });
            assert_eq!(w, (ip != z).then(|| pod(&ip.to_string())));
        }
        assert_eq!(looked, [x, y, z, x, y]);
    }

    /// A driver says it has events exactly when its config takes an `events` block.
    #[test]
    fn a_driver_has_events_when_its_config_takes_them() {
        for d in DRIVERS {
            let name = d.spec.name;
            let config = serde_json::json!({ name: { "events": { "enabled": true } } });
            let takes = serde_json::from_value::<ProbesConfig>(config).is_ok();
            assert_eq!(takes, d.events, "{name}");
        }
    }

    /// A ring buffer's size is the probe's own default unless the config sets one, also when
    /// the config's `events:` sets other fields.
    #[test]
    fn ring_buffers_default_per_probe() {
        let config: ProbesConfig = serde_json::from_value(serde_json::json!({
            "packet_drop": { "events": { "ratePerCpu": 5 } },
            "tcp_connect": { "events": { "ratePerCpu": 5 } },
            "tcp_reset": { "events": { "ringBufferSize": "2Mi" } },
        }))
        .unwrap();
        config.validate().unwrap();
        let ring = |name: &str| {
            let settings = (driver(name).unwrap().settings)(&config).unwrap();
            settings.ring_buffer_size
        };
        assert_eq!(ring("packet_drop"), RING_TRAFFIC);
        assert_eq!(ring("tcp_retrans"), RING_TRAFFIC);
        assert_eq!(ring("tcp_connect"), RING_EXCEPTIONS);
        assert_eq!(ring("io_latency"), RING_EXCEPTIONS);
        assert_eq!(ring("tcp_reset"), 2 << 20);
        assert_eq!(RING_EXCEPTIONS, 256 << 10);
    }

    #[test]
    fn deltas_count_gains_and_restarted_slots() {
        let mut d = Deltas::default();
        let snap = |pairs: &[(u32, u64)]| pairs.iter().copied().collect::<HashMap<u32, u64>>();
        let mut gained = d.update(snap(&[(1, 5), (2, 3)]), |k| *k as u64);
        gained.sort();
        assert_eq!(gained, vec![(1, 5), (2, 3)]);
        assert_eq!(
            d.update(snap(&[(1, 5), (2, 7)]), |k| *k as u64),
            vec![(2, 4)]
        );
        // Slot 2 evicted and counted again from zero: its new value is all gain.
        let mut gained = d.update(snap(&[(1, 6), (2, 2)]), |k| *k as u64);
        gained.sort();
        assert_eq!(gained, vec![(1, 1), (2, 2)]);
        // Slot 1 evicted and not yet back, then back at 1.
        assert_eq!(d.update(snap(&[(2, 2)]), |k| *k as u64), vec![]);
        assert_eq!(
            d.update(snap(&[(1, 1), (2, 2)]), |k| *k as u64),
            vec![(1, 1)]
        );
    }
}

/// State of one probe, as `/api/v1/probes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub name: &'static str,
    pub description: &'static str,
    pub hooks: Vec<String>,
    /// `running`, `disabled` or `failed`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a failed probe: the tries so far, and the seconds until the next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_seconds: Option<u64>,
    /// For a running probe: what it lacks on this kernel (an older program had to do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// For a running probe with TC hooks: how its programs are attached (`tcx`, `clsact`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach: Option<&'static str>,
    /// For a running probe with TC hooks: the interfaces it is attached to now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
}

struct Running {
    probe: LoadedProbe,
    settings: ProbeSettings,
    drain: JoinHandle<()>,
    deltas: Deltas,
    stats: Stats,
    /// Events suppressed per namespace (the kernel's `ns_buckets`), and how many of the
    /// probe's suppressed events were put on a pod so far.
    ns_suppressed: Deltas,
    attributed: u64,
    /// The interfaces a probe with TC hooks is attached to, followed by a thread.
    interfaces: Option<interfaces::InterfaceWatch>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// A probe that did not load, and when it is tried again.
struct Failed {
    error: String,
    /// Tries so far.
    attempts: u32,
    retry_at: Instant,
}

/// The wait before the next try of a probe that failed `attempts` times: 5 s, doubling up to
/// 5 minutes (a kernel that lacks a hook lacks it for good, and each try parses its BTF).
pub fn retry_delay(attempts: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(5);
    const MOST: Duration = Duration::from_secs(300);
    FIRST
        .checked_mul(1u32 << attempts.saturating_sub(1).min(16))
        .map_or(MOST, |d| d.min(MOST))
}

/// The probes the agent runs.
pub struct Probes {
    ctx: Arc<Context>,
    running: BTreeMap<&'static str, Running>,
    failed: BTreeMap<&'static str, Failed>,
    /// The config last applied, to re-apply when an override starts or ends.
    config: ProbesConfig,
    /// Event rates set for a bounded time (plugins' `control`), until their deadline.
    rate_overrides: BTreeMap<&'static str, (u64, Instant)>,
    /// The probe that loads no program (its own thread reads procfs).
    netstat: netstat::Netstat,
}

impl Probes {
    pub fn new(ctx: Arc<Context>) -> Self {
        for d in DRIVERS {
            ctx.metrics
                .probe_up
                .with_label_values(&[d.spec.name])
                .set(0);
            ctx.metrics.events_lost.with_label_values(&[d.spec.name]);
        }
        ctx.metrics
            .probe_up
            .with_label_values(&[netstat::NAME])
            .set(0);
        let netstat = netstat::Netstat::new(&ctx);
        Probes {
            netstat,
            ctx,
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
            config: ProbesConfig::default(),
            rate_overrides: BTreeMap::new(),
        }
    }

    /// Brings the running probes in line with the config. A probe that fails to load is
    /// reported, the others carry on, and it is tried again later ([`Probes::retry_failed`]).
    pub fn apply(&mut self, config: &ProbesConfig) {
        self.config = config.clone();
        self.apply_probes(config, false);
        let up = self.netstat.apply(&config.netstat, &self.ctx);
        self.ctx
            .metrics
            .probe_up
            .with_label_values(&[netstat::NAME])
            .set(up as i64);
    }

    /// Tries again the probes that failed to load and whose wait is over (see
    /// [`retry_delay`]); the agent calls it every second.
    pub fn retry_failed(&mut self) {
        let now = Instant::now();
        if self.failed.values().any(|f| f.retry_at <= now) {
            let config = self.config.clone();
            self.apply_probes(&config, true);
        }
    }

    /// [`Probes::apply`] for the eBPF probes; with `only_due`, a failed probe whose wait is
    /// not over is left as it is.
    fn apply_probes(&mut self, config: &ProbesConfig, only_due: bool) {
        let now = Instant::now();
        self.rate_overrides.retain(|_, (_, until)| *until > now);
        // The kernel's BTF (from btf.path when set) is parsed only when a probe is to be
        // loaded, and let go afterwards: it is tens of MiB that the running probes no longer
        // need.
        let btf: OnceCell<Result<KernelBtf, ebpf_core::btf::KernelBtfError>> = OnceCell::new();
        let mut loader: Option<ProbeLoader<'_>> = None;
        for driver in DRIVERS {
            let name = driver.spec.name;
            let mut wanted = (driver.settings)(config);
            if let (Some(s), Some((rate, _))) = (wanted.as_mut(), self.rate_overrides.get(name)) {
                s.rate_per_cpu = *rate;
            }
            let up = self.ctx.metrics.probe_up.with_label_values(&[name]);
            if only_due
                && self
                    .failed
                    .get(name)
                    .is_some_and(|f| f.retry_at > Instant::now())
            {
                continue;
            }
            match wanted {
                None => {
                    self.failed.remove(name);
                    if let Some(mut r) = self.running.remove(name) {
                        sync_running(driver, &mut r, &self.ctx);
                        tracing::info!(probe = name, "probe disabled");
                    }
                    up.set(0);
                }
                Some(settings) => {
                    if let Some(r) = self.running.get_mut(name) {
                        if let Some(w) = r.interfaces.as_mut() {
                            w.set_patterns(&tc_interfaces(name, config));
                        }
                        if r.settings == settings {
                            continue;
                        }
                        match r.probe.configure(&settings) {
                            Ok(true) => {
                                r.settings = settings;
                                tracing::info!(probe = name, "probe reconfigured");
                                continue;
                            }
                            Ok(false) => tracing::info!(
                                probe = name,
                                "probe reloading for its new ring buffer size, table size or attach mode"
                            ),
                            Err(e) => {
                                tracing::warn!(probe = name, error = %e, "reconfiguring failed; reloading")
                            }
                        }
                        if let Some(mut r) = self.running.remove(name) {
                            sync_running(driver, &mut r, &self.ctx);
                        }
                    }
                    // The loader first, then the BTF: see ProbeLoader.
                    let loader = loader.get_or_insert_with(ProbeLoader::new);
                    let btf = btf.get_or_init(KernelBtf::load);
                    let started = match btf {
                        Ok(btf) => self.start(driver, loader, btf, settings),
                        Err(e) => Err(ProbeError::Btf(e.to_string())),
                    };
                    match started {
                        Ok(r) => {
                            self.running.insert(name, r);
                            if let Some(f) = self.failed.remove(name) {
                                tracing::info!(
                                    probe = name,
                                    attempts = f.attempts + 1,
                                    "probe attached after failing"
                                );
                            } else {
                                tracing::info!(probe = name, "probe attached");
                            }
                            up.set(1);
                        }
                        Err(e) => {
                            let attempts = self.failed.get(name).map_or(0, |f| f.attempts) + 1;
                            let wait = retry_delay(attempts);
                            tracing::error!(probe = name, error = %e, retry_in = ?wait, "probe cannot load");
                            self.failed.insert(
                                name,
                                Failed {
                                    error: e.to_string(),
                                    attempts,
                                    retry_at: Instant::now() + wait,
                                },
                            );
                            up.set(0);
                        }
                    }
                }
            }
        }
        let loaded = loader.is_some();
        drop(loader);
        drop(btf);
        if loaded {
            crate::memory::release_freed_memory();
        }
    }

    fn start<'a>(
        &self,
        driver: &Driver,
        loader: &mut ProbeLoader<'a>,
        btf: &'a KernelBtf,
        settings: ProbeSettings,
    ) -> Result<Running, ProbeError> {
        let mut probe = loader.load(driver.spec, btf, &settings)?;
        let name = driver.spec.name;
        if let Some(lacks) = probe.degraded() {
            tracing::warn!(probe = name, lacks, "probe runs degraded on this kernel");
        }
        let interfaces = match probe.tc_target()? {
            Some(target) => Some(
                interfaces::InterfaceWatch::start(name, target, tc_interfaces(name, &self.config))
                    .map_err(|e| ProbeError::Btf(format!("cannot watch interfaces: {e}")))?,
            ),
            None => None,
        };
        let decoder = (driver.decoder)(&mut probe, &self.ctx)?;
        let ring = probe.take_events()?;
        let drain = tokio::spawn(drain(
            driver.spec.name,
            ring,
            decoder,
            Arc::clone(&self.ctx),
        ));
        Ok(Running {
            probe,
            settings,
            drain,
            deltas: Deltas::default(),
            stats: Stats::default(),
            ns_suppressed: Deltas::default(),
            attributed: 0,
            interfaces,
        })
    }

    /// Whether `probe` is running; the reason when not.
    pub fn check_running(&self, probe: &str) -> Result<(), ControlError> {
        self.running_driver(probe).map(|_| ())
    }

    fn running_driver(&self, probe: &str) -> Result<&'static Driver, ControlError> {
        let driver = known(probe)?;
        if !self.running.contains_key(driver.spec.name) {
            return Err(ControlError::NotRunning(driver.spec.name));
        }
        Ok(driver)
    }

    /// Sets a running probe's event rate (per second per CPU, 0 = unlimited) for a bounded
    /// time; the configured rate returns when it ends (checked at every sync).
    pub fn override_event_rate(
        &mut self,
        probe: &str,
        rate: u64,
        duration: Duration,
    ) -> Result<(), ControlError> {
        let driver = self.running_driver(probe)?;
        self.rate_overrides
            .insert(driver.spec.name, (rate, Instant::now() + duration));
        self.reconfigure(driver)?;
        tracing::info!(
            probe,
            rate,
            ?duration,
            "event rate overridden for a bounded time"
        );
        Ok(())
    }

    /// Applies a running probe's settings (config plus any override) in place. Unlike
    /// `apply`, this never loads a probe, so it is safe from any thread.
    fn reconfigure(&mut self, driver: &Driver) -> Result<(), ControlError> {
        let name = driver.spec.name;
        let Some(mut settings) = (driver.settings)(&self.config) else {
            return Ok(());
        };
        if let Some((rate, _)) = self.rate_overrides.get(name) {
            settings.rate_per_cpu = *rate;
        }
        let Some(r) = self.running.get_mut(name) else {
            return Ok(());
        };
        if !r.probe.configure(&settings)? {
            return Err(ControlError::NeedsReload(name));
        }
        r.settings = settings;
        Ok(())
    }

    /// A running probe's in-kernel counters: (netns, key, total).
    pub fn snapshot(&self, probe: &str) -> Result<Vec<CounterRow>, ControlError> {
        let driver = known(probe)?;
        match self.running.get(driver.spec.name) {
            Some(r) => Ok((driver.snapshot)(&r.probe)?),
            None => Ok(Vec::new()),
        }
    }

    /// A running probe's in-kernel table (see [`Driver::table`]); empty when the probe is
    /// not running.
    pub fn table(&self, probe: &str) -> Result<Vec<serde_json::Value>, ControlError> {
        let driver = known(probe)?;
        let read = driver
            .table
            .ok_or(ControlError::NoTable(driver.spec.name))?;
        match self.running.get(driver.spec.name) {
            Some(r) => Ok(read(&r.probe, &self.ctx)?),
            None => Ok(Vec::new()),
        }
    }

    /// The probe named `name` when it is running.
    pub fn loaded(&self, name: &str) -> Option<&LoadedProbe> {
        self.running.get(name).map(|r| &r.probe)
    }

    /// What every collector shares.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Brings the Prometheus counters up to date with the kernel's.
    pub fn sync(&mut self) {
        let now = Instant::now();
        let ended: Vec<&'static str> = self
            .rate_overrides
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(name, _)| *name)
            .collect();
        for name in ended {
            self.rate_overrides.remove(name);
            if let Some(driver) = driver(name) {
                match self.reconfigure(driver) {
                    Ok(()) => tracing::info!(probe = name, "event rate override ended"),
                    Err(e) => {
                        tracing::warn!(probe = name, error = %e, "restoring the event rate failed")
                    }
                }
            }
        }
        for driver in DRIVERS {
            if let Some(r) = self.running.get_mut(driver.spec.name) {
                sync_running(driver, r, &self.ctx);
            }
        }
        // The netstat thread publishes its own readings; only its health is followed here.
        self.ctx
            .metrics
            .probe_up
            .with_label_values(&[netstat::NAME])
            .set(self.netstat.up() as i64);
    }

    pub fn status(&self) -> Vec<ProbeStatus> {
        DRIVERS
            .iter()
            .map(|d| {
                let name = d.spec.name;
                let mut interfaces = None;
                let mut degraded = None;
                let mut attach = None;
                let mut attempts = None;
                let mut retry_in_seconds = None;
                // A running probe's hooks on this kernel; the others', those of every kernel.
                let mut hooks: Vec<String> =
                    d.spec.hooks_everywhere().map(ToString::to_string).collect();
                let (state, error) = if let Some(r) = self.running.get(name) {
                    degraded = r.probe.degraded().map(str::to_string);
                    attach = (r.probe.tc_mode().map(TcMode::as_str))
                        .or(r.probe.fn_mode().map(FnMode::as_str));
                    hooks = r.probe.hook_names();
                    // An interface the programs could not attach to is said, the probe runs.
                    let attached = r.interfaces.as_ref().map(|w| w.attached());
                    let error = attached.as_ref().and_then(|(_, e)| e.clone());
                    interfaces = attached.map(|(names, _)| names);
                    ("running", error)
                } else if let Some(f) = self.failed.get(name) {
                    attempts = Some(f.attempts);
                    retry_in_seconds = Some(
                        f.retry_at
                            .saturating_duration_since(Instant::now())
                            .as_secs_f64()
                            .ceil() as u64,
                    );
                    ("failed", Some(f.error.clone()))
                } else {
                    ("disabled", None)
                };
                ProbeStatus {
                    name,
                    description: d.spec.description,
                    hooks,
                    state,
                    error,
                    attempts,
                    retry_in_seconds,
                    degraded,
                    attach,
                    interfaces,
                }
            })
            .chain(std::iter::once(self.netstat.status()))
            .collect()
    }

    /// Syncs and unloads every probe: their TC filters are deleted now, not whenever the last
    /// reference to the probes goes.
    pub fn stop(&mut self) {
        self.sync();
        self.running.clear();
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        // Final sync so nothing counted is lost on the way out.
        self.sync();
    }
}

/// Adds what a running probe's counters and delivery stats gained to the metrics.
fn sync_running(driver: &Driver, r: &mut Running, ctx: &Context) {
    let name = driver.spec.name;
    if let Err(e) = (driver.sync)(&r.probe, &mut r.deltas, ctx) {
        tracing::warn!(probe = name, error = %e, "reading counters failed");
    }
    match r.probe.stats() {
        Ok(stats) => {
            let m = &ctx.metrics;
            m.events_lost
                .with_label_values(&[name])
                .inc_by(stats.lost.saturating_sub(r.stats.lost));
            sync_suppressed(name, r, &stats, ctx);
            r.stats = stats;
        }
        Err(e) => tracing::warn!(probe = name, error = %e, "reading probe stats failed"),
    }
}

/// Adds the events the probe suppressed since the last sync to
/// `sonde_events_suppressed_total{probe,namespace,pod}`: those of each namespace's bucket to
/// its pod, the rest (events of no namespace, of one gone from the kernel's table or not a
/// pod's) with empty `namespace` and `pod`, so that the series of a probe add up to its total.
fn sync_suppressed(name: &str, r: &mut Running, stats: &Stats, ctx: &Context) {
    let m = &ctx.metrics.events_suppressed;
    match r.probe.ns_suppressed() {
        Ok(by_netns) => {
            for (netns, gained) in r.ns_suppressed.update(by_netns, |&n| n as u64) {
                let (namespace, pod) = match ctx.topology.workload_of_netns(Netns::inode(netns)) {
                    Some(w) => (w.namespace.to_string(), w.pod.to_string()),
                    None => continue,
                };
                ctx.metrics
                    .budget
                    .inc_counter(m, &[name, &namespace, &pod], gained);
                r.attributed += gained;
            }
        }
        Err(e) => tracing::debug!(probe = name, error = %e, "reading namespace buckets failed"),
    }
    // Kept in a slot of its own: `update` above uses namespace inodes (32 bits) as ids.
    let rest = r
        .ns_suppressed
        .rising(u64::MAX, stats.suppressed.saturating_sub(r.attributed));
    if rest > 0 {
        m.with_label_values(&[name, "", ""]).inc_by(rest);
    }
}

/// Drains one probe's ring buffer: on the kernel's wake-up (a batch is waiting) or the poll
/// timer, whichever comes first; the timer slows down while the ring stays empty.
async fn drain(
    probe: &'static str,
    ring: RingBuf<MapData>,
    mut decode: Decoder,
    ctx: Arc<Context>,
) {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until it is dropped,
    // so the registration never outlives the descriptor.
    let mut fd =
        match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                let (_, e) = e.into_parts();
                tracing::error!(probe, error = %e, "cannot watch ring buffer");
                return;
            }
        };
    let mut wait = POLL_INTERVAL;
    // Records left in the ring after a pass: the next pass comes after a yield, not a wait.
    let mut more = false;
    loop {
        if more {
            // A flood never holds the worker: other tasks (HTTP, streams) run in between.
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                ready = fd.readable_mut() => match ready {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        tracing::error!(probe, error = %e, "ring buffer poll failed");
                        return;
                    }
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let ring = fd.get_mut();
        let mut batch = Vec::new();
        let mut taken = 0;
        more = false;
        while let Some(record) = ring.next() {
            if let Some(event) = decode(&record) {
                batch.push(event);
            }
            drop(record);
            taken += 1;
            if batch.len() >= MAX_BATCH {
                ctx.publish(std::mem::take(&mut batch));
            }
            if taken >= MAX_PER_PASS {
                more = true;
                break;
            }
        }
        if !batch.is_empty() {
            ctx.publish(batch);
        }
        wait = if taken > 0 {
            POLL_INTERVAL
        } else {
            (wait * 2).min(IDLE_POLL_INTERVAL)
        };
    }
}
