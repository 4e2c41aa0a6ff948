//! The Prometheus registry and every series the agent itself exports (names and labels
//! are a contract: README.md, the Probes table and "CLI and endpoints").

use crate::config::Invalid;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Deserialize;

/// `metrics:` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MetricsConfig {
    /// Series the probes may make at most, all together; a new one past it is not made and
    /// is counted in `sonde_series_dropped_total{metric}`. Applied live.
    pub max_series: usize,
    /// The buckets of latency histograms labelled with a pod. Read at start.
    pub pod_histogram_buckets: HistogramBuckets,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_series: 100_000,
            pod_histogram_buckets: HistogramBuckets::Coarse,
        }
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_series == 0 {
            return Err(Invalid::new("metrics.maxSeries", "must be at least 1"));
        }
        Ok(())
    }
}

/// `metrics.podHistogramBuckets`: which of the kernel's log2 slots a histogram labelled with
/// a pod exports as buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistogramBuckets {
    /// Every fourth slot, 16 µs to 1.048576 s: 5 buckets and +Inf, 8 series a histogram.
    Coarse,
    /// Every slot, 1 µs to 67.108864 s: 27 buckets and +Inf, 30 series a histogram.
    Fine,
}

impl HistogramBuckets {
    /// The slots exported as buckets (their bounds are the `le` values).
    pub fn slots(self) -> &'static [usize] {
        match self {
            HistogramBuckets::Coarse => &COARSE_SLOTS,
            HistogramBuckets::Fine => &FINE_SLOTS,
        }
    }
}

/// Every log2 slot: 2^0 .. 2^26 µs.
const FINE_SLOTS: [usize; ebpf_core::record::LOG2_SLOTS] = {
    let mut slots = [0; ebpf_core::record::LOG2_SLOTS];
    let mut k = 0;
    while k < slots.len() {
        slots[k] = k;
        k += 1;
    }
    slots
};
/// Every fourth: 16 µs, 256 µs, 4.096 ms, 65.536 ms, 1.048576 s.
const COARSE_SLOTS: [usize; 5] = [4, 8, 12, 16, 20];

/// The hard cap on the series the probes make (`metrics.maxSeries`): each new series (of a
/// workload-labelled counter, a kernel histogram, the netstat reading, the flow series) asks
/// it first, and one that does not fit is not made: its update is dropped and counted once in
/// `sonde_series_dropped_total{metric}`. Series that go (netstat's, with their namespace)
/// give their room back. The agent's own health series (`sonde_probe_up`, ...) and the
/// plugins' (capped by their `limits.series`) are not counted.
pub struct SeriesBudget {
    max: AtomicUsize,
    used: AtomicUsize,
    /// Counter series made through [`SeriesBudget::inc_counter`], by key: a counter vector
    /// cannot be asked whether it has a series without making it.
    counters: Mutex<HashSet<u64>>,
    /// Keys of the series refused so far, so that each is counted once (at most `max` of
    /// them are remembered; then the memory starts over).
    refused: Mutex<HashSet<u64>>,
    dropped: IntCounterVec,
    expired: IntCounter,
    series: IntGauge,
    limit: IntGauge,
}

impl SeriesBudget {
    fn new(registry: &Registry, max: usize) -> Arc<Self> {
        let series = IntGauge::new(
            "sonde_series",
            "Series the probes export now, counted against metrics.maxSeries.",
        )
        .expect("valid metric definition");
        let limit = IntGauge::new(
            "sonde_series_limit",
            "metrics.maxSeries: series the probes may export at most.",
        )
        .expect("valid metric definition");
        for g in [&series, &limit] {
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
        }
        let budget = SeriesBudget {
            max: AtomicUsize::new(max),
            used: AtomicUsize::new(0),
            counters: Mutex::new(HashSet::new()),
            refused: Mutex::new(HashSet::new()),
            dropped: counter(
                registry,
                "sonde_series_dropped_total",
                "Series not made because the agent had metrics.maxSeries series, by metric (a histogram counts its buckets, sum and count); each counted once.",
                &["metric"],
            ),
            expired: {
                let c = IntCounter::new(
                    "sonde_series_expired_total",
                    "Series removed because their pod had been gone for topology.goneRetention.",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            series,
            limit,
        };
        budget.limit.set(max as i64);
        Arc::new(budget)
    }

    /// A budget of its own, registered nowhere (tests, `sonde trace`).
    pub fn unregistered(max: usize) -> Arc<Self> {
        Self::new(&Registry::new(), max)
    }

    /// Changes the cap; series beyond a lowered one stay, new ones wait for room.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.limit.set(max as i64);
    }

    /// Series counted now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The key of one series: its metric's name and its label values.
    pub fn key<'a>(metric: &str, labels: impl IntoIterator<Item = &'a str>) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        metric.hash(&mut h);
        for l in labels {
            l.hash(&mut h);
        }
        h.finish()
    }

    /// Takes room for a new series `key` costing `cost` (series per metric: a histogram
    /// costs its buckets, sum and count; flow's pair of series one in each family). False,
    /// and the series counted as dropped (once per key), when it does not fit.
    pub fn admit(&self, key: u64, cost: &[(&str, usize)]) -> bool {
        let n: usize = cost.iter().map(|(_, n)| n).sum();
        let max = self.max.load(Ordering::Relaxed);
        let fits = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + n <= max).then_some(used + n)
            })
            .is_ok();
        if fits {
            self.series.set(self.used() as i64);
            return true;
        }
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() >= max.max(1024) {
            refused.clear();
        }
        if refused.insert(key) {
            for (metric, n) in cost {
                self.dropped.with_label_values(&[metric]).inc_by(*n as u64);
            }
        }
        false
    }

    /// What `sonde_series_dropped_total{metric}` says (tests).
    #[cfg(test)]
    pub fn dropped(&self, metric: &str) -> u64 {
        self.dropped.with_label_values(&[metric]).get()
    }

    /// Gives back the room of `n` series that are gone.
    pub fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(n))
            });
        self.series.set(self.used() as i64);
    }

    /// Gives back the room of `series` removed because their pod is gone, and counts them in
    /// `sonde_series_expired_total`.
    fn expire(&self, series: usize) {
        self.release(series);
        self.expired.inc_by(series as u64);
    }

    /// Removes the series of `counter` whose pod `keep` does not accept; returns how many.
    fn expire_counter(&self, counter: &IntCounterVec, keep: &dyn Fn(&str, &str) -> bool) -> usize {
        let Some(desc) = counter.desc().first().map(|d| (*d).clone()) else {
            return 0;
        };
        let mut removed = 0;
        for family in counter.collect() {
            for m in family.get_metric() {
                let labels: HashMap<&str, &str> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                let label = |n: &str| labels.get(n).copied().unwrap_or_default();
                if label("pod").is_empty() || keep(label("namespace"), label("pod")) {
                    continue;
                }
                if counter.remove(&labels).is_ok() {
                    let key =
                        Self::key(&desc.fq_name, desc.variable_labels.iter().map(|n| label(n)));
                    self.counters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Adds `n` to the series of `counter` with these label values, made only if the budget
    /// has room for it (else the update is dropped and counted).
    pub fn inc_counter(&self, counter: &IntCounterVec, labels: &[&str], n: u64) {
        let name = counter
            .desc()
            .first()
            .map(|d| d.fq_name.clone())
            .unwrap_or_default();
        let key = Self::key(&name, labels.iter().copied());
        {
            // Held while asking, so that a series is admitted (and counted) once.
            let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            if !counters.contains(&key) {
                if !self.admit(key, &[(&name, 1)]) {
                    return;
                }
                counters.insert(key);
            }
        }
        counter.with_label_values(labels).inc_by(n);
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// Each probe's series, as its driver made them (`Driver::series`), by their type.
    probes: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    /// The families labelled with a pod, whose series go with it (`expire_pods`).
    pod_families: Vec<PodFamily>,
    pub probe_up: IntGaugeVec,
    pub events_lost: IntCounterVec,
    /// Events that asked for a kernel stack and got none (the stack map had no room).
    pub stacks_lost: IntCounterVec,
    pub events_suppressed: IntCounterVec,
    pub consumer_events_dropped: IntCounterVec,
    /// `/api/v1/events` streams open now.
    pub api_streams: prometheus::IntGauge,
    /// `/api/v1/events` streams ended or refused, by reason.
    pub api_streams_closed: IntCounterVec,
    /// 1 while the topology is stale (the API server silent for `topology.staleAfter`).
    pub topology_stale: prometheus::IntGauge,
    pub config_reloads: IntCounterVec,
    /// `topology.additionalLabels`' names: workload-labelled series carry them after `node`,
    /// `namespace`, `pod`.
    pub additional_labels: Vec<String>,
    /// The cap on the probes' series (`metrics.maxSeries`).
    pub budget: Arc<SeriesBudget>,
}

/// A family whose series belong to pods, and go with them.
enum PodFamily {
    Counter(IntCounterVec),
    Histogram(KernelHistogram),
    /// Series of its own kind (the flow probe's): removes those of pods `keep` refuses and
    /// says how many went.
    Other(ExpirePods),
}

/// Removes the series of the pods a predicate refuses; returns how many went.
pub type ExpirePods = Box<dyn Fn(&dyn Fn(&str, &str) -> bool) -> usize + Send + Sync>;

/// Where a probe makes its series, from its own file (`Driver::series`): the families are
/// registered, labelled as the agent's contract says (workload-labelled ones with `node`,
/// `namespace`, `pod`, the additional labels, then their own), their histograms bucketed as
/// the config says, and their series counted against `metrics.maxSeries` and removed with
/// their pod.
pub struct Families<'a> {
    registry: &'a Registry,
    budget: &'a Arc<SeriesBudget>,
    additional: &'a [String],
    pod_slots: &'static [usize],
    pod_families: &'a mut Vec<PodFamily>,
}

impl Families<'_> {
    fn with_workload(&self, own: &[&str]) -> Vec<String> {
        ["node", "namespace", "pod"]
            .iter()
            .map(|s| s.to_string())
            .chain(self.additional.iter().cloned())
            .chain(own.iter().map(|s| s.to_string()))
            .collect()
    }

    /// A counter labelled with the workload, then `own` (count it with
    /// `Context::count_for_netns`).
    pub fn pod_counter(&mut self, name: &str, help: &str, own: &[&str]) -> IntCounterVec {
        let labels = self.with_workload(own);
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let c = counter(self.registry, name, help, &labels);
        self.pod_families.push(PodFamily::Counter(c.clone()));
        c
    }

    /// A counter with `labels` (the first is `node`), of no pod.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        counter(self.registry, name, help, labels)
    }

    /// A kernel-bucketed histogram labelled with the workload, then `own`, with the buckets
    /// of `metrics.podHistogramBuckets`.
    pub fn pod_histogram(&mut self, name: &str, help: &str, own: &[&str]) -> KernelHistogram {
        let labels = self.with_workload(own);
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let h = histogram(
            self.registry,
            name,
            help,
            &labels,
            (self.pod_slots, self.budget),
        );
        self.pod_families.push(PodFamily::Histogram(h.clone()));
        h
    }

    /// A kernel-bucketed histogram with `labels` (the first is `node`), of no pod, with every
    /// log2 slot as a bucket.
    pub fn node_histogram(&mut self, name: &str, help: &str, labels: &[&str]) -> KernelHistogram {
        histogram(
            self.registry,
            name,
            help,
            labels,
            (HistogramBuckets::Fine.slots(), self.budget),
        )
    }

    /// The cap every series of the probes counts against.
    pub fn budget(&self) -> Arc<SeriesBudget> {
        Arc::clone(self.budget)
    }

    /// Registers a collector of the probe's own making whose series belong to pods;
    /// `expire` removes those of gone pods.
    pub fn pod_collector<C: Collector + Clone + 'static>(&mut self, c: C, expire: ExpirePods) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        self.pod_families.push(PodFamily::Other(expire));
        c
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    (slots, budget): (&'static [usize], &Arc<SeriesBudget>),
) -> KernelHistogram {
    let h = KernelHistogram::new(name, help, labels, slots, Arc::clone(budget));
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// A Prometheus histogram whose observations are bucketed in the kernel (log2 slots of
/// microseconds, see `ebpf_core::record::LOG2_SLOTS`): the agent adds what each slot gained
/// and exposes the exact counts, with `le` the bounds of the slots it exports (every slot, or
/// some of them: a bucket then holds the slots below it too, so counts stay exact). Each new
/// series asks the agent's [`SeriesBudget`] first.
#[derive(Clone)]
pub struct KernelHistogram {
    desc: Arc<Desc>,
    series: Arc<Mutex<BTreeMap<Vec<String>, SlotCounts>>>,
    /// The slots exported as buckets, ascending.
    slots: &'static [usize],
    budget: Arc<SeriesBudget>,
}

/// One series: counts per slot (the last one above every bucket) and the sum in nanoseconds.
#[derive(Debug, Clone)]
struct SlotCounts {
    slots: [u64; ebpf_core::record::LOG2_SLOTS + 1],
    sum_ns: u64,
}

impl KernelHistogram {
    fn new(
        name: &str,
        help: &str,
        labels: &[&str],
        slots: &'static [usize],
        budget: Arc<SeriesBudget>,
    ) -> Self {
        let desc = Desc::new(
            name.into(),
            help.into(),
            labels.iter().map(|l| l.to_string()).collect(),
            Default::default(),
        )
        .expect("valid metric definition");
        KernelHistogram {
            desc: Arc::new(desc),
            series: Arc::new(Mutex::new(BTreeMap::new())),
            slots,
            budget,
        }
    }

    /// Series one label set costs: the buckets, +Inf, the sum and the count.
    pub fn series_cost(&self) -> usize {
        self.slots.len() + 3
    }

    fn with_series(&self, labels: Vec<String>, f: impl FnOnce(&mut SlotCounts)) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = series.get_mut(&labels) {
            return f(s);
        }
        let name = &self.desc.fq_name;
        let key = SeriesBudget::key(name, labels.iter().map(String::as_str));
        if !self.budget.admit(key, &[(name, self.series_cost())]) {
            return;
        }
        f(series.entry(labels).or_insert(SlotCounts {
            slots: [0; ebpf_core::record::LOG2_SLOTS + 1],
            sum_ns: 0,
        }));
    }

    /// Removes the series whose pod (the values of labels `namespace` and `pod`) `keep` does
    /// not accept; returns how many series (buckets, sum and count each) went.
    fn expire(&self, keep: &dyn Fn(&str, &str) -> bool) -> usize {
        let at = |name: &str| self.desc.variable_labels.iter().position(|l| l == name);
        let (Some(ns), Some(pod)) = (at("namespace"), at("pod")) else {
            return 0;
        };
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let before = series.len();
        series.retain(|labels, _| labels[pod].is_empty() || keep(&labels[ns], &labels[pod]));
        (before - series.len()) * self.series_cost()
    }

    /// Adds `n` observations to slot `slot` of the series with these label values.
    pub fn add_slot(&self, labels: Vec<String>, slot: usize, n: u64) {
        let slot = slot.min(ebpf_core::record::LOG2_SLOTS);
        self.with_series(labels, |s| s.slots[slot] += n);
    }

    /// Adds `ns` nanoseconds to the sum of the series with these label values.
    pub fn add_sum_ns(&self, labels: Vec<String>, ns: u64) {
        self.with_series(labels, |s| s.sum_ns = s.sum_ns.wrapping_add(ns));
    }
}

impl Collector for KernelHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        let metrics = series
            .iter()
            .map(|(values, counts)| {
                let labels = self
                    .desc
                    .variable_labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut pair = proto::LabelPair::default();
                        pair.set_name(name.clone());
                        pair.set_value(value.clone());
                        pair
                    })
                    .collect();
                let (mut cumulative, mut next) = (0, 0);
                let buckets = self
                    .slots
                    .iter()
                    .map(|&k| {
                        cumulative += counts.slots[next..=k].iter().sum::<u64>();
                        next = k + 1;
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(ebpf_core::record::log2_slot_bound_seconds(k));
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                let mut h = proto::Histogram::default();
                h.set_bucket(buckets);
                h.set_sample_count(counts.slots.iter().sum());
                h.set_sample_sum(counts.sum_ns as f64 / 1e9);
                let mut m = proto::Metric::from_label(labels);
                m.set_histogram(h);
                m
            })
            .collect();
        family.set_metric(metrics);
        vec![family]
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_config(&[], &MetricsConfig::default())
    }

    /// The agent's series, the workload-labelled ones with `additional` labels after `node`,
    /// `namespace`, `pod`, their histograms with `config`'s buckets, all capped by
    /// `config.max_series`.
    pub fn with_config(additional: &[String], config: &MetricsConfig) -> Self {
        let r = Registry::new();
        let budget = SeriesBudget::new(&r, config.max_series);
        let mut pod_families = Vec::new();
        let mut probes: HashMap<TypeId, Box<dyn Any + Send + Sync>> = HashMap::new();
        let mut families = Families {
            registry: &r,
            budget: &budget,
            additional,
            pod_slots: config.pod_histogram_buckets.slots(),
            pod_families: &mut pod_families,
        };
        for make in crate::probes::DRIVERS.iter().filter_map(|d| d.series) {
            let series = make(&mut families);
            probes.insert(Any::type_id(&*series), series);
        }
        let mut m = Metrics {
            probes,
            pod_families,
            probe_up: gauge(
                &r,
                "sonde_probe_up",
                "1 when the probe is loaded and attached.",
                &["probe"],
            ),
            events_lost: counter(
                &r,
                "sonde_events_lost_total",
                "Event records the kernel could not deliver (ring buffer full).",
                &["probe"],
            ),
            stacks_lost: counter(
                &r,
                "sonde_events_stack_lost_total",
                "Events emitted without the kernel stack they asked for (probes.<probe>.stack): the kernel could not store it.",
                &["probe"],
            ),
            events_suppressed: counter(
                &r,
                "sonde_events_suppressed_total",
                "Event records not emitted because of the probe's event rate limits (its namespace's, then the CPU's), by the pod whose event it was (empty: events of no pod).",
                &["probe", "namespace", "pod"],
            ),
            consumer_events_dropped: counter(
                &r,
                "sonde_consumer_events_dropped_total",
                "Events a consumer (event sink) lost because its queue was full.",
                &["consumer"],
            ),
            api_streams: {
                let g = prometheus::IntGauge::new(
                    "sonde_api_streams",
                    "Event streams (/api/v1/events) open.",
                )
                .expect("valid metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            topology_stale: {
                let g = prometheus::IntGauge::new(
                    "sonde_topology_stale",
                    "1 while the API server has not answered for topology.staleAfter: pods and addresses are named as last seen.",
                )
                .expect("valid metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            api_streams_closed: counter(
                &r,
                "sonde_api_streams_closed_total",
                "Event streams (/api/v1/events) the agent ended or refused, by reason: behind (the reader fell further behind than api.streamQueue), over_cap (api.maxStreams were open), ended (the reader went).",
                &["reason"],
            ),
            config_reloads: counter(
                &r,
                "sonde_config_reloads_total",
                "Config file reloads, by result (applied, rejected).",
                &["result"],
            ),
            registry: r,
            additional_labels: additional.to_vec(),
            budget,
        };
        m.pod_families
            .push(PodFamily::Counter(m.events_suppressed.clone()));
        let build = gauge(
            &m.registry,
            "sonde_build_info",
            "Sonde build information.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Known reasons start at 0.
        for reason in ["behind", "over_cap", "ended"] {
            m.api_streams_closed.with_label_values(&[reason]);
        }
        m
    }

    /// Removes the series of pods that `keep` (namespace, pod) does not accept, from every
    /// family labelled with a pod (those of netstat go with their namespace, on their own);
    /// returns how many went. Series of no pod (empty `pod`) stay.
    pub fn expire_pods(&self, keep: &dyn Fn(&str, &str) -> bool) -> usize {
        let b = &self.budget;
        let removed = self
            .pod_families
            .iter()
            .map(|f| match f {
                PodFamily::Counter(c) => b.expire_counter(c, keep),
                PodFamily::Histogram(h) => h.expire(keep),
                PodFamily::Other(expire) => expire(keep),
            })
            .sum();
        if removed > 0 {
            b.expire(removed);
        }
        removed
    }

    /// A probe's series, as its driver made them (`Driver::series`).
    ///
    /// # Panics
    /// When no driver made a `T`: a probe asks for its own series only.
    pub fn of<T: Any>(&self) -> &T {
        self.probes
            .get(&TypeId::of::<T>())
            .and_then(|s| s.downcast_ref())
            .unwrap_or_else(|| panic!("no probe made series {}", std::any::type_name::<T>()))
    }

    /// The text exposition format of the agent's metrics followed by `extra` families (the
    /// plugins').
    pub fn encode(&self, extra: Vec<prometheus::proto::MetricFamily>) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        let mut families = self.registry.gather();
        families.extend(extra);
        if let Err(e) = encoder.encode_utf8(&families, &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{
        dns, io_latency, netdev_latency, packet_drop, softirq, tcp_connect, tcp_rtt,
    };

    fn hist(slots: &'static [usize], budget: &Arc<SeriesBudget>) -> KernelHistogram {
        KernelHistogram::new("sonde_x_seconds", "x", &["pod"], slots, Arc::clone(budget))
    }

    /// (le, cumulative count) of each bucket, then (count, sum) of the series of `pod`.
    fn exported(h: &KernelHistogram, pod: &str) -> (Vec<(f64, u64)>, u64, f64) {
        let family = h.collect().remove(0);
        let m = family
            .get_metric()
            .iter()
            .find(|m| m.get_label()[0].value() == pod)
            .expect("the series");
        let h = m.get_histogram();
        let buckets = h
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        (buckets, h.get_sample_count(), h.get_sample_sum())
    }

    #[test]
    fn coarse_buckets_fold_the_slots_below_them() {
        let budget = SeriesBudget::unregistered(1000);
        let h = hist(HistogramBuckets::Coarse.slots(), &budget);
        let pod = || vec!["a".to_string()];
        // 1 µs, 16 µs (on a bound), 17..32 µs, 1 s, 100 s (above every slot).
        for (slot, n) in [
            (0, 1),
            (4, 2),
            (5, 3),
            (20, 4),
            (ebpf_core::record::LOG2_SLOTS, 5),
        ] {
            h.add_slot(pod(), slot, n);
        }
        h.add_sum_ns(pod(), 1_500_000_000);
        let (buckets, count, sum) = exported(&h, "a");
        assert_eq!(
            buckets,
            vec![
                (0.000016, 3),
                (0.000256, 6),
                (0.004096, 6),
                (0.065536, 6),
                (1.048576, 10),
            ]
        );
        assert_eq!((count, sum), (15, 1.5));
        assert_eq!(h.series_cost(), 8);
        assert_eq!(budget.used(), 8);

        let fine = hist(HistogramBuckets::Fine.slots(), &budget);
        fine.add_slot(pod(), 5, 1);
        let (buckets, count, _) = exported(&fine, "a");
        assert_eq!(buckets.len(), ebpf_core::record::LOG2_SLOTS);
        assert_eq!(buckets[4], (0.000016, 0));
        assert_eq!(buckets[5], (0.000032, 1));
        assert_eq!(count, 1);
        assert_eq!(fine.series_cost(), 30);
    }

    #[test]
    fn the_budget_refuses_new_series_past_the_cap_and_counts_each_once() {
        // Room for one coarse histogram (8) and two counter series.
        let budget = SeriesBudget::unregistered(10);
        let h = hist(HistogramBuckets::Coarse.slots(), &budget);
        let r = Registry::new();
        let c = counter(&r, "sonde_y_total", "y", &["pod"]);
        h.add_slot(vec!["a".into()], 3, 1);
        budget.inc_counter(&c, &["a"], 2);
        budget.inc_counter(&c, &["b"], 1);
        assert_eq!(budget.used(), 10);
        // Full: existing series still count, new ones are dropped, each counted once.
        budget.inc_counter(&c, &["a"], 3);
        budget.inc_counter(&c, &["c"], 1);
        budget.inc_counter(&c, &["c"], 1);
        h.add_slot(vec!["b".into()], 3, 1);
        h.add_sum_ns(vec!["b".into()], 10);
        h.add_slot(vec!["a".into()], 3, 1);
        assert_eq!(c.with_label_values(&["a"]).get(), 5);
        assert_eq!(c.with_label_values(&["b"]).get(), 1);
        assert_eq!(budget.dropped("sonde_y_total"), 1);
        assert_eq!(budget.dropped("sonde_x_seconds"), 8);
        assert_eq!(exported(&h, "a").1, 2);
        assert_eq!(h.collect()[0].get_metric().len(), 1);
        assert_eq!(budget.series.get(), 10);
        // Room given back (netstat's series of a namespace that went) is taken by the next.
        budget.release(1);
        budget.inc_counter(&c, &["c"], 7);
        assert_eq!(c.with_label_values(&["c"]).get(), 7);
        assert_eq!(budget.used(), 10);
        // A raised cap makes room at once.
        budget.set_max(18);
        h.add_slot(vec!["b".into()], 3, 1);
        assert_eq!(exported(&h, "b").1, 1);
        assert_eq!(budget.limit.get(), 18);
    }

    #[test]
    fn metrics_config_is_checked() {
        let c: MetricsConfig =
            serde_yaml_ng::from_str("maxSeries: 500\npodHistogramBuckets: fine\n").unwrap();
        assert_eq!(c.max_series, 500);
        assert_eq!(c.pod_histogram_buckets, HistogramBuckets::Fine);
        let e = MetricsConfig { max_series: 0, ..c }.validate().unwrap_err();
        assert_eq!(e.field, "metrics.maxSeries");
        let e =
            serde_yaml_ng::from_str::<MetricsConfig>("podHistogramBuckets: log2\n").unwrap_err();
        assert!(e.to_string().contains("coarse"), "{e}");
    }

    #[test]
    fn pod_histograms_are_coarse_by_default_and_node_histograms_fine() {
        let m = Metrics::new();
        assert_eq!(m.of::<tcp_connect::Series>().duration.series_cost(), 8);
        assert_eq!(m.of::<dns::Series>().duration.series_cost(), 8);
        assert_eq!(m.of::<netdev_latency::Series>().queue.series_cost(), 8);
        assert_eq!(m.of::<io_latency::Series>().latency.series_cost(), 30);
        assert_eq!(m.of::<softirq::Series>().delay.series_cost(), 30);
        let fine = Metrics::with_config(
            &[],
            &MetricsConfig {
                pod_histogram_buckets: HistogramBuckets::Fine,
                ..Default::default()
            },
        );
        assert_eq!(fine.of::<tcp_connect::Series>().duration.series_cost(), 30);
    }

    #[test]
    fn series_of_gone_pods_are_removed_and_give_their_room_back() {
        let m = Metrics::new();
        let labels = |pod: &'static str| ["node", "", pod, "NO_SOCKET"];
        for pod in ["a", "b", ""] {
            m.budget
                .inc_counter(&m.of::<packet_drop::Series>().drops, &labels(pod), 3);
            m.of::<tcp_rtt::Series>().rtt.add_slot(
                vec!["node".into(), "".into(), pod.into()],
                4,
                1,
            );
        }
        m.budget
            .inc_counter(&m.events_suppressed, &["packet_drop", "", "b"], 7);
        let used = m.budget.used();
        let rtt_cost = m.of::<tcp_rtt::Series>().rtt.series_cost();

        let removed = m.expire_pods(&|ns, pod| ns.is_empty() && pod == "a");
        assert_eq!(
            removed,
            2 + rtt_cost,
            "b's drops, suppressed and rtt series"
        );
        assert_eq!(m.budget.used(), used - removed);
        let text = m.encode(Vec::new());
        assert!(!text.contains("pod=\"b\""), "{text}");
        assert!(text.contains("pod=\"a\",reason=\"NO_SOCKET\"} 3"), "{text}");
        assert!(
            text.contains("pod=\"\",reason=\"NO_SOCKET\"} 3"),
            "no pod's stays"
        );
        assert!(text.contains(&format!("sonde_series_expired_total {removed}")));
        // A pod of the same name that comes back starts again, within the budget.
        m.budget
            .inc_counter(&m.of::<packet_drop::Series>().drops, &labels("b"), 1);
        assert_eq!(m.budget.used(), used - removed + 1);
        assert_eq!(
            m.of::<packet_drop::Series>()
                .drops
                .with_label_values(&labels("b"))
                .get(),
            1,
            "counted from 0"
        );
    }
}
