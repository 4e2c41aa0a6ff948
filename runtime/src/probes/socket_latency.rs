//! `socket_latency` collector: per pod (the network namespace of the reading socket), the time
//! from a packet's arrival in that namespace to the application reading it, as a histogram
//! bucketed in the kernel, and the packets that sockets' receive buffers refused, by kind.
//! The probe emits no events. How arrivals and reads are paired is told in
//! `ebpf-core/src/socket_latency.bpf.c`.

use std::sync::Arc;

use ebpf_core::record::log2_slot_bound_seconds;
use ebpf_core::socket_latency::{
    overflow_kind, Key, KIND_BUCKET, KIND_SUM, PARAM_SAMPLE_EVERY, SPEC,
};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::Deserialize;

use super::{Context, Decoder, Deltas, Driver, ProbesConfig};

/// `probes.socket_latency` in the agent config. The probe emits no events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Off by default: the probe runs for every packet received and every socket read.
    pub enabled: bool,
    /// Each arrival of a packet in a network namespace is stamped with a chance of one in
    /// this many (drawn at random); the reads of unstamped packets are not timed. 1: every
    /// packet.
    pub sample_packets: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            sample_packets: 16,
        }
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| {
        super::sample_rate(
            "probes.socket_latency.samplePackets",
            c.socket_latency.sample_packets,
            "every packet",
        )
    },
    decoder,
    sync,
    snapshot,
    table: None,
    events: false,
    tc: None,
    series: Some(series),
    fn_attach: None,
};

/// The probe's series.
pub struct Series {
    /// `sonde_socket_read_latency_seconds`
    pub read_latency: crate::metrics::KernelHistogram,
    /// `sonde_socket_overflows_total`
    pub overflows: prometheus::IntCounterVec,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        read_latency: families.pod_histogram(
            "sonde_socket_read_latency_seconds",
            &format!(
                "Time from a packet's arrival in the pod's network namespace (netif_receive_skb) \
                 to the application reading it from its socket, for about one packet in \
                 samplePackets ({} by default).",
                Config::default().sample_packets
            ),
            &[],
        ),
        overflows: families.pod_counter(
            "sonde_socket_overflows_total",
            "Packets or receive memory refused to a socket, by kind (rcvqueue_full: the socket's receive buffer was full; exceed_buf_limit: the protocol's memory limit).",
            &["kind"],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.socket_latency;
    c.enabled.then(|| {
        let mut s = ProbeSettings {
            events: false,
            // No events: the smallest ring buffer the config allows.
            ring_buffer_size: 64 << 10,
            ..ProbeSettings::default()
        };
        s.params[PARAM_SAMPLE_EVERY] = c.sample_packets.into();
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
        let m = &ctx.metrics;
        match key.kind {
            KIND_BUCKET => m.of::<Series>().read_latency.add_slot(
                ctx.labels_for_netns(key.netns, &[]),
                key.slot as usize,
                gained,
            ),
            KIND_SUM => m
                .of::<Series>()
                .read_latency
                .add_sum_ns(ctx.labels_for_netns(key.netns, &[]), gained),
            kind => {
                if let Some(kind) = overflow_kind(kind) {
                    ctx.count_for_netns(&m.of::<Series>().overflows, key.netns, &[kind], gained);
                }
            }
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
                KIND_BUCKET => format!("le={}", log2_slot_bound_seconds(k.slot as usize)),
                KIND_SUM => "sum_ns".to_string(),
                kind => overflow_kind(kind)?.to_string(),
            };
            Some((k.netns, key, v))
        })
        .collect())
}
