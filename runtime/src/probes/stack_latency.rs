//! `stack_latency` collector: time received IPv4 packets spend in each stage of the kernel's
//! IP layer (receive to local delivery, receive to forwarding, forwarding to output) as a
//! histogram per stage, bucketed in the kernel, and events for packets slower than
//! `slowThreshold` in one stage, with their 5-tuple and the pod whose namespace received
//! them. The stages belong to the node's stack: the series are labelled by node and stage
//! only. Its function hooks attach as fentry/fexit where the kernel has BPF trampolines and
//! as kprobes elsewhere (`attach`).

use std::sync::Arc;
use std::time::Duration;

use ebpf_core::record::{log2_slot_bound_seconds, read_record};
use ebpf_core::stack_latency::{
    key_of, stage_name, Key, Record, KIND_BUCKET, KIND_SUM, PARAM_SLOW_NS, SPEC,
};
use ebpf_core::{FnAttach, LoadedProbe, ProbeError, ProbeSettings};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::{Context, Decoder, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{Derived, Event, Flow, Kind, Severity};
use crate::topology::Netns;

/// `probes.stack_latency` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub enabled: bool,
    /// Packets at least this long in one stage become events (`0ms`: every packet).
    #[serde(deserialize_with = "slow_threshold")]
    pub slow_threshold: Duration,
    /// How the function hooks attach: `auto` (fentry where the kernel attaches BPF
    /// trampolines, kprobes otherwise), `fentry` or `kprobe`. A change reloads the probe.
    #[serde(deserialize_with = "attach")]
    pub attach: FnAttach,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            slow_threshold: Duration::from_millis(10),
            attach: FnAttach::Auto,
            events: EventsConfig::with_ring(super::RING_EXCEPTIONS),
        }
    }
}

fn slow_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "slowThreshold")
}

/// `attach`: `auto`, `fentry` or `kprobe`.
fn attach<'de, D: Deserializer<'de>>(d: D) -> Result<FnAttach, D::Error> {
    let s = String::deserialize(d)?;
    FnAttach::parse(&s).ok_or_else(|| {
        serde::de::Error::custom(format!("attach: {s:?} is not {}", FnAttach::NAMES))
    })
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| c.stack_latency.events.validate("stack_latency"),
    decoder,
    sync,
    snapshot,
    table: None,
    events: true,
    tc: None,
    series: Some(series),
    fn_attach: Some(|c| c.stack_latency.attach),
};

/// The probe's series.
pub struct Series {
    /// `sonde_stack_latency_seconds`
    pub latency: crate::metrics::KernelHistogram,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        latency: families.node_histogram(
            "sonde_stack_latency_seconds",
            "Time received IPv4 packets spend in one stage of the kernel's IP layer, by stage (receive_local: ip_rcv to ip_local_deliver; receive_forward: ip_rcv to ip_forward; forward: ip_forward to ip_output).",
            &["node", "stage"],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.stack_latency;
    c.enabled.then(|| {
        let mut s = c.events.settings(false, super::RING_EXCEPTIONS);
        s.params[PARAM_SLOW_NS] = c.slow_threshold.as_nanos() as u64;
        s.fn_attach = c.attach;
        s
    })
}

/// The event of a packet slow in one stage: its stage, time in it, 5-tuple and the index of
/// the interface it was received on.
fn event(r: &Record, time: std::time::SystemTime) -> Event {
    let flow = Flow::from(&r.tuple);
    let fields = vec![
        ("stage".to_string(), json!(stage_name(r.stage))),
        (
            "duration_seconds".to_string(),
            json!(Duration::from_nanos(r.duration_ns).as_secs_f64()),
        ),
        ("protocol".to_string(), json!(flow.protocol)),
        ("saddr".to_string(), json!(flow.saddr)),
        ("sport".to_string(), json!(flow.sport)),
        ("daddr".to_string(), json!(flow.daddr)),
        ("dport".to_string(), json!(flow.dport)),
        ("ifindex".to_string(), json!(r.ifindex)),
    ];
    Event::kernel(
        time,
        r.netns,
        Severity::Warning,
        Kind::Derived(Derived {
            type_name: SPEC.name.to_string(),
            fields,
        }),
    )
}

fn decoder(_probe: &mut LoadedProbe, ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    let ctx = Arc::clone(ctx);
    Ok(Box::new(move |bytes| {
        let r: Record = read_record(bytes)?;
        Some(event(&r, ctx.clock.wall(r.timestamp_ns)))
    }))
}

fn key_id(k: &Key) -> u64 {
    (k.stage as u64) << 16 | (k.kind as u64) << 8 | k.slot as u64
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let current = probe.array_counters_by(key_of)?;
    for (key, gained) in deltas.update(current, key_id) {
        let labels = vec![ctx.node.to_string(), stage_name(key.stage).to_string()];
        let m = &ctx.metrics.of::<Series>().latency;
        match key.kind {
            KIND_BUCKET => m.add_slot(labels, key.slot as usize, gained),
            KIND_SUM => m.add_sum_ns(labels, gained),
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
            let stage = stage_name(k.stage);
            let key = match k.kind {
                KIND_BUCKET => format!("{stage}:le={}", log2_slot_bound_seconds(k.slot as usize)),
                KIND_SUM => format!("{stage}:sum_ns"),
                _ => return None,
            };
            Some((Netns::default(), key, v))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebpf_core::record::Tuple;

    #[test]
    fn a_slow_forwarded_packet_is_an_event_with_its_flow() {
        let mut tuple = Tuple {
            family: 2,
            protocol: 17,
            sport: 40000,
            dport: 53,
            ..Tuple::default()
        };
        tuple.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        tuple.daddr[..4].copy_from_slice(&[10, 0, 1, 2]);
        let r = Record {
            duration_ns: 1_500_000,
            tuple,
            netns: 4026532000.into(),
            ifindex: 7,
            stage: ebpf_core::stack_latency::STAGE_FORWARD,
            ..Record::default()
        };
        let e = event(&r, std::time::UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(e.netns, 4026532000);
        let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(json["type"], "stack_latency");
        assert_eq!(json["stage"], "forward");
        assert_eq!(json["duration_seconds"], 0.0015);
        assert_eq!(json["protocol"], "udp");
        assert_eq!(json["saddr"], "10.0.0.1");
        assert_eq!(json["dport"], 53);
        assert_eq!(json["ifindex"], 7);
        assert_eq!(json["source"], "kernel");
    }

    #[test]
    fn attach_is_auto_fentry_or_kprobe() {
        let c: Config = serde_yaml_ng::from_str("attach: kprobe").unwrap();
        assert_eq!(c.attach, FnAttach::Kprobe);
        let e = serde_yaml_ng::from_str::<Config>("attach: trampoline").unwrap_err();
        assert!(
            e.to_string()
                .contains("attach: \"trampoline\" is not auto, fentry or kprobe"),
            "{e}"
        );
    }
}
