//! `tcp_rtt` collector: the smoothed RTT histogram per pod (bucketed in the kernel) and the
//! table of live flows (srtt, cwnd, windows) the kernel keeps, read on demand.

use crate::config::Invalid;
use std::sync::Arc;
use std::time::Duration;

use ebpf_core::tcp_rtt::{
    Flow as FlowRow, Key, FIRST_SEGMENTS, KIND_BUCKET, KIND_SUM, PARAM_SAMPLE_EVERY,
    PARAM_SAMPLE_NS, SPEC,
};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::{Context, Decoder, Deltas, Driver, ProbesConfig};
use crate::event::Flow;

/// `probes.tcp_rtt` in the agent config. The probe emits no events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Off by default: the probe runs on every TCP segment received.
    pub enabled: bool,
    /// A flow is sampled at most this often (`0ms`: every segment): its srtt enters the
    /// histogram and its row in the flow table is refreshed.
    #[serde(deserialize_with = "sample_interval")]
    pub sample_interval: Duration,
    /// Past a connection's first segments (four, and any before its first data), one
    /// segment in this many (drawn at random) is looked at; the others touch no table. 1:
    /// every segment.
    pub sample_segments: u32,
    /// Live flows kept in the kernel's table (least recently updated ones make room).
    pub flow_table_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            sample_interval: Duration::from_secs(1),
            sample_segments: 16,
            flow_table_size: 65536,
        }
    }
}

fn sample_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "sampleInterval")
}

fn validate(c: &ProbesConfig) -> Result<(), Invalid> {
    super::sample_rate(
        "probes.tcp_rtt.sampleSegments",
        c.tcp_rtt.sample_segments,
        "every segment",
    )?;
    let n = c.tcp_rtt.flow_table_size;
    if !(1024..=1 << 24).contains(&n) {
        return Err(Invalid::new(
            "probes.tcp_rtt.flowTableSize",
            format!("{n} must be between 1024 and 16777216"),
        ));
    }
    Ok(())
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate,
    decoder,
    sync,
    snapshot,
    table: Some(table),
    events: false,
    tc: None,
    series: Some(series),
    fn_attach: None,
};

/// The probe's series.
pub struct Series {
    /// `sonde_tcp_rtt_seconds`
    pub rtt: crate::metrics::KernelHistogram,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        rtt: families.pod_histogram(
            "sonde_tcp_rtt_seconds",
            &format!(
                "Smoothed RTT of TCP connections, each sampled at most once per sampleInterval, \
                 from one received segment in sampleSegments ({} by default) past a \
                 connection's first {FIRST_SEGMENTS}.",
                Config::default().sample_segments
            ),
            &[],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.tcp_rtt;
    c.enabled.then(|| {
        let mut s = super::table_settings(c.flow_table_size);
        s.params[PARAM_SAMPLE_NS] = c.sample_interval.as_nanos() as u64;
        s.params[PARAM_SAMPLE_EVERY] = c.sample_segments.into();
        s
    })
}

fn decoder(_probe: &mut LoadedProbe, _ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    Ok(Box::new(|_| None))
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let current = probe.counters::<Key>()?;
    let id = |k: &Key| super::netns_id(k.netns) | (k.kind as u128) << 8 | k.slot as u128;
    for (key, gained) in deltas.update(current, id) {
        let labels = ctx.labels_for_netns(key.netns, &[]);
        match key.kind {
            KIND_BUCKET => {
                ctx.metrics
                    .of::<Series>()
                    .rtt
                    .add_slot(labels, key.slot as usize, gained)
            }
            KIND_SUM => ctx.metrics.of::<Series>().rtt.add_sum_ns(labels, gained),
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
            let key = match k.kind {
                KIND_BUCKET => format!(
                    "le={}",
                    ebpf_core::record::log2_slot_bound_seconds(k.slot as usize)
                ),
                KIND_SUM => "sum_ns".to_string(),
                _ => return None,
            };
            Some((k.netns, key, v))
        })
        .collect())
}

/// The live flows, local end as source, with the pod they belong to.
fn table(probe: &LoadedProbe, ctx: &Context) -> Result<Vec<serde_json::Value>, ProbeError> {
    let rows = probe.hash_entries::<u64, FlowRow>(ebpf_core::probe::TABLE_MAP)?;
    Ok(rows
        .into_iter()
        .map(|(_, f)| {
            let flow = Flow::from(&f.tuple);
            let labels = ctx.labels_for_netns(f.netns, &[]);
            json!({
                "node": labels[0],
                "namespace": labels[1],
                "pod": labels[2],
                "netns": f.netns.inode,
                "netns_cookie": f.netns.cookie,
                "protocol": flow.protocol,
                "saddr": flow.saddr,
                "sport": flow.sport,
                "daddr": flow.daddr,
                "dport": flow.dport,
                "srtt_seconds": f.srtt_us as f64 / 1e6,
                "rttvar_seconds": f.rttvar_us as f64 / 1e6,
                "min_rtt_seconds": f.min_rtt_us as f64 / 1e6,
                "snd_cwnd": f.snd_cwnd,
                "snd_wnd": f.snd_wnd,
                "rcv_wnd": f.rcv_wnd,
                "mss": f.mss,
                "segments": f.segments,
                "updated": crate::timefmt::rfc3339(ctx.clock.wall(f.updated_ns)),
            })
        })
        .collect())
}
