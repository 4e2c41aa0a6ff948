//! `netdev_latency` collector: per interface, the time packets spend in the qdisc
//! (net_dev_queue to net_dev_start_xmit) and in the driver (start_xmit to net_dev_xmit) as
//! histograms bucketed in the kernel, and events for packets slower than the thresholds.
//! Interfaces are labelled with their name and the pod of their network namespace (every pod
//! has an `eth0`); names come from the kernel's `ifnames` table, filled when an interface's
//! first histogram slot is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebpf_core::netdev_latency::{
    ifname, stage_name, Iface, Key, Name, Record, KIND_QUEUE_BUCKET, KIND_QUEUE_SUM,
    KIND_XMIT_BUCKET, KIND_XMIT_SUM, NAMES_MAP, PARAM_QUEUE_NS, PARAM_SAMPLE_EVERY, PARAM_XMIT_NS,
    SPEC,
};
use ebpf_core::record::{log2_slot_bound_seconds, read_record};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::{Deserialize, Deserializer};

use super::{Context, Decoder, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{Event, Kind, Severity};

/// `probes.netdev_latency` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Off by default: three programs run for every packet sent.
    pub enabled: bool,
    /// Packets that waited at least this long in an interface's qdisc become events (`0ms`:
    /// every packet).
    #[serde(deserialize_with = "queue_threshold")]
    pub queue_threshold: Duration,
    /// Packets that took the driver at least this long become events (`0ms`: every packet).
    #[serde(deserialize_with = "xmit_threshold")]
    pub xmit_threshold: Duration,
    /// Each stage of a packet (qdisc, driver) is timed with a chance of one in this many
    /// (drawn at random); events come from timed packets. 1: every packet.
    pub sample_packets: u32,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            queue_threshold: Duration::from_millis(10),
            xmit_threshold: Duration::from_millis(10),
            sample_packets: 16,
            events: EventsConfig::with_ring(super::RING_EXCEPTIONS),
        }
    }
}

fn queue_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "queueThreshold")
}

fn xmit_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "xmitThreshold")
}

crate::probe_event! {
    /// `netdev_latency`: a packet that spent at least its threshold in an interface's qdisc
    /// or driver.
    pub struct NetdevLatency: "netdev_latency", wit NetdevLatency, record 104 {
        pub interface: String => "interface", interface @ 80,
        pub ifindex: u32 => "ifindex", ifindex @ 84,
        /// `queue` (net_dev_queue to start_xmit: the qdisc) or `xmit` (in the driver).
        pub stage: &'static str => "stage", stage @ 96,
        pub duration: Duration => "duration_seconds", duration_ns @ 88,
        /// Bytes of the packet.
        pub bytes: u32 => "bytes", bytes @ 100,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| {
        super::sample_rate(
            "probes.netdev_latency.samplePackets",
            c.netdev_latency.sample_packets,
            "every packet",
        )?;
        c.netdev_latency.events.validate("netdev_latency")
    },
    decoder,
    sync,
    snapshot,
    table: None,
    events: true,
    tc: None,
    series: Some(series),
    fn_attach: None,
};

/// The probe's series.
pub struct Series {
    /// `sonde_netdev_queue_seconds`
    pub queue: crate::metrics::KernelHistogram,
    /// `sonde_netdev_xmit_seconds`
    pub xmit: crate::metrics::KernelHistogram,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        queue: families.pod_histogram(
            "sonde_netdev_queue_seconds",
            &format!(
                "Time packets spent in an interface's qdisc (net_dev_queue to \
                 net_dev_start_xmit), for about one packet in samplePackets ({} by default).",
                Config::default().sample_packets
            ),
            &["interface"],
        ),
        xmit: families.pod_histogram(
            "sonde_netdev_xmit_seconds",
            &format!(
                "Time packets spent in an interface's driver (net_dev_start_xmit to \
                 net_dev_xmit), for about one packet in samplePackets ({} by default).",
                Config::default().sample_packets
            ),
            &["interface"],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.netdev_latency;
    c.enabled.then(|| {
        let mut s = c.events.settings(false, super::RING_EXCEPTIONS);
        s.params[PARAM_QUEUE_NS] = c.queue_threshold.as_nanos() as u64;
        s.params[PARAM_XMIT_NS] = c.xmit_threshold.as_nanos() as u64;
        s.params[PARAM_SAMPLE_EVERY] = c.sample_packets.into();
        s
    })
}

fn decoder(_probe: &mut LoadedProbe, ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    let ctx = Arc::clone(ctx);
    Ok(Box::new(move |bytes| {
        let r: Record = read_record(bytes)?;
        Some(Event::kernel(
            ctx.clock.wall(r.timestamp_ns),
            r.netns,
            Severity::Warning,
            Kind::NetdevLatency(NetdevLatency {
                interface: ifname(&r.name),
                ifindex: r.ifindex,
                stage: stage_name(r.stage),
                duration: Duration::from_nanos(r.duration_ns),
                bytes: r.len,
            }),
        ))
    }))
}

/// Interface names by interface.
type Names = HashMap<Iface, Arc<str>>;

/// Interface names the agent has read from the kernel's table, and when.
static NAMES: Mutex<Option<(Names, Instant)>> = Mutex::new(None);

/// How long names read from the kernel are used before they are read again, so that a
/// renamed interface's new counts carry its new name.
const NAMES_MAX_AGE: Duration = Duration::from_secs(60);

/// The name of each interface, reading the kernel's table again when one is not known yet
/// or the copy is older than [`NAMES_MAX_AGE`].
fn names_of(probe: &LoadedProbe, ifaces: impl Iterator<Item = Iface>) -> Result<Names, ProbeError> {
    let mut cache = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let (cache, read_at) = cache.get_or_insert_with(|| (HashMap::new(), Instant::now()));
    let ifaces: Vec<Iface> = ifaces.collect();
    if read_at.elapsed() > NAMES_MAX_AGE || ifaces.iter().any(|i| !cache.contains_key(i)) {
        // The kernel's table is bounded (LRU); so is this copy of it.
        *cache = probe
            .hash_entries::<Iface, Name>(NAMES_MAP)?
            .into_iter()
            .map(|(i, n)| (i, Arc::from(ifname(&n.0))))
            .collect();
        *read_at = Instant::now();
    }
    Ok(ifaces
        .into_iter()
        .map(|i| {
            let name = cache
                .get(&i)
                .cloned()
                .unwrap_or_else(|| Arc::from(format!("if{}", i.ifindex)));
            (i, name)
        })
        .collect())
}

/// Deltas' id of a key: netns, ifindex, kind and slot are 144 bits, so they are hashed (a
/// collision among a node's few thousand slots is a 1 in 10^12 chance).
fn key_id(k: &Key) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let current = probe.counters::<Key>()?;
    let gained = deltas.update(current, key_id);
    if gained.is_empty() {
        return Ok(());
    }
    let names = names_of(probe, gained.iter().map(|(k, _)| k.iface))?;
    for (key, n) in gained {
        let name = names.get(&key.iface).map(|s| &**s).unwrap_or("");
        let labels = ctx.labels_for_netns(key.iface.netns, &[name]);
        let m = &ctx.metrics;
        match key.kind {
            KIND_QUEUE_BUCKET => m
                .of::<Series>()
                .queue
                .add_slot(labels, key.slot as usize, n),
            KIND_QUEUE_SUM => m.of::<Series>().queue.add_sum_ns(labels, n),
            KIND_XMIT_BUCKET => m.of::<Series>().xmit.add_slot(labels, key.slot as usize, n),
            KIND_XMIT_SUM => m.of::<Series>().xmit.add_sum_ns(labels, n),
            _ => {}
        }
    }
    Ok(())
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    let counters = probe.counters::<Key>()?;
    let names = names_of(probe, counters.keys().map(|k| k.iface))?;
    Ok(counters
        .into_iter()
        .filter_map(|(k, v)| {
            let name = names.get(&k.iface).map(|s| &**s).unwrap_or("");
            let bound = || log2_slot_bound_seconds(k.slot as usize);
            let key = match k.kind {
                KIND_QUEUE_BUCKET => format!("{name}:queue:le={}", bound()),
                KIND_QUEUE_SUM => format!("{name}:queue:sum_ns"),
                KIND_XMIT_BUCKET => format!("{name}:xmit:le={}", bound()),
                KIND_XMIT_SUM => format!("{name}:xmit:sum_ns"),
                _ => return None,
            };
            Some((k.iface.netns, key, v))
        })
        .collect())
}
