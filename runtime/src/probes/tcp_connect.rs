//! `tcp_connect` collector: handshake durations per pod and side as a histogram bucketed in
//! the kernel, failed handshakes per pod, side and cause, and events for handshakes slower
//! than `slowThreshold` and for failures.

use std::sync::Arc;
use std::time::Duration;

use ebpf_core::record::read_record;
use ebpf_core::tcp_connect::{
    cause_name, side_name, Key, Record, ESTABLISHED, KIND_BUCKET, KIND_FAILURE, KIND_SUM,
    PARAM_SLOW_NS, REFUSED, SPEC,
};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::{Deserialize, Deserializer};

use super::{Context, Decoder, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{errno_name, Event, Flow, Kind, Severity};

/// `probes.tcp_connect` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub enabled: bool,
    /// Handshakes at least this slow become events (`0ms`: every handshake). Failures always do.
    #[serde(deserialize_with = "slow_threshold")]
    pub slow_threshold: Duration,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            slow_threshold: Duration::from_millis(200),
            events: EventsConfig::with_ring(super::RING_EXCEPTIONS),
        }
    }
}

/// `slowThreshold`: a duration written `200ms`, `2s` or `1m`.
fn slow_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "slowThreshold")
}

crate::probe_event! {
    /// `tcp_connect`: a TCP handshake that was slow or failed; the flow's source is the local
    /// end.
    pub struct TcpConnect: "tcp_connect", wit TcpConnect, record 104, flow {
        /// `connect` (this socket connected) or `accept` (a listener accepted it).
        pub side: &'static str => "side", side @ 80,
        /// Why it failed (`refused`, `timeout`, `other`); `None` for a slow handshake that
        /// succeeded.
        pub cause: Option<&'static str> => "cause", cause @ 84,
        /// How long the handshake took, or ran before failing; `None` when the probe attached
        /// after it started.
        pub duration: Option<Duration> => "duration_seconds", duration_ns @ 88,
        /// SYN (connect) or SYN-ACK (accept) retransmissions.
        pub retransmits: u8 => "retransmits", retransmits @ 96,
        /// The socket's error when it closed (`ECONNREFUSED`, `ETIMEDOUT`...), if any.
        pub error: Option<std::borrow::Cow<'static, str>> => "error", error @ 100,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| c.tcp_connect.events.validate("tcp_connect"),
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
    /// `sonde_tcp_connect_duration_seconds`
    pub duration: crate::metrics::KernelHistogram,
    /// `sonde_tcp_connect_failures_total`
    pub failures: prometheus::IntCounterVec,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        duration: families.pod_histogram(
            "sonde_tcp_connect_duration_seconds",
            "TCP handshake duration, by side (connect: SYN sent to SYN-ACK; accept: SYN-ACK sent to the final ACK).",
            &["side"],
        ),
        failures: families.pod_counter(
            "sonde_tcp_connect_failures_total",
            "Failed TCP handshakes, by side and cause (refused, timeout, other).",
            &["side", "cause"],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.tcp_connect;
    c.enabled.then(|| {
        let mut s = c.events.settings(false, super::RING_EXCEPTIONS);
        s.params[PARAM_SLOW_NS] = c.slow_threshold.as_nanos() as u64;
        s
    })
}

fn decoder(_probe: &mut LoadedProbe, ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    let ctx = Arc::clone(ctx);
    Ok(Box::new(move |bytes| {
        let r: Record = read_record(bytes)?;
        let failed = r.cause != ESTABLISHED;
        // A refused connect is an answer; a slow handshake or a timeout is the trouble.
        let severity = if r.cause == REFUSED {
            Severity::Info
        } else {
            Severity::Warning
        };
        Some(Event::kernel(
            ctx.clock.wall(r.timestamp_ns),
            r.netns,
            severity,
            Kind::TcpConnect(TcpConnect {
                flow: Flow::from(&r.tuple),
                side: side_name(r.side),
                cause: failed.then(|| cause_name(r.cause)),
                duration: (r.duration_ns != 0).then(|| Duration::from_nanos(r.duration_ns)),
                retransmits: r.retransmits,
                error: (r.error != 0).then(|| errno_name(r.error)),
            }),
        ))
    }))
}

fn key_id(k: &Key) -> u128 {
    super::netns_id(k.netns) | (k.side as u128) << 16 | (k.kind as u128) << 8 | k.value as u128
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let current = probe.counters::<Key>()?;
    for (key, gained) in deltas.update(current, key_id) {
        let side = side_name(key.side);
        match key.kind {
            KIND_BUCKET => ctx.metrics.of::<Series>().duration.add_slot(
                ctx.labels_for_netns(key.netns, &[side]),
                key.value as usize,
                gained,
            ),
            KIND_SUM => ctx
                .metrics
                .of::<Series>()
                .duration
                .add_sum_ns(ctx.labels_for_netns(key.netns, &[side]), gained),
            KIND_FAILURE => ctx.count_for_netns(
                &ctx.metrics.of::<Series>().failures,
                key.netns,
                &[side, cause_name(key.value)],
                gained,
            ),
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
            let side = side_name(k.side);
            let key = match k.kind {
                KIND_BUCKET => format!(
                    "{side}:le={}",
                    ebpf_core::record::log2_slot_bound_seconds(k.value as usize)
                ),
                KIND_SUM => format!("{side}:sum_ns"),
                KIND_FAILURE => format!("{side}:{}", cause_name(k.value)),
                _ => return None,
            };
            Some((k.netns, key, v))
        })
        .collect())
}
