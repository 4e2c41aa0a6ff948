//! `tcp_retrans` collector: retransmits counted per pod, events with 5-tuple and state.

use std::sync::Arc;

use ebpf_core::record::read_record;
use ebpf_core::tcp_retrans::{Key, Record, SPEC};
use ebpf_core::{LoadedProbe, ProbeError};

use super::{Context, Decoder, Deltas, Driver, ProbeConfig};
use crate::event::{tcp_state_name, Event, Flow, Kind, Severity};

/// `probes.tcp_retrans` in the agent config: on/off and events.
pub type Config = ProbeConfig<super::TrafficRing>;

crate::probe_event! {
    /// `tcp_retrans`: a TCP segment retransmitted; the flow's source is the local end.
    pub struct TcpRetrans: "tcp_retrans", wit TcpRetrans, record 96, flow {
        /// TCP state: `ESTABLISHED`, `SYN_SENT`, ...
        pub state: &'static str => "state", state @ 80,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings: |c| c.tcp_retrans.settings(),
    validate: |c| c.tcp_retrans.events.validate("tcp_retrans"),
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
    /// `sonde_tcp_retransmits_total`
    pub retransmits: prometheus::IntCounterVec,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        retransmits: families.pod_counter(
            "sonde_tcp_retransmits_total",
            "TCP segments retransmitted.",
            &[],
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
            Severity::Warning,
            Kind::TcpRetrans(TcpRetrans {
                flow: Flow::from(&r.tuple),
                state: tcp_state_name(r.state),
            }),
        ))
    }))
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    COUNTERS.sync(probe, deltas, ctx, &ctx.metrics.of::<Series>().retransmits)
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    COUNTERS.snapshot(probe)
}

/// The retransmits counter: by namespace only.
const COUNTERS: super::CodedCounter<Key> = super::CodedCounter {
    part: |k| (k.netns, 0),
    label: |_| None,
};
