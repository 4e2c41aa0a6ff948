//! `softirq` collector: NET_RX and NET_TX schedule delay (raised until run) and run time as
//! histograms per vector, bucketed in the kernel, and events for softirqs that waited or ran
//! longer than their thresholds. Softirqs belong to CPUs, not pods: the series are labelled by
//! node and vector only.

use std::sync::Arc;
use std::time::Duration;

use ebpf_core::record::{log2_slot_bound_seconds, read_record};
use ebpf_core::softirq::{
    key_of, vec_name, Key, Record, KIND_DELAY_BUCKET, KIND_DELAY_SUM, KIND_RUN_BUCKET,
    KIND_RUN_SUM, PARAM_DELAY_NS, PARAM_RUN_NS, SPEC, STAGE_DELAY,
};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::{Deserialize, Deserializer};

use super::{Context, Decoder, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{Event, Kind, Severity};
use crate::topology::Netns;

/// `probes.softirq` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub enabled: bool,
    /// Softirqs that waited at least this long between being raised and running become
    /// events (`0ms`: every one).
    #[serde(deserialize_with = "delay_threshold")]
    pub delay_threshold: Duration,
    /// Softirqs that ran at least this long become events (`0ms`: every one).
    #[serde(deserialize_with = "duration_threshold")]
    pub duration_threshold: Duration,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            delay_threshold: Duration::from_millis(10),
            duration_threshold: Duration::from_millis(10),
            events: EventsConfig::with_ring(super::RING_EXCEPTIONS),
        }
    }
}

fn delay_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "delayThreshold")
}

fn duration_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "durationThreshold")
}

crate::probe_event! {
    /// `softirq`: a NET_RX or NET_TX softirq that waited to run, or ran, at least its
    /// threshold.
    pub struct Softirq: "softirq", wit Softirq, record 104 {
        /// `NET_RX` or `NET_TX`.
        pub vec: &'static str => "vec", vec @ 80,
        /// `delay` (raised until it ran) or `run` (how long it ran).
        pub stage: &'static str => "stage", stage @ 84,
        pub duration: Duration => "duration_seconds", duration_ns @ 88,
        pub cpu: u32 => "cpu", cpu @ 96,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| c.softirq.events.validate("softirq"),
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
    /// `sonde_softirq_delay_seconds`
    pub delay: crate::metrics::KernelHistogram,
    /// `sonde_softirq_duration_seconds`
    pub duration: crate::metrics::KernelHistogram,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        delay: families.node_histogram(
            "sonde_softirq_delay_seconds",
            "Time NET_RX and NET_TX softirqs waited between being raised and running, by vector.",
            &["node", "vec"],
        ),
        duration: families.node_histogram(
            "sonde_softirq_duration_seconds",
            "Run time of NET_RX and NET_TX softirqs, by vector.",
            &["node", "vec"],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.softirq;
    c.enabled.then(|| {
        let mut s = c.events.settings(false, super::RING_EXCEPTIONS);
        s.params[PARAM_DELAY_NS] = c.delay_threshold.as_nanos() as u64;
        s.params[PARAM_RUN_NS] = c.duration_threshold.as_nanos() as u64;
        s
    })
}

fn decoder(_probe: &mut LoadedProbe, ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    let ctx = Arc::clone(ctx);
    Ok(Box::new(move |bytes| {
        let r: Record = read_record(bytes)?;
        let stage = if r.stage == STAGE_DELAY {
            "delay"
        } else {
            "run"
        };
        Some(Event::kernel(
            ctx.clock.wall(r.timestamp_ns),
            Netns::default(),
            Severity::Warning,
            Kind::Softirq(Softirq {
                vec: vec_name(r.vec),
                stage,
                duration: Duration::from_nanos(r.duration_ns),
                cpu: r.cpu,
            }),
        ))
    }))
}

fn key_id(k: &Key) -> u64 {
    (k.vec as u64) << 16 | (k.kind as u64) << 8 | k.slot as u64
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let current = probe.array_counters_by(key_of)?;
    for (key, gained) in deltas.update(current, key_id) {
        let labels = vec![ctx.node.to_string(), vec_name(key.vec).to_string()];
        let m = &ctx.metrics;
        match key.kind {
            KIND_DELAY_BUCKET => m
                .of::<Series>()
                .delay
                .add_slot(labels, key.slot as usize, gained),
            KIND_DELAY_SUM => m.of::<Series>().delay.add_sum_ns(labels, gained),
            KIND_RUN_BUCKET => {
                m.of::<Series>()
                    .duration
                    .add_slot(labels, key.slot as usize, gained)
            }
            KIND_RUN_SUM => m.of::<Series>().duration.add_sum_ns(labels, gained),
            _ => {}
        }
    }
    Ok(())
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    Ok(probe
        .array_counters_by(key_of)?
        .into_iter()
        .filter_map(|(k, v)| {
            let vec = vec_name(k.vec);
            let bound = || log2_slot_bound_seconds(k.slot as usize);
            let key = match k.kind {
                KIND_DELAY_BUCKET => format!("{vec}:delay:le={}", bound()),
                KIND_DELAY_SUM => format!("{vec}:delay:sum_ns"),
                KIND_RUN_BUCKET => format!("{vec}:run:le={}", bound()),
                KIND_RUN_SUM => format!("{vec}:run:sum_ns"),
                _ => return None,
            };
            Some((Netns::default(), key, v))
        })
        .collect())
}
