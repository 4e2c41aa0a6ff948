//! `dns` collector: query latency per client pod (a histogram bucketed in the kernel),
//! responses by rcode, and events for queries that got no response within `timeout` and for
//! a pod's SERVFAIL or NXDOMAIN responses above `errorRate` per second. The kernel counts by
//! client address; the pod is the one that owns the address.

use crate::config::Invalid;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ebpf_core::dns::{
    rcode_name, CountKey, Query, QueryKey, KIND_BUCKET, KIND_RCODE, KIND_SUM, PENDING_MAP, SPEC,
};
use ebpf_core::record::{AF_INET, AF_INET6};
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings, TcAttach};
use serde::{Deserialize, Deserializer};

use super::{Context, Deltas, Driver, EventsConfig, ProbesConfig};
use crate::event::{Event, Flow, Kind, Severity};
use crate::topology::Netns;

/// `probes.dns` in the agent config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Off by default: the programs run on every packet through the watched interfaces.
    pub enabled: bool,
    /// Interfaces to attach to, as `probes.flow.interfaces`.
    pub interfaces: Vec<String>,
    /// How the programs are attached, as `probes.flow.attach`.
    #[serde(deserialize_with = "super::interfaces::attach")]
    pub attach: TcAttach,
    /// A query with no response after this long is a timeout (an event).
    #[serde(deserialize_with = "timeout")]
    pub timeout: Duration,
    /// SERVFAIL or NXDOMAIN responses per second to one pod above which an event says so;
    /// 0 = never.
    pub error_rate: f64,
    /// The events (timeouts and error rates) come from the agent, not the kernel: only
    /// `enabled` applies.
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            interfaces: super::flow::Config::default().interfaces,
            attach: TcAttach::Auto,
            timeout: Duration::from_secs(5),
            error_rate: 10.0,
            events: EventsConfig::default(),
        }
    }
}

impl Eq for Config {}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::units::named_duration(d, "timeout")
}

fn validate(c: &ProbesConfig) -> Result<(), Invalid> {
    let c = &c.dns;
    if c.timeout < Duration::from_millis(100) {
        return Err(Invalid::new("probes.dns.timeout", "must be at least 100ms"));
    }
    if !(c.error_rate >= 0.0 && c.error_rate.is_finite()) {
        return Err(Invalid::new(
            "probes.dns.errorRate",
            format!(
                "{} must be a number of responses per second, 0 or more",
                c.error_rate
            ),
        ));
    }
    super::interfaces::validate("dns", &c.interfaces)
}

crate::probe_event! {
    /// `dns`: a query that got no response within the probe's timeout, or a pod's SERVFAIL
    /// or NXDOMAIN responses above the probe's rate. The flow's source is the client, its
    /// destination the server.
    pub struct Dns: "dns", wit Dns, record 112, flow {
        /// `timeout`, `servfail` or `nxdomain`.
        pub outcome: &'static str => "outcome", outcome @ 80,
        /// The DNS id of the query that timed out.
        pub id: Option<u16> => "id", id @ 84,
        /// How long the query waited (timeouts).
        pub duration: Option<Duration> => "duration_seconds", duration_ns @ 88,
        /// Responses of that rcode since the last report, and their rate per second (rates).
        pub count: Option<u64> => "count", count @ 96,
        pub rate: Option<f64> => "rate_per_second", rate @ 104,
    }
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate,
    decoder: super::no_events,
    sync,
    snapshot,
    table: None,
    events: true,
    tc: Some(super::TcConfig {
        interfaces: |c| &c.dns.interfaces,
        attach: |c| c.dns.attach,
    }),
    series: Some(series),
    fn_attach: None,
};

/// The probe's series.
pub struct Series {
    /// `sonde_dns_query_duration_seconds`
    pub duration: crate::metrics::KernelHistogram,
    /// `sonde_dns_responses_total`
    pub responses: prometheus::IntCounterVec,
    /// `sonde_dns_timeouts_total`
    pub timeouts: prometheus::IntCounterVec,
}

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    Box::new(Series {
        duration: families.pod_histogram(
            "sonde_dns_query_duration_seconds",
            "DNS query latency (query to response, seen on the node's host-side interfaces), by client pod.",
            &[],
        ),
        responses: families.pod_counter(
            "sonde_dns_responses_total",
            "DNS responses to a pod, by rcode (NOERROR, NXDOMAIN, SERVFAIL, ...).",
            &["rcode"],
        ),
        timeouts: families.pod_counter(
            "sonde_dns_timeouts_total",
            "DNS queries of a pod that got no response within the probe's timeout.",
            &[],
        ),
    })
}

/// `probe_params` slots, read by the collector ([`LoadedProbe::params`]).
const PARAM_TIMEOUT_NS: usize = 0;
const PARAM_ERROR_RATE_MILLI: usize = 1;
const PARAM_EVENTS: usize = 2;

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.dns;
    c.enabled.then(|| {
        let mut s = super::table_settings(0);
        s.tc_attach = c.attach;
        s.params[PARAM_TIMEOUT_NS] = c.timeout.as_nanos() as u64;
        s.params[PARAM_ERROR_RATE_MILLI] = (c.error_rate * 1000.0) as u64;
        s.params[PARAM_EVENTS] = c.events.enabled as u64;
        s
    })
}

fn addr(family: u8, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::from([raw[0], raw[1], raw[2], raw[3]])),
        AF_INET6 => Some(IpAddr::from(*raw)),
        _ => None,
    }
}

fn key_id(k: &CountKey) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    h.finish() & !(1 << 63)
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    let params = probe.params();
    let events = params[PARAM_EVENTS] != 0;
    let now = ctx.clock.monotonic_ns();
    // Seconds since the last sync, for rates (none at the first).
    let elapsed = deltas.since_last_sync();
    let current = probe.counters::<CountKey>()?;
    let mut errors: HashMap<(IpAddr, u8), u64> = HashMap::new();
    for (key, gained) in deltas.update(current, key_id) {
        let Some(client) = addr(key.family, &key.client) else {
            continue;
        };
        let labels = labels_for_ip(ctx, client);
        match key.kind {
            KIND_BUCKET => {
                ctx.metrics
                    .of::<Series>()
                    .duration
                    .add_slot(labels, key.slot as usize, gained)
            }
            KIND_SUM => ctx
                .metrics
                .of::<Series>()
                .duration
                .add_sum_ns(labels, gained),
            KIND_RCODE => {
                let mut l: Vec<&str> = labels.iter().map(String::as_str).collect();
                l.push(rcode_name(key.slot));
                let m = &ctx.metrics;
                m.budget
                    .inc_counter(&m.of::<Series>().responses, &l, gained);
                if key.slot == 2 || key.slot == 3 {
                    *errors.entry((client, key.slot)).or_default() += gained;
                }
            }
            _ => {}
        }
    }
    let mut batch = Vec::new();
    let threshold = params[PARAM_ERROR_RATE_MILLI] as f64 / 1000.0;
    if let Some(secs) = elapsed.filter(|s| *s > 0.0 && threshold > 0.0) {
        for ((client, rcode), n) in errors {
            let rate = n as f64 / secs;
            if rate >= threshold {
                let outcome = if rcode == 2 { "servfail" } else { "nxdomain" };
                batch.push(event(
                    ctx,
                    client,
                    Dns {
                        flow: Flow {
                            protocol: "udp".into(),
                            saddr: Some(client),
                            sport: 0,
                            daddr: None,
                            dport: 53,
                        },
                        outcome,
                        id: None,
                        duration: None,
                        count: Some(n),
                        rate: Some(rate),
                    },
                    format!("{n} {} responses in {secs:.1}s", rcode_name(rcode)),
                ));
            }
        }
    }
    // Queries still waiting past the timeout: reported once, then forgotten.
    let timeout = params[PARAM_TIMEOUT_NS];
    for (key, q) in probe.hash_entries::<QueryKey, Query>(PENDING_MAP)? {
        let waited = now.saturating_sub(q.start_ns);
        if waited < timeout {
            continue;
        }
        probe.hash_remove(PENDING_MAP, &key)?;
        let Some(client) = addr(key.family, &key.client) else {
            continue;
        };
        let labels = labels_for_ip(ctx, client);
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        ctx.metrics
            .budget
            .inc_counter(&ctx.metrics.of::<Series>().timeouts, &l, 1);
        batch.push(event(
            ctx,
            client,
            Dns {
                flow: Flow {
                    protocol: if key.protocol == 6 { "tcp" } else { "udp" }.into(),
                    saddr: Some(client),
                    sport: key.client_port,
                    daddr: addr(key.family, &q.server),
                    dport: q.server_port,
                },
                outcome: "timeout",
                id: Some(key.id),
                duration: Some(Duration::from_nanos(waited)),
                count: None,
                rate: None,
            },
            format!("no DNS response after {:.1}s", waited as f64 / 1e9),
        ));
    }
    if events && !batch.is_empty() {
        ctx.publish(batch);
    }
    Ok(())
}

/// `node`, `namespace`, `pod` of the workload that owns `ip` (empty when none does).
fn labels_for_ip(ctx: &Context, ip: IpAddr) -> Vec<String> {
    ctx.labels_for_workload(ctx.topology.workload_of_ip(ip), &[])
}

fn event(ctx: &Context, client: IpAddr, dns: Dns, message: String) -> Event {
    let mut e = Event::kernel(
        SystemTime::now(),
        Netns::default(),
        Severity::Warning,
        Kind::Dns(dns),
    );
    // The namespace of the client is not known at TC: its address names the pod (the
    // enrichment stage keeps a workload its maker gives).
    e.workload = ctx.topology.workload_of_ip(client);
    e.message = Some(message);
    e
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    Ok(probe
        .counters::<CountKey>()?
        .into_iter()
        .filter_map(|(k, v)| {
            let client = addr(k.family, &k.client)?;
            let key = match k.kind {
                KIND_BUCKET => format!(
                    "{client} le={}",
                    ebpf_core::record::log2_slot_bound_seconds(k.slot as usize)
                ),
                KIND_SUM => format!("{client} sum_ns"),
                KIND_RCODE => format!("{client} {}", rcode_name(k.slot)),
                _ => return None,
            };
            Some((Netns::default(), key, v))
        })
        .collect())
}
