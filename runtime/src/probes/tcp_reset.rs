//! `tcp_reset` collector: resets counted per pod and direction, events with 5-tuple.

use std::sync::Arc;

use ebpf_core::record::read_record;
use ebpf_core::tcp_reset::{direction_name, Key, Record, SPEC};
use ebpf_core::{LoadedProbe, ProbeError};

use super::{Context, Decoder, Deltas, Driver, ProbeConfig};
use crate::event::{tcp_state_name, Event, Flow, Kind, Severity};

/// `probes.tcp_reset` in the agent config: on/off and events.
pub type Config = ProbeConfig<super::ExceptionsRing>;

crate::probe_event! {
    /// `tcp_reset`: a TCP reset sent or received, the flow oriented as the reset travels.
    pub struct TcpReset: "tcp_reset", wit TcpReset, record 96, flow {
        /// `sent` or `received`.
        pub direction: &'static str => "direction", direction @ 80,
        /// State of the socket involved; `None` when the reset answers a packet no socket
        /// owns.
        pub state: Option<&'static str> => "state", state @ 84,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings: |c| c.tcp_reset.settings(),
    validate: |c| c.tcp_reset.events.validate("tcp_reset"),
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
    /// `sonde_tcp_resets_total`
    pub resets: prometheus::IntCounterVec,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        resets: families.pod_counter(
            "sonde_tcp_resets_total",
            "TCP resets, by direction (sent, received).",
            &["direction"],
        ),
    })
}

fn decoder(_probe: &mut LoadedProbe, ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    let ctx = Arc::clone(ctx);
    Ok(Box::new(move |bytes| {
        let r: Record = read_record(bytes)?;
        Some(Event::kernel(
            ctx.clock.wall(r.timestamp_ns),
            r.netns,
            Severity::Info,
            Kind::TcpReset(TcpReset {
                flow: Flow::from(&r.tuple),
                direction: direction_name(r.direction as u32),
                // 0 is no TCP state: the kernel had no socket for the segment it answered.
                state: (r.state != 0).then(|| tcp_state_name(r.state)),
            }),
        ))
    }))
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    COUNTERS.sync(probe, deltas, ctx, &ctx.metrics.of::<Series>().resets)
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    COUNTERS.snapshot(probe)
}

/// The resets counter: by namespace and direction.
const COUNTERS: super::CodedCounter<Key> = super::CodedCounter {
    part: |k| (k.netns, k.direction),
    label: |d| Some(direction_name(d)),
};
