//! `tcp_state` collector: TCP sockets entering each state, counted per pod and state in the
//! kernel, and an event for each connection that ends (the state it closed from, how long it
//! lived, the bytes it moved): what `tcplife` prints, labelled with the pod.

use std::sync::Arc;
use std::time::Duration;

use ebpf_core::record::read_record;
use ebpf_core::tcp_state::{Key, Record, NO_DURATION, SPEC};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::Deserialize;

use super::{Context, Decoder, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{tcp_state_name, Event, Flow, Kind, Severity};

/// `probes.tcp_state` in the agent config: on/off and events. Off by default: it runs at
/// every TCP state change, and an event per connection is a lot on a busy node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub enabled: bool,
    pub events: EventsConfig,
}

crate::probe_event! {
    /// `tcp_state`: a TCP connection that closed; the flow's source is the local end.
    pub struct TcpState: "tcp_state", wit TcpState, record 112, flow {
        /// The state it closed from: `FIN_WAIT2`, `LAST_ACK`, `SYN_SENT` (a connect that
        /// failed), ...
        pub state: &'static str => "state", state @ 80,
        /// How long it lived, from its first SYN; `None` when it began before the probe
        /// loaded.
        pub duration: Option<Duration> => "duration_seconds", duration_ns @ 88,
        /// Bytes it sent that the peer acknowledged, and bytes it received (in sequence
        /// space: a SYN or FIN counts one).
        pub bytes_sent: u64 => "bytes_sent", bytes_sent @ 96,
        pub bytes_received: u64 => "bytes_received", bytes_received @ 104,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| c.tcp_state.events.validate("tcp_state"),
    decoder,
    sync,
    snapshot,
    table: None,
    events: true,
    tc: None,
    series: Some(series),
    fn_attach: None,
};

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.tcp_state;
    c.enabled.then(|| c.events.settings(false, super::RING_TRAFFIC))
}

/// The probe's series.
pub struct Series {
    /// `sonde_tcp_state_changes_total`
    pub changes: prometheus::IntCounterVec,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        changes: families.pod_counter(
            "sonde_tcp_state_changes_total",
            "TCP sockets entering each state (SYN_SENT, ESTABLISHED, CLOSE, ...), by the state entered.",
            &["state"],
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
            Kind::TcpState(TcpState {
                flow: Flow::from(&r.tuple),
                state: tcp_state_name(r.from),
                duration: (r.duration_ns != NO_DURATION)
                    .then(|| Duration::from_nanos(r.duration_ns)),
                bytes_sent: r.bytes_sent,
                bytes_received: r.bytes_received,
            }),
        ))
    }))
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    COUNTERS.sync(probe, deltas, ctx, &ctx.metrics.of::<Series>().changes)
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    COUNTERS.snapshot(probe)
}

/// The state changes counter: by namespace and the state entered.
const COUNTERS: super::CodedCounter<Key> = super::CodedCounter {
    part: |k| (k.netns, k.state),
    label: |state| Some(tcp_state_name(state as u8)),
};
