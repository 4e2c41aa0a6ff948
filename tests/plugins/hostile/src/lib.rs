//! A plugin for the test suite: with `mode: count` it counts every event it is handed (per
//! probe, pod and reason or direction, into `sonde_test_events_seen_total`), so a test can
//! check it lost none; with `mode: fields` it counts them by every field they carry (into
//! `config.metric`, and the durations of the latency probes' events by probe, netns, key and detail
//! into `config.metric` with `_total` replaced by `_duration_nanoseconds_total`), so a test
//! can compare two deliveries of the same events;
//! with `mode: flows` it reads the flow table through `maps` every tick and sets
//! `sonde_test_flow_bytes{src_pod,dst_pod,protocol}` (bytes summed over the pod pair's rows)
//! and `sonde_test_flow_srtt_seconds{src_pod,dst_pod}` (the largest RTT a row carries);
//! every other mode misbehaves in one way, so a test can check the agent survives it.

use serde::Deserialize;
use sonde_plugin::{
    metrics::{Counter, Gauge},
    Config, Dns, Envelope, Event, Flow, IoLatency, NetdevLatency, PacketDrop, Plugin, Softirq,
    TcpConnect, TcpReset, TcpRetrans, TcpState,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    mode: String,
    /// `fields` mode: the counter's name.
    #[serde(default)]
    metric: Option<String>,
}

struct Hostile {
    mode: String,
    seen: Option<Counter>,
    /// `fields` mode: nanoseconds of the latency probes' events.
    durations: Option<Counter>,
    hoard: Vec<Vec<u8>>,
    /// `families` mode: families registered so far.
    families: u32,
    /// `flows` mode: bytes and RTT per pod pair.
    flows: Option<(Gauge, Gauge)>,
}

impl Hostile {
    /// What happens on every batch.
    fn misbehave<'a>(&mut self, probe: &str, keys: impl Iterator<Item = (&'a str, &'a str)>) {
        match self.mode.as_str() {
            "count" => {
                if let Some(seen) = &self.seen {
                    for (pod, reason) in keys {
                        let _ = seen.series(&[probe, pod, reason]).and_then(|s| s.inc());
                    }
                }
            }
            "loop" => loop {
                std::hint::black_box(&self.hoard);
            },
            "memory" => loop {
                self.hoard.push(vec![1u8; 1 << 20]);
            },
            "trap-handler" => panic!("hostile plugin: trap in a handler"),
            "sleep-handler" => sleep_forever(),
            // Refused host calls: the agent counts them; the plugin carries on.
            "ungranted" => {
                for _ in keys {
                    let _ = Event::new("not_granted").emit();
                }
            }
            // Host objects: 20 metric families per event, and histograms of 100,000 buckets.
            "families" => {
                for _ in keys.flat_map(|k| std::iter::repeat_n(k, 20)) {
                    self.families += 1;
                    let _ = Counter::register(
                        &format!("sonde_test_family_{}_total", self.families),
                        "One of many families.",
                        &["pod"],
                    );
                }
            }
            "buckets" => {
                let bounds: Vec<f64> = (1..=100_000).map(f64::from).collect();
                let _ = sonde_plugin::metrics::Histogram::register(
                    "sonde_test_wide_seconds",
                    "A histogram of 100,000 buckets.",
                    &[],
                    &bounds,
                );
            }
            "invalid" => {
                for _ in keys {
                    let _ = Counter::register("not a metric name", "", &[]);
                }
            }
            "poll-handler" => poll_forever(),
            "series" => {
                let c = self.seen.as_ref().expect("a counter from init");
                for i in 0..1_000_000u32 {
                    let _ = c.series(&[probe, &i.to_string(), ""]).and_then(|s| s.inc());
                }
            }
            "log-flood" => {
                for i in 0..100_000u32 {
                    sonde_plugin::log::info(&format!("hostile plugin log line {i}"));
                }
            }
            // Events of 64 fields of 4,000 bytes each: every field within its limit, the
            // event over the 16 KiB of text one may hold.
            "big-event" => {
                let text = "x".repeat(4000);
                for _ in keys {
                    let mut e = Event::new("hostile_big");
                    for i in 0..64 {
                        e = e.field(format!("f{i}"), text.as_str());
                    }
                    let _ = e.emit();
                }
            }
            "event-flood" => {
                for i in 0..100_000i64 {
                    let _ = Event::new("hostile_flood").field("n", i).emit();
                }
            }
            _ => {}
        }
    }
}

/// Blocks in the host, not in guest code: the standard library's sleep is a WASI call.
fn sleep_forever() {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Blocks in `wasi:io/poll.poll` on a pollable that never becomes ready.
fn poll_forever() {
    let never = wasip2::clocks::monotonic_clock::subscribe_instant(u64::MAX);
    loop {
        wasip2::io::poll::poll(&[&never]);
    }
}

/// What the sandbox lets through, as `sonde_test_sandbox{door}`: the wall clock's seconds,
/// 1 for a door that opened (a file read, a TCP connect, environment variables), and a
/// random number's low bits.
fn probe_sandbox() -> Result<(), String> {
    use sonde_plugin::metrics::Gauge;
    let g = Gauge::register(
        "sonde_test_sandbox",
        "What the sandbox let through.",
        &["door"],
    )
    .map_err(|e| e.to_string())?;
    let set = |door: &str, v: f64| {
        g.series(&[door])
            .and_then(|s| s.set(v))
            .map_err(|e| e.to_string())
    };
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(-1.0);
    set("clock", clock)?;
    set(
        "file",
        if std::fs::read("/etc/hostname").is_ok() || std::fs::read_dir("/").is_ok() {
            1.0
        } else {
            0.0
        },
    )?;
    set(
        "network",
        if std::net::TcpStream::connect("127.0.0.1:22").is_ok() {
            1.0
        } else {
            0.0
        },
    )?;
    set("env", std::env::vars().count() as f64)?;
    // The seed of the standard library's hasher comes from the host's randomness.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    set("random", (h.finish() & 0xffff) as f64)?;
    Ok(())
}

/// The labels of `fields` mode: everything an event carries but its time and source port.
const FIELDS: [&str; 13] = [
    "probe",
    "node",
    "netns",
    "namespace",
    "pod",
    "protocol",
    "saddr",
    "daddr",
    "dport",
    "peer",
    "key",
    "detail",
    "stack",
];

impl Hostile {
    /// `fields` mode: one count per distinct combination of the event's fields, so that two
    /// deliveries of the same events can be compared label for label.
    fn count_fields(
        &self,
        probe: &str,
        env: &Envelope<'_>,
        flow: &Flow<'_>,
        key: &str,
        detail: &str,
        stack: &str,
    ) {
        let Some(c) = &self.seen else { return };
        let addr =
            |a: Option<std::net::IpAddr>| a.map_or_else(|| "none".to_string(), |a| a.to_string());
        let (netns, dport) = (env.netns.to_string(), flow.dport.to_string());
        let (saddr, daddr) = (addr(flow.saddr), addr(flow.daddr));
        let peer = flow
            .peer
            .map_or_else(|| "none".to_string(), |p| p.to_string());
        let namespace = env.workload.map_or("none", |w| w.namespace);
        let values = [
            probe,
            env.node,
            &netns,
            namespace,
            pod(env.workload),
            flow.protocol,
            &saddr,
            &daddr,
            &dport,
            &peer,
            key,
            detail,
            stack,
        ];
        let _ = c.series(&values).and_then(|s| s.inc());
    }
}

impl Hostile {
    /// `fields` mode for events without a flow: their own fields as `key` and `detail`, and
    /// their duration added up by the same.
    fn count_latency(
        &self,
        probe: &str,
        env: &Envelope<'_>,
        key: &str,
        detail: &str,
        duration: std::time::Duration,
    ) {
        if self.mode != "fields" {
            return;
        }
        let none = Flow {
            protocol: "",
            saddr: None,
            sport: 0,
            daddr: None,
            dport: 0,
            peer: None,
        };
        self.count_fields(probe, env, &none, key, detail, "");
        if let Some(d) = &self.durations {
            let _ = d
                .series(&[probe, &env.netns.to_string(), key, detail])
                .and_then(|s| s.add(duration.as_nanos() as f64));
        }
    }
}

fn pod(w: Option<sonde_plugin::WorkloadRef<'_>>) -> &str {
    w.map_or("", |w| w.pod)
}

impl Plugin for Hostile {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.mode == "trap-init" {
            panic!("hostile plugin: trap in init");
        }
        if settings.mode == "sleep-init" {
            sleep_forever();
        }
        if settings.mode == "poll-init" {
            poll_forever();
        }
        if settings.mode == "fail-init" {
            return Err("config.mode: fail-init refuses to start".into());
        }
        if settings.mode == "sandbox" {
            probe_sandbox()?;
        }
        let name = match settings.mode.as_str() {
            "count" => Some("sonde_test_events_seen_total"),
            "series" => Some("sonde_test_series_bomb_total"),
            _ => None,
        };
        if settings.mode == "flows" {
            let gauge = |name, help, labels: &[&str]| {
                Gauge::register(name, help, labels).map_err(|e| e.to_string())
            };
            let bytes = gauge(
                "sonde_test_flow_bytes",
                "Bytes of the flow table's rows, by pod pair and protocol.",
                &["src_pod", "dst_pod", "protocol"],
            )?;
            let rtt = gauge(
                "sonde_test_flow_srtt_seconds",
                "The largest RTT of the flow table's rows, by pod pair.",
                &["src_pod", "dst_pod"],
            )?;
            return Ok(Hostile {
                mode: settings.mode,
                seen: None,
                hoard: Vec::new(),
                families: 0,
                durations: None,
                flows: Some((bytes, rtt)),
            });
        }
        if settings.mode == "fields" {
            let name = settings
                .metric
                .as_deref()
                .unwrap_or("sonde_test_fields_total");
            let fields = Counter::register(
                name,
                "Events the test plugin was handed, by every field.",
                &FIELDS,
            )
            .map_err(|e| e.to_string())?;
            let durations = Counter::register(
                &name.replace("_total", "_duration_nanoseconds_total"),
                "Durations of the latency probes' events the test plugin was handed.",
                &["probe", "netns", "key", "detail"],
            )
            .map_err(|e| e.to_string())?;
            return Ok(Hostile {
                mode: settings.mode,
                seen: Some(fields),
                durations: Some(durations),
                hoard: Vec::new(),
                families: 0,
                flows: None,
            });
        }
        let seen = match name {
            Some(name) => Some(
                Counter::register(
                    name,
                    "Events the test plugin was handed.",
                    &["probe", "pod", "reason"],
                )
                .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        Ok(Hostile {
            mode: settings.mode,
            seen,
            durations: None,
            hoard: Vec::new(),
            families: 0,
            flows: None,
        })
    }

    fn tick(&mut self, _now_ns: u64) {
        let Some((bytes, rtt)) = &self.flows else {
            return;
        };
        let Ok(rows) = sonde_plugin::maps::flows() else {
            return;
        };
        let pod = |w: &Option<sonde_plugin::Workload>| {
            w.as_ref().map_or(String::new(), |w| w.pod.clone())
        };
        let mut sums = std::collections::BTreeMap::new();
        let mut rtts = std::collections::BTreeMap::new();
        for r in &rows {
            let (src, dst) = (pod(&r.src), pod(&r.dst));
            *sums
                .entry((src.clone(), dst.clone(), r.protocol.clone()))
                .or_insert(0u64) += r.bytes;
            if let Some(ns) = r.srtt_ns {
                let v = rtts.entry((src, dst)).or_insert(0u64);
                *v = (*v).max(ns);
            }
        }
        for ((src, dst, protocol), b) in sums {
            let _ = bytes
                .series(&[&src, &dst, &protocol])
                .and_then(|s| s.set(b as f64));
        }
        for ((src, dst), ns) in rtts {
            let _ = rtt
                .series(&[&src, &dst])
                .and_then(|s| s.set(ns as f64 / 1e9));
        }
    }

    fn on_packet_drop(&mut self, batch: &[PacketDrop<'_>]) {
        if self.mode == "fields" {
            for e in batch {
                let stack: Vec<&str> = e.stack.iter().collect();
                self.count_fields(
                    "packet_drop",
                    &e.envelope,
                    &e.flow,
                    e.reason,
                    e.location,
                    &stack.join(";"),
                );
            }
            return;
        }
        self.misbehave(
            "packet_drop",
            batch.iter().map(|e| (pod(e.envelope.workload), e.reason)),
        );
    }

    fn on_tcp_retrans(&mut self, batch: &[TcpRetrans<'_>]) {
        self.misbehave(
            "tcp_retrans",
            batch.iter().map(|e| (pod(e.envelope.workload), "")),
        );
    }

    fn on_tcp_connect(&mut self, batch: &[TcpConnect<'_>]) {
        if self.mode == "fields" {
            for e in batch {
                let detail = format!(
                    "{}:{}:{}:{}",
                    e.cause.unwrap_or("none"),
                    e.error.unwrap_or("none"),
                    e.retransmits,
                    e.duration.is_some()
                );
                self.count_fields("tcp_connect", &e.envelope, &e.flow, e.side, &detail, "");
            }
        }
    }

    fn on_softirq(&mut self, batch: &[Softirq<'_>]) {
        for e in batch {
            let detail = format!("{}:{}", e.stage, e.cpu);
            self.count_latency("softirq", &e.envelope, e.vec, &detail, e.duration);
        }
    }

    fn on_netdev_latency(&mut self, batch: &[NetdevLatency<'_>]) {
        for e in batch {
            let detail = format!("{}:{}:{}", e.stage, e.ifindex, e.bytes);
            self.count_latency(
                "netdev_latency",
                &e.envelope,
                e.interface,
                &detail,
                e.duration,
            );
        }
    }

    fn on_io_latency(&mut self, batch: &[IoLatency<'_>]) {
        for e in batch {
            let error = e
                .error
                .map_or_else(|| "none".to_string(), |s| s.to_string());
            let detail = format!("{}:{}:{}:{}", e.op, e.dev, e.bytes, error);
            self.count_latency("io_latency", &e.envelope, e.device, &detail, e.duration);
        }
    }

    fn on_dns(&mut self, batch: &[Dns<'_>]) {
        if self.mode == "fields" {
            for e in batch {
                let detail = format!(
                    "{}:{}:{}:{}",
                    e.id.map_or("none".into(), |i| i.to_string()),
                    e.duration.is_some(),
                    e.count.map_or("none".into(), |c| c.to_string()),
                    e.rate.is_some()
                );
                self.count_fields("dns", &e.envelope, &e.flow, e.outcome, &detail, "");
            }
            return;
        }
        self.misbehave(
            "dns",
            batch.iter().map(|e| (pod(e.envelope.workload), e.outcome)),
        );
    }

    fn on_tcp_state(&mut self, batch: &[TcpState<'_>]) {
        for e in batch {
            let detail = format!(
                "{}:{}:{}",
                e.duration.is_some(),
                e.bytes_sent,
                e.bytes_received
            );
            self.count_fields("tcp_state", &e.envelope, &e.flow, e.state, &detail, "");
        }
    }

    fn on_tcp_reset(&mut self, batch: &[TcpReset<'_>]) {
        if self.mode == "fields" {
            for e in batch {
                self.count_fields(
                    "tcp_reset",
                    &e.envelope,
                    &e.flow,
                    e.direction,
                    e.state.unwrap_or("none"),
                    "",
                );
            }
            return;
        }
        self.misbehave(
            "tcp_reset",
            batch
                .iter()
                .map(|e| (pod(e.envelope.workload), e.direction)),
        );
    }
}

sonde_plugin::export!(Hostile);
