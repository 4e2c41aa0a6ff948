//! `io_latency` collector: block request latency per disk and operation as a histogram
//! bucketed in the kernel, and events for requests slower than `slowThreshold` (an IO hang).
//! Disks are named from /sys/dev/block/MAJOR:MINOR (`vda`, `loop3`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebpf_core::io_latency::{
    dev_major_minor, op_name, Key, Record, KIND_BUCKET, KIND_SUM, PARAM_SLOW_NS, SPEC,
};
use ebpf_core::record::{log2_slot_bound_seconds, read_record};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::{Deserialize, Deserializer};

use super::{Context, Decoder, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{Event, Kind, Severity};
use crate::topology::Netns;

/// `probes.io_latency` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub enabled: bool,
    /// Requests at least this slow become events (`0ms`: every request).
    #[serde(deserialize_with = "slow_threshold")]
    pub slow_threshold: Duration,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            slow_threshold: Duration::from_secs(1),
            events: EventsConfig::with_ring(super::RING_EXCEPTIONS),
        }
    }
}

fn slow_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "slowThreshold")
}

crate::probe_event! {
    /// `io_latency`: a block request that took at least the slow threshold to complete.
    pub struct IoLatency: "io_latency", wit IoLatency, record 120 {
        /// The disk's name (`vda`, `loop3`), or `major:minor` when it has none.
        pub device: String => "device", device @ 80,
        /// `major:minor`.
        pub dev: String => "dev", dev @ 84,
        /// `read`, `write` or `other`.
        pub op: &'static str => "op", op @ 96,
        pub duration: Duration => "duration_seconds", duration_ns @ 88,
        pub bytes: u32 => "bytes", bytes @ 100,
        pub sector: u64 => "sector", sector @ 104,
        /// The completion's block status (blk_status_t), `None` when it succeeded.
        pub error: Option<i32> => "error", error @ 112,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| c.io_latency.events.validate("io_latency"),
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
    /// `sonde_io_latency_seconds`
    pub latency: crate::metrics::KernelHistogram,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        latency: families.node_histogram(
            "sonde_io_latency_seconds",
            "Block request latency from issue to the driver to completion, by disk and operation.",
            &["node", "device", "op"],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.io_latency;
    c.enabled.then(|| {
        let mut s = c.events.settings(false, super::RING_EXCEPTIONS);
        s.params[PARAM_SLOW_NS] = c.slow_threshold.as_nanos() as u64;
        s
    })
}

/// `major:minor` of a kernel dev_t.
fn dev_string(dev: u32) -> String {
    let (major, minor) = dev_major_minor(dev);
    format!("{major}:{minor}")
}

/// Disk names by dev_t, looked up in /sys/dev/block once per disk.
static NAMES: Mutex<Option<HashMap<u32, Arc<str>>>> = Mutex::new(None);

/// The disk's name (the link /sys/dev/block/MAJOR:MINOR points to), or `major:minor`.
fn device_name(dev: u32) -> Arc<str> {
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let names = names.get_or_insert_with(HashMap::new);
    if let Some(name) = names.get(&dev) {
        return Arc::clone(name);
    }
    let devt = dev_string(dev);
    let name: Arc<str> = std::fs::read_link(format!("/sys/dev/block/{devt}"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or(devt)
        .into();
    // Loop devices come and go: keep the cache bounded.
    if names.len() >= 4096 {
        names.clear();
    }
    names.insert(dev, Arc::clone(&name));
    name
}

fn decoder(_probe: &mut LoadedProbe, ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    let ctx = Arc::clone(ctx);
    Ok(Box::new(move |bytes| {
        let r: Record = read_record(bytes)?;
        let severity = if r.error != 0 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        Some(Event::kernel(
            ctx.clock.wall(r.timestamp_ns),
            Netns::default(),
            severity,
            Kind::IoLatency(IoLatency {
                device: device_name(r.dev).to_string(),
                dev: dev_string(r.dev),
                op: op_name(r.op),
                duration: Duration::from_nanos(r.duration_ns),
                bytes: r.bytes,
                sector: r.sector,
                error: (r.error != 0).then_some(r.error),
            }),
        ))
    }))
}

fn key_id(k: &Key) -> u64 {
    (k.dev as u64) << 32 | (k.op as u64) << 16 | (k.kind as u64) << 8 | k.slot as u64
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let current = probe.counters::<Key>()?;
    for (key, gained) in deltas.update(current, key_id) {
        let labels = vec![
            ctx.node.to_string(),
            device_name(key.dev).to_string(),
            op_name(key.op).to_string(),
        ];
        match key.kind {
            KIND_BUCKET => {
                ctx.metrics
                    .of::<Series>()
                    .latency
                    .add_slot(labels, key.slot as usize, gained)
            }
            KIND_SUM => ctx
                .metrics
                .of::<Series>()
                .latency
                .add_sum_ns(labels, gained),
            _ => {}
        }
    }
    Ok(())
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    Ok(probe
        .counters::<Key>()?
        .into_iter()
        .filter_map(|(k, v)| {
            let (dev, op) = (device_name(k.dev), op_name(k.op));
            let key = match k.kind {
                KIND_BUCKET => {
                    format!("{dev}:{op}:le={}", log2_slot_bound_seconds(k.slot as usize))
                }
                KIND_SUM => format!("{dev}:{op}:sum_ns"),
                _ => return None,
            };
            Some((Netns::default(), key, v))
        })
        .collect())
}
