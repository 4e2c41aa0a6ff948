//! `flow` collector: packets and bytes per 5-tuple, counted in the kernel by TC programs on
//! the node's host-side interfaces (see `flow.bpf.c` for which packet is counted where), and
//! exported by pod pair.
//!
//! Every sync reads the kernel's flow table (an LRU hash of `tableSize` rows) and adds what
//! each row gained since the last read to `sonde_flow_bytes_total` and
//! `sonde_flow_packets_total`, labelled with the pods (or `host`, `external`) at both ends, so
//! the counters never go back when a row is evicted. What a row gained between the last sync
//! and its eviction is lost; evictions are counted. The table is also what `/api/v1/flows` and
//! the plugins' `maps.flows` read, with the RTT of TCP flows from `tcp_rtt`'s table.

use crate::config::Invalid;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ebpf_core::flow::{Row, COUNT_INSERTED, SPEC};
use ebpf_core::probe::TABLE_MAP;
use ebpf_core::{LoadedProbe, ProbeError, ProbeSettings, TcAttach, Tuple};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use serde::{Deserialize, Serialize};

use super::{Context, Deltas, Driver, ProbesConfig};
use crate::topology::Netns;

/// `probes.flow` in the agent config. The probe emits no events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Off by default: the programs run on every packet through the watched interfaces.
    pub enabled: bool,
    /// Interfaces to attach to, in the agent's network namespace: a name, or a prefix ending
    /// in `*`. Matching interfaces are attached as they appear and detached as they go.
    pub interfaces: Vec<String>,
    /// How the programs are attached: TCX links or a clsact qdisc's filters (`auto` picks
    /// TCX where the kernel has it). A change reloads the probe.
    #[serde(deserialize_with = "super::interfaces::attach")]
    pub attach: TcAttach,
    /// Rows of the kernel's flow table (least recently updated evicted when full).
    pub table_size: u32,
    /// Label series with `src_ip` and `dst_ip` (one series per address pair: cardinality).
    pub address_labels: bool,
    /// Label series with `src_port` and `dst_port` (one series per connection: cardinality).
    pub port_labels: bool,
    /// Series with address or port labels at most; past it, new flows count under their pod
    /// pair's series without addresses and ports.
    pub max_series: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            interfaces: vec!["veth*".into(), "cali*".into(), "lxc*".into()],
            attach: TcAttach::Auto,
            table_size: 65536,
            address_labels: false,
            port_labels: false,
            max_series: 10000,
        }
    }
}

/// `probe_params` slots (the programs do not read them; the collector does, through
/// [`LoadedProbe::params`], so they apply live).
const PARAM_LABELS: usize = 0;
const PARAM_MAX_SERIES: usize = 1;
const LABEL_ADDRESSES: u64 = 1;
const LABEL_PORTS: u64 = 2;

fn validate(c: &ProbesConfig) -> Result<(), Invalid> {
    let c = &c.flow;
    if !(16..=1 << 24).contains(&c.table_size) {
        return Err(Invalid::new(
            "probes.flow.tableSize",
            format!("{} must be between 16 and 16777216", c.table_size),
        ));
    }
    if c.max_series == 0 {
        return Err(Invalid::new("probes.flow.maxSeries", "must be at least 1"));
    }
    super::interfaces::validate("flow", &c.interfaces)
}

pub const DRIVER: Driver = Driver {
    spec: &SPEC,
    settings,
    validate,
    decoder: super::no_events,
    sync,
    snapshot,
    table: None,
    events: false,
    tc: Some(super::TcConfig {
        interfaces: |c| &c.flow.interfaces,
        attach: |c| c.flow.attach,
    }),
    series: Some(series),
    fn_attach: None,
};

fn series(families: &mut crate::metrics::Families) -> super::ProbeSeries {
    let series = FlowSeries::new(families.budget());
    let expire = series.clone();
    Box::new(families.pod_collector(
        series,
        Box::new(move |keep: &dyn Fn(&str, &str) -> bool| expire.expire(keep)),
    ))
}

fn settings(c: &ProbesConfig) -> Option<ProbeSettings> {
    let c = &c.flow;
    c.enabled.then(|| {
        let mut s = super::table_settings(c.table_size);
        s.tc_attach = c.attach;
        s.params[PARAM_LABELS] = if c.address_labels { LABEL_ADDRESSES } else { 0 }
            | if c.port_labels { LABEL_PORTS } else { 0 };
        s.params[PARAM_MAX_SERIES] = c.max_series as u64;
        s
    })
}

/// `Deltas` id of the evictions so far.
const EVICTED_ID: u64 = u64::MAX;

fn tuple_id(t: &Tuple, kind: u64) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    // The low bit says bytes (0) or packets (1); EVICTED_ID is never made.
    (h.finish() << 1 | kind) & !(1 << 63)
}

fn sync(probe: &LoadedProbe, deltas: &mut Deltas, ctx: &Context) -> Result<(), ProbeError> {
    // Insertions first, then the rows: evictions read as (insertions - rows) can only lag.
    let inserted = probe
        .array_counters()?
        .get(COUNT_INSERTED)
        .copied()
        .unwrap_or(0);
    let rows = probe.hash_entries::<Tuple, Row>(TABLE_MAP)?;
    let params = probe.params();
    let mut current = HashMap::with_capacity(rows.len() * 2);
    let mut last = HashMap::with_capacity(rows.len());
    for (t, row) in &rows {
        current.insert((*t, 0u64), row.bytes);
        current.insert((*t, 1u64), row.packets);
        last.insert(*t, row.last_ns);
    }
    let gains = deltas.update(current, |(t, kind)| tuple_id(t, *kind));
    let mut resolve = Resolver::new(ctx);
    let flow = &ctx.metrics.of::<FlowSeries>();
    for ((t, kind), n) in gains {
        // A row's gain is named by who had its addresses at its last packet: a pod gone
        // since, or whose address a newer pod has taken, keeps its counts.
        let at = crate::timefmt::instant_of_ktime(last.get(&t).copied().unwrap_or(0));
        let labels = resolve.labels(&t, params[PARAM_LABELS], at);
        flow.add(labels, kind as usize, n, params[PARAM_MAX_SERIES] as usize);
    }
    let evicted = inserted.saturating_sub(rows.len() as u64);
    flow.table(&ctx.node, deltas.rising(EVICTED_ID, evicted), rows.len());
    Ok(())
}

fn snapshot(probe: &LoadedProbe) -> Result<Vec<super::CounterRow>, ProbeError> {
    let counts = probe.array_counters()?;
    Ok(vec![
        (
            Netns::default(),
            "inserted".into(),
            counts.first().copied().unwrap_or(0),
        ),
        (
            Netns::default(),
            "unparsed".into(),
            counts.get(1).copied().unwrap_or(0),
        ),
    ])
}

/// Who an address is: a pod, the node itself, or something outside.
struct Resolver<'a> {
    ctx: &'a Context,
    host: HashSet<IpAddr>,
    /// Addresses no pod had: asked once per sync.
    unknown: HashSet<IpAddr>,
}

#[derive(Clone)]
struct Endpoint {
    namespace: String,
    pod: String,
    kind: &'static str,
}

impl<'a> Resolver<'a> {
    fn new(ctx: &'a Context) -> Self {
        let host = match crate::netlink::addresses() {
            Ok(a) => a.into_iter().collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the node's addresses");
                HashSet::new()
            }
        };
        Resolver {
            ctx,
            host,
            unknown: HashSet::new(),
        }
    }

    fn endpoint(&mut self, ip: Option<IpAddr>, at: std::time::Instant) -> Endpoint {
        let Some(ip) = ip else {
            return Endpoint {
                namespace: String::new(),
                pod: String::new(),
                kind: "external",
            };
        };
        let owner = match self.unknown.contains(&ip) {
            true => None,
            false => self.ctx.topology.workload_of_ip_at(ip, at),
        };
        match owner {
            Some(w) => Endpoint {
                namespace: w.namespace.to_string(),
                pod: w.pod.to_string(),
                kind: "pod",
            },
            None => {
                self.unknown.insert(ip);
                Endpoint {
                    namespace: String::new(),
                    pod: String::new(),
                    kind: if self.host.contains(&ip) || ip.is_loopback() {
                        "host"
                    } else {
                        "external"
                    },
                }
            }
        }
    }

    /// A flow's series labels; `extra` says which of addresses and ports to add.
    fn labels(
        &mut self,
        t: &Tuple,
        extra: u64,
        at: std::time::Instant,
    ) -> Vec<(&'static str, String)> {
        let (src, dst) = (self.endpoint(t.src(), at), self.endpoint(t.dst(), at));
        let mut labels = vec![
            ("node", self.ctx.node.to_string()),
            ("src_namespace", src.namespace),
            ("src_pod", src.pod),
            ("dst_namespace", dst.namespace),
            ("dst_pod", dst.pod),
            ("protocol", t.protocol_name().into_owned()),
            ("src_type", src.kind.to_string()),
            ("dst_type", dst.kind.to_string()),
        ];
        let ip = |a: Option<IpAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        if extra & LABEL_ADDRESSES != 0 {
            labels.push(("src_ip", ip(t.src())));
            labels.push(("dst_ip", ip(t.dst())));
        }
        if extra & LABEL_PORTS != 0 {
            labels.push(("src_port", t.sport.to_string()));
            labels.push(("dst_port", t.dport.to_string()));
        }
        labels
    }
}

/// The labels every flow series has, in this order; addresses and ports come after them when
/// asked for.
const POD_PAIR_LABELS: [&str; 8] = [
    "node",
    "src_namespace",
    "src_pod",
    "dst_namespace",
    "dst_pod",
    "protocol",
    "src_type",
    "dst_type",
];

/// The flow families in `/metrics`: series made on the fly because their label set depends
/// on the config (addresses and ports are opt-in).
#[derive(Clone)]
pub struct FlowSeries {
    descs: Arc<Vec<Desc>>,
    state: Arc<Mutex<FlowState>>,
    /// The agent's cap on series: a new label set (a bytes and a packets series) asks it.
    budget: Arc<crate::metrics::SeriesBudget>,
}

#[derive(Default)]
struct FlowState {
    /// Labels -> [bytes, packets].
    series: BTreeMap<Vec<(&'static str, String)>, [u64; 2]>,
    /// Series with addresses or ports.
    detailed: usize,
    node: String,
    evictions: u64,
    entries: usize,
}

const BYTES: &str = "sonde_flow_bytes_total";
const PACKETS: &str = "sonde_flow_packets_total";
const EVICTIONS: &str = "sonde_flow_table_evictions_total";
const ENTRIES: &str = "sonde_flow_table_entries";

impl FlowSeries {
    pub fn new(budget: Arc<crate::metrics::SeriesBudget>) -> Self {
        let pair = POD_PAIR_LABELS;
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
            .expect("valid metric definition")
        };
        FlowSeries {
            descs: Arc::new(vec![
                desc(BYTES, "IP bytes of flows through the node's host-side interfaces, each packet counted once, by pod pair.", &pair),
                desc(PACKETS, "Packets (segments) of flows through the node's host-side interfaces, each counted once, by pod pair.", &pair),
                desc(EVICTIONS, "Rows the kernel's flow table evicted to make room (a full table: raise probes.flow.tableSize).", &["node"]),
                desc(ENTRIES, "Rows in the kernel's flow table at the last sync.", &["node"]),
            ]),
            state: Arc::new(Mutex::new(FlowState::default())),
            budget,
        }
    }

    /// Adds `n` to the bytes (`kind` 0) or packets (1) of a series; past `max_series`
    /// detailed series, a new one loses its addresses and ports. A new series is made only
    /// when the agent's budget has room for it (else the update is dropped and counted).
    fn add(&self, mut labels: Vec<(&'static str, String)>, kind: usize, n: u64, max: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let detailed = labels.len() > POD_PAIR_LABELS.len();
        if detailed && !s.series.contains_key(&labels) && s.detailed >= max {
            labels.truncate(POD_PAIR_LABELS.len());
        }
        if let Some(v) = s.series.get_mut(&labels) {
            v[kind] += n;
            return;
        }
        let key = crate::metrics::SeriesBudget::key(
            BYTES,
            labels.iter().flat_map(|(n, v)| [*n, v.as_str()]),
        );
        if !self.budget.admit(key, &[(BYTES, 1), (PACKETS, 1)]) {
            return;
        }
        if labels.len() > POD_PAIR_LABELS.len() {
            s.detailed += 1;
        }
        s.series.entry(labels).or_insert([0, 0])[kind] += n;
    }

    /// Removes the series where either pod (`src_`/`dst_` `namespace` and `pod`) is one
    /// `keep` does not accept; returns how many series went (a bytes and a packets series per
    /// label set).
    pub fn expire(&self, keep: &dyn Fn(&str, &str) -> bool) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = s.series.len();
        let mut detailed_gone = 0;
        s.series.retain(|labels, _| {
            let value = |name: &str| {
                labels
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or("", |(_, v)| v.as_str())
            };
            let kept = |side: &str| {
                let pod = value(&format!("{side}_pod"));
                pod.is_empty() || keep(value(&format!("{side}_namespace")), pod)
            };
            let stays = kept("src") && kept("dst");
            if !stays && labels.len() > POD_PAIR_LABELS.len() {
                detailed_gone += 1;
            }
            stays
        });
        s.detailed -= detailed_gone;
        (before - s.series.len()) * 2
    }

    fn table(&self, node: &str, evicted: u64, entries: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.node = node.to_string();
        s.evictions += evicted;
        s.entries = entries;
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.into());
    pair.set_value(value.into());
    pair
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(desc.fq_name.clone());
    f.set_help(desc.help.clone());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(labels: Vec<proto::LabelPair>, v: u64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels);
    let mut c = proto::Counter::default();
    c.set_value(v as f64);
    m.set_counter(c);
    m
}

impl Collector for FlowSeries {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.node.is_empty() && s.series.is_empty() {
            // Never ran: nothing to say.
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, kind) in [0usize, 1].into_iter().enumerate() {
            let metrics = s
                .series
                .iter()
                .filter(|(_, v)| v[kind] > 0)
                .map(|(labels, v)| {
                    let pairs = labels.iter().map(|(n, v)| label(n, v)).collect();
                    counter(pairs, v[kind])
                })
                .collect();
            out.push(family(&self.descs[i], MetricType::COUNTER, metrics));
        }
        let node = vec![label("node", &s.node)];
        out.push(family(
            &self.descs[2],
            MetricType::COUNTER,
            vec![counter(node.clone(), s.evictions)],
        ));
        let mut gauge = proto::Metric::from_label(node);
        let mut g = proto::Gauge::default();
        g.set_value(s.entries as f64);
        gauge.set_gauge(g);
        out.push(family(&self.descs[3], MetricType::GAUGE, vec![gauge]));
        out
    }
}

/// A row of the flow table as `/api/v1/flows` and the plugins' `maps.flows` show it.
#[derive(Debug, Clone, Serialize)]
pub struct FlowEntry {
    pub node: String,
    pub src_namespace: String,
    pub src_pod: String,
    pub src_type: &'static str,
    pub dst_namespace: String,
    pub dst_pod: String,
    pub dst_type: &'static str,
    pub protocol: String,
    pub saddr: Option<IpAddr>,
    pub sport: u16,
    pub daddr: Option<IpAddr>,
    pub dport: u16,
    pub packets: u64,
    pub bytes: u64,
    /// When the table first and last counted a packet of the flow (RFC 3339).
    pub first: String,
    pub last: String,
    #[serde(skip)]
    pub last_unix_ns: u64,
    /// The interface it was last counted at.
    pub interface: String,
    /// Smoothed RTT of a TCP flow when `tcp_rtt` tracks one of its ends (the source's first).
    pub srtt_seconds: Option<f64>,
    #[serde(skip)]
    pub srtt_ns: Option<u64>,
}

/// Address and ports of one end of a TCP connection, then of the other.
type RttKey = (IpAddr, u16, IpAddr, u16);

/// The flow table, with RTTs from `tcp_rtt`'s table when that probe runs.
/// The flow table with the RTTs `tcp_rtt` knows; empty when `flow` is not running.
pub fn flows(probes: &super::Probes) -> Result<Vec<FlowEntry>, super::ControlError> {
    match probes.loaded(SPEC.name) {
        Some(flow) => Ok(entries(
            flow,
            probes.loaded(ebpf_core::tcp_rtt::SPEC.name),
            probes.context(),
        )?),
        None => Ok(Vec::new()),
    }
}

pub fn entries(
    probe: &LoadedProbe,
    tcp_rtt: Option<&LoadedProbe>,
    ctx: &Context,
) -> Result<Vec<FlowEntry>, ProbeError> {
    let rows = probe.hash_entries::<Tuple, Row>(TABLE_MAP)?;
    let mut rtt: HashMap<RttKey, u32> = HashMap::new();
    if let Some(p) = tcp_rtt {
        for (_, f) in p.hash_entries::<u64, ebpf_core::tcp_rtt::Flow>(TABLE_MAP)? {
            if let (Some(s), Some(d)) = (f.tuple.src(), f.tuple.dst()) {
                if f.srtt_us > 0 {
                    rtt.insert((s, f.tuple.sport, d, f.tuple.dport), f.srtt_us);
                }
            }
        }
    }
    let mut resolve = Resolver::new(ctx);
    let mut names: HashMap<u32, String> = HashMap::new();
    Ok(rows
        .into_iter()
        .map(|(t, row)| {
            let at = crate::timefmt::instant_of_ktime(row.last_ns);
            let (src, dst) = (resolve.endpoint(t.src(), at), resolve.endpoint(t.dst(), at));
            let srtt = match (t.protocol, t.src(), t.dst()) {
                (6, Some(s), Some(d)) => rtt
                    .get(&(s, t.sport, d, t.dport))
                    .or_else(|| rtt.get(&(d, t.dport, s, t.sport)))
                    .map(|us| *us as u64 * 1000),
                _ => None,
            };
            let last = ctx.clock.wall(row.last_ns);
            let interface = names
                .entry(row.ifindex)
                .or_insert_with(|| {
                    super::netstat::qdisc::interface_name(row.ifindex).unwrap_or_default()
                })
                .clone();
            FlowEntry {
                node: ctx.node.to_string(),
                src_namespace: src.namespace,
                src_pod: src.pod,
                src_type: src.kind,
                dst_namespace: dst.namespace,
                dst_pod: dst.pod,
                dst_type: dst.kind,
                protocol: t.protocol_name().into_owned(),
                saddr: t.src(),
                sport: t.sport,
                daddr: t.dst(),
                dport: t.dport,
                packets: row.packets,
                bytes: row.bytes,
                first: crate::timefmt::rfc3339(ctx.clock.wall(row.first_ns)),
                last: crate::timefmt::rfc3339(last),
                last_unix_ns: last
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                interface,
                srtt_seconds: srtt.map(|ns| ns as f64 / 1e9),
                srtt_ns: srtt,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pod: &str, extra: bool) -> Vec<(&'static str, String)> {
        let mut l: Vec<(&'static str, String)> = POD_PAIR_LABELS
            .iter()
            .map(|n| {
                (
                    *n,
                    if *n == "src_pod" {
                        pod.to_string()
                    } else {
                        String::new()
                    },
                )
            })
            .collect();
        if extra {
            l.push(("src_port", "1".into()));
        }
        l
    }

    #[test]
    fn detailed_series_past_the_cap_fold_into_their_pod_pair() {
        let f = FlowSeries::new(crate::metrics::SeriesBudget::unregistered(100));
        f.add(labels("a", true), 0, 10, 1);
        f.add(labels("b", true), 0, 5, 1);
        f.add(labels("a", true), 0, 1, 1);
        let s = f.state.lock().unwrap();
        assert_eq!(s.series.get(&labels("a", true)), Some(&[11, 0]));
        assert_eq!(s.series.get(&labels("b", true)), None);
        assert_eq!(s.series.get(&labels("b", false)), Some(&[5, 0]));
    }

    #[test]
    fn new_pairs_past_the_agents_budget_are_dropped_and_counted() {
        // Room for two pairs (a bytes and a packets series each).
        let budget = crate::metrics::SeriesBudget::unregistered(4);
        let f = FlowSeries::new(Arc::clone(&budget));
        for pod in ["a", "b", "c", "a", "c", "d"] {
            f.add(labels(pod, false), 0, 1, 10);
        }
        let s = f.state.lock().unwrap();
        assert_eq!(s.series.get(&labels("a", false)), Some(&[2, 0]));
        assert_eq!(s.series.get(&labels("b", false)), Some(&[1, 0]));
        assert_eq!(s.series.len(), 2);
        assert_eq!(budget.used(), 4);
        // c (twice) and d refused: each pair counted once, in both families.
        assert_eq!(budget.dropped(BYTES), 2);
        assert_eq!(budget.dropped(PACKETS), 2);
    }

    #[test]
    fn pairs_with_a_gone_pod_on_either_side_expire() {
        let f = FlowSeries::new(crate::metrics::SeriesBudget::unregistered(100));
        let to = |src: &str, dst: &str, extra: bool| {
            let mut l = labels(src, extra);
            l.iter_mut()
                .find(|(n, _)| *n == "dst_pod")
                .expect("dst_pod")
                .1 = dst.into();
            l
        };
        f.add(to("a", "b", true), 0, 1, 10);
        f.add(to("b", "a", false), 0, 1, 10);
        f.add(to("a", "", false), 0, 1, 10);
        f.add(to("", "", false), 0, 1, 10);
        assert_eq!(f.expire(&|_, pod| pod == "a"), 4, "two pairs with b");
        let s = f.state.lock().unwrap();
        let mut left: Vec<_> = s.series.keys().cloned().collect();
        left.sort();
        assert_eq!(left, vec![to("", "", false), to("a", "", false)]);
        assert_eq!(s.detailed, 0);
    }
}
