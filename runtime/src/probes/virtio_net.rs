//! `virtio_net` collector: latency of virtio-net control-virtqueue commands per interface,
//! class and command as a histogram bucketed in the kernel, a counter of the commands the
//! device did not acknowledge, and events for commands slower than `slowThreshold` or failed.
//! Events are of a type without a variant of their own in [`Kind`]: `Kind::Derived` with type
//! `virtio_net` and source `kernel`. Interfaces are named from the kernel's `ifnames` table,
//! written at each command.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebpf_core::netdev_latency::ifname;
use ebpf_core::record::{log2_slot_bound_seconds, read_record};
use ebpf_core::virtio_net::{
    class_name, command_name, Key, Name, Record, KIND_BUCKET, KIND_ERROR, KIND_SUM, NAMES_MAP,
    PARAM_SLOW_NS, SPEC,
};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings};
use serde::{Deserialize, Deserializer};

use super::{Context, Decoder, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{Derived, Event, Kind, Severity};
use crate::topology::Netns;

/// The events' `type`.
pub const TYPE: &str = "virtio_net";

/// `probes.virtio_net` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Off by default: it needs kprobes and the virtio_net module (VM nodes), and cannot load
    /// elsewhere.
    pub enabled: bool,
    /// Commands at least this slow become events (`0ms`: every command); failed ones always do.
    #[serde(deserialize_with = "slow_threshold")]
    pub slow_threshold: Duration,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            slow_threshold: Duration::from_millis(100),
            events: EventsConfig::with_ring(super::RING_EXCEPTIONS),
        }
    }
}

fn slow_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "slowThreshold")
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate: |c| c.virtio_net.events.validate("virtio_net"),
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
    /// `sonde_virtio_net_command_seconds`
    pub commands: crate::metrics::KernelHistogram,
    /// `sonde_virtio_net_command_errors_total`
    pub errors: prometheus::IntCounterVec,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        commands: families.node_histogram(
            "sonde_virtio_net_command_seconds",
            "Latency of virtio-net control commands (sent to the device until it answered; RTNL is held meanwhile), by interface, class and command.",
            &["node", "interface", "class", "command"],
        ),
        errors: families.counter(
            "sonde_virtio_net_command_errors_total",
            "virtio-net control commands the device did not acknowledge, by interface, class and command.",
            &["node", "interface", "class", "command"],
        ),
    })
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.virtio_net;
    c.enabled.then(|| {
        let mut s = c.events.settings(false, super::RING_EXCEPTIONS);
        s.params[PARAM_SLOW_NS] = c.slow_threshold.as_nanos() as u64;
        s
    })
}

/// The event of one command: its fields, in the order the JSON event has them.
fn event_kind(r: &Record) -> Kind {
    let fields = vec![
        ("interface", ifname(&r.name).into()),
        ("ifindex", r.ifindex.into()),
        ("class", class_name(r.class).into_owned().into()),
        ("command", command_name(r.class, r.cmd).into_owned().into()),
        (
            "duration_seconds",
            Duration::from_nanos(r.duration_ns).as_secs_f64().into(),
        ),
        ("ok", (r.ok != 0).into()),
    ];
    Kind::Derived(Derived {
        type_name: TYPE.to_string(),
        fields: fields
            .into_iter()
            .map(|(k, v): (&str, serde_json::Value)| (k.to_string(), v))
            .collect(),
    })
}

fn decoder(_probe: &mut LoadedProbe, ctx: &Arc<Context>) -> Result<Decoder, ProbeError> {
    let ctx = Arc::clone(ctx);
    Ok(Box::new(move |bytes| {
        let r: Record = read_record(bytes)?;
        // Slow but acknowledged: a warning; the device refused or failed it: critical.
        let severity = if r.ok != 0 {
            Severity::Warning
        } else {
            Severity::Critical
        };
        Some(Event::kernel(
            ctx.clock.wall(r.timestamp_ns),
            Netns::default(),
            severity,
            event_kind(&r),
        ))
    }))
}

/// Interface names by ifindex.
type Names = HashMap<u32, Arc<str>>;

/// Interface names the agent has read from the kernel's table, and when.
static NAMES: Mutex<Option<(Names, Instant)>> = Mutex::new(None);

/// How long names read from the kernel are used before they are read again, so that a
/// renamed interface's new counts carry its new name.
const NAMES_MAX_AGE: Duration = Duration::from_secs(60);

/// The name of each interface, reading the kernel's table again when one is not known yet
/// or the copy is older than [`NAMES_MAX_AGE`].
fn names_of(
    probe: &LoadedProbe,
    ifindexes: impl Iterator<Item = u32>,
) -> Result<Names, ProbeError> {
    let mut cache = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let (cache, read_at) = cache.get_or_insert_with(|| (HashMap::new(), Instant::now()));
    let ifindexes: Vec<u32> = ifindexes.collect();
    if read_at.elapsed() > NAMES_MAX_AGE || ifindexes.iter().any(|i| !cache.contains_key(i)) {
        *cache = probe
            .hash_entries::<u32, Name>(NAMES_MAP)?
            .into_iter()
            .map(|(i, n)| (i, Arc::from(ifname(&n.0))))
            .collect();
        *read_at = Instant::now();
    }
    Ok(ifindexes
        .into_iter()
        .map(|i| {
            let name = cache
                .get(&i)
                .cloned()
                .unwrap_or_else(|| Arc::from(format!("if{i}")));
            (i, name)
        })
        .collect())
}

fn key_id(k: &Key) -> u64 {
    (k.ifindex as u64) << 32
        | (k.class as u64) << 24
        | (k.cmd as u64) << 16
        | (k.kind as u64) << 8
        | k.slot as u64
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let current = probe.counters::<Key>()?;
    let gained = deltas.update(current, key_id);
    if gained.is_empty() {
        return Ok(());
    }
    let names = names_of(probe, gained.iter().map(|(k, _)| k.ifindex))?;
    let m = &ctx.metrics;
    for (key, n) in gained {
        let labels = vec![
            ctx.node.to_string(),
            names
                .get(&key.ifindex)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            class_name(key.class).into_owned(),
            command_name(key.class, key.cmd).into_owned(),
        ];
        match key.kind {
            KIND_BUCKET => m
                .of::<Series>()
                .commands
                .add_slot(labels, key.slot as usize, n),
            KIND_SUM => m.of::<Series>().commands.add_sum_ns(labels, n),
            KIND_ERROR => {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                m.budget.inc_counter(&m.of::<Series>().errors, &labels, n)
            }
            _ => {}
        }
    }
    Ok(())
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    let counters = probe.counters::<Key>()?;
    let names = names_of(probe, counters.keys().map(|k| k.ifindex))?;
    Ok(counters
        .into_iter()
        .filter_map(|(k, v)| {
            let name = names.get(&k.ifindex).map(|s| &**s).unwrap_or("");
            let what = format!(
                "{name}:{}:{}",
                class_name(k.class),
                command_name(k.class, k.cmd)
            );
            let key = match k.kind {
                KIND_BUCKET => {
                    format!("{what}:le={}", log2_slot_bound_seconds(k.slot as usize))
                }
                KIND_SUM => format!("{what}:sum_ns"),
                KIND_ERROR => format!("{what}:errors"),
                _ => return None,
            };
            Some((Netns::default(), key, v))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_their_fields_after_the_envelope() {
        let r = Record {
            timestamp_ns: 0,
            duration_ns: 1_500_000_000,
            ifindex: 2,
            class: 1,
            cmd: 1,
            ok: 1,
            pad: 0,
            name: *b"ens3\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let mut e = Event::kernel(
            std::time::UNIX_EPOCH + Duration::from_secs(1),
            0,
            Severity::Warning,
            event_kind(&r),
        );
        e.node = Arc::from("node-1");
        assert_eq!(
            e.to_json(),
            r#"{"time":"1970-01-01T00:00:01.000000Z","node":"node-1","type":"virtio_net","severity":"warning","namespace":"","pod":"","netns":0,"netns_cookie":0,"source":"kernel","interface":"ens3","ifindex":2,"class":"mac","command":"addr_set","duration_seconds":1.5,"ok":true}"#
        );
        let failed = event_kind(&Record {
            class: 9,
            cmd: 4,
            ok: 0,
            ..r
        });
        let Kind::Derived(d) = failed else {
            panic!("a derived event")
        };
        assert_eq!(d.fields[2], ("class".to_string(), "9".into()));
        assert_eq!(d.fields[3], ("command".to_string(), "4".into()));
        assert_eq!(d.fields[5], ("ok".to_string(), false.into()));
    }
}
