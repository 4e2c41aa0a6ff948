//! `packet_drop` collector: drops counted per pod and reason (named from the running
//! kernel's BTF), and drop events with the dropping function and, on request, the stack.

use std::collections::HashMap;
use std::sync::Arc;

use aya::maps::{MapData, StackTraceMap};
use ebpf_core::packet_drop::{Key, Record, SPEC, STACK_MAP};
use ebpf_core::record::read_record;
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::Deserialize;

use super::{Context, Decoder, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{Event, Flow, Kind, Severity};

/// `probes.packet_drop` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub enabled: bool,
    /// Collect the kernel stack of each drop event (costs more per drop; off by default).
    pub stack: bool,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            stack: false,
            events: EventsConfig::with_ring(super::RING_TRAFFIC),
        }
    }
}

crate::probe_event! {
    /// `packet_drop`: a packet the kernel dropped.
    pub struct PacketDrop: "packet_drop", wit PacketDrop, record 96, flow {
        /// The kernel's drop reason without its prefix: `NETFILTER_DROP`, `NO_SOCKET`, ...
        pub reason: Arc<str> => "reason", reason @ 80,
        /// The kernel function that dropped the packet.
        pub location: Arc<str> => "location", location @ 84,
        /// Kernel stack, innermost frame first, when stacks are enabled.
        pub stack: Option<crate::schema::Stack> => "stack", stack @ 88,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| c.packet_drop.events.validate("packet_drop"),
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
    /// `sonde_packet_drops_total`
    pub drops: prometheus::IntCounterVec,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        drops: families.pod_counter(
            "sonde_packet_drops_total",
            "Packets dropped by the kernel, by drop reason.",
            &["reason"],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.packet_drop;
    c.enabled.then(|| c.events.settings(c.stack, super::RING_TRAFFIC))
}

/// Drop reason names of the running kernel, read once.
fn reasons() -> &'static HashMap<u32, Arc<str>> {
    static REASONS: std::sync::OnceLock<HashMap<u32, Arc<str>>> = std::sync::OnceLock::new();
    REASONS.get_or_init(|| match ebpf_core::btf::drop_reasons() {
        Ok(names) => names.into_iter().map(|(v, n)| (v, Arc::from(n))).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "drop reasons will be shown as numbers");
            HashMap::new()
        }
    })
}

fn reason_name(reason: u32) -> Arc<str> {
    if reason == ebpf_core::packet_drop::NO_REASON {
        // A kernel whose kfree_skb passes no reason (before 5.17).
        return Arc::from("NOT_SPECIFIED");
    }
    reasons()
        .get(&reason)
        .cloned()
        .unwrap_or_else(|| Arc::from(reason.to_string()))
}

struct DropDecoder {
    ctx: Arc<Context>,
    stacks: Option<StackTraceMap<MapData>>,
    /// Symbolised stacks by their addresses (at most [`STACK_CACHE`]).
    stack_cache: HashMap<Vec<u64>, Arc<[Arc<str>]>>,
    /// The stacks of ids freed from the kernel's map (at most [`STACK_CACHE`]): events the
    /// kernel recorded before the free, with the same stack, carry the same id.
    freed: HashMap<u32, Arc<[Arc<str>]>>,
    locations: HashMap<u64, Arc<str>>,
    stacks_lost: prometheus::IntCounter,
}

/// Symbolised stacks kept; past it the cache starts over.
const STACK_CACHE: usize = 4096;

impl DropDecoder {
    /// The stack of a record's `id`, freed from the kernel's map once read: the map (4096
    /// stacks) never fills however many paths drop packets. Events of the same stack recorded
    /// before the free carry the freed id: its stack is kept for them. A negative id other
    /// than -1 (no stack asked for) is a stack the kernel could not store, counted.
    fn stack(&mut self, id: i32) -> Option<Arc<[Arc<str>]>> {
        if id < -1 {
            self.stacks_lost.inc();
            return None;
        }
        let id = u32::try_from(id).ok()?;
        let stacks = self.stacks.as_mut()?;
        let Ok(trace) = stacks.get(&id, 0) else {
            return self.freed.get(&id).cloned();
        };
        let _ = stacks.remove(&id);
        let ips: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
        if let Some(s) = self.stack_cache.get(&ips).cloned() {
            self.remember_freed(id, &s);
            return Some(s);
        }
        let frames: Arc<[Arc<str>]> = ips.iter().map(|ip| self.ctx.symbols().frame(*ip)).collect();
        if self.stack_cache.len() >= STACK_CACHE {
            self.stack_cache.clear();
        }
        self.stack_cache.insert(ips, Arc::clone(&frames));
        self.remember_freed(id, &frames);
        Some(frames)
    }

    fn remember_freed(&mut self, id: u32, frames: &Arc<[Arc<str>]>) {
        if self.freed.len() >= STACK_CACHE {
            self.freed.clear();
        }
        self.freed.insert(id, Arc::clone(frames));
    }

    fn decode(&mut self, bytes: &[u8]) -> Option<Event> {
        let r: Record = read_record(bytes)?;
        let symbols = self.ctx.symbols();
        let location = Arc::clone(
            self.locations
                .entry(r.location)
                .or_insert_with(|| symbols.name(r.location)),
        );
        let stack = self.stack(r.stack_id);
        Some(Event::kernel(
            self.ctx.clock.wall(r.timestamp_ns),
            r.netns,
            Severity::Warning,
            Kind::PacketDrop(PacketDrop {
                flow: Flow::from(&r.tuple),
                reason: reason_name(r.reason),
                location,
                stack,
            }),
        ))
    }
}

fn decoder(probe: &mut LoadedProbe, ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    let stacks = probe.take_stack_map(STACK_MAP)?;
    let mut d = DropDecoder {
        ctx: Arc::clone(ctx),
        stacks: Some(stacks),
        stack_cache: HashMap::new(),
        freed: HashMap::new(),
        locations: HashMap::new(),
        stacks_lost: ctx.metrics.stacks_lost.with_label_values(&[SPEC.name]),
    };
    Ok(Box::new(move |bytes| d.decode(bytes)))
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let current = probe.counters::<Key>()?;
    for (key, gained) in deltas.update(current, |k| super::netns_id(k.netns) | k.reason as u128) {
        ctx.count_for_netns(
            &ctx.metrics.of::<Series>().drops,
            key.netns,
            &[&reason_name(key.reason)],
            gained,
        );
    }
    Ok(())
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    Ok(probe
        .counters::<Key>()?
        .into_iter()
        .map(|(k, v)| (k.netns, reason_name(k.reason).to_string(), v))
        .collect())
}
