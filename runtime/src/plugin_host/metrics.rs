//! Host side of `sonde:plugin/metrics`: each plugin instance registers its metrics in a
//! registry of its own (gathered into /metrics next to the agent's), resolves label sets to
//! series handles once, and updates through the handles. Capability `metrics`; at most
//! `spec.limits.series` series.

use std::collections::HashMap;

use prometheus::core::{AtomicF64, GenericCounter, GenericCounterVec};
use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, Opts, Registry};

use super::bundle::PluginInfo;
use super::manifest::Capability;
use super::sonde::plugin::metrics::{Host, Metric, Series};
use super::Refusal as Error;
use super::{HostContext, HostState};

enum Family {
    Counter(GenericCounterVec<AtomicF64>),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

enum One {
    Counter(GenericCounter<AtomicF64>),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// Buckets a plugin's histogram may have: each is a line of every series in /metrics.
const MAX_BUCKETS: usize = 64;

/// A plugin instance's metrics.
pub struct PluginSeries {
    pub registry: Registry,
    families: Vec<(Family, usize)>,
    /// The buckets of each family (0 but for histograms).
    buckets: Vec<usize>,
    series: Vec<One>,
    by_labels: HashMap<(u32, Vec<String>), u32>,
}

impl PluginSeries {
    pub fn new() -> Self {
        PluginSeries {
            registry: Registry::new(),
            families: Vec::new(),
            buckets: Vec::new(),
            series: Vec::new(),
            by_labels: HashMap::new(),
        }
    }

    /// Whether the series exists already.
    pub fn has(&self, metric: Metric, values: &[String]) -> bool {
        self.by_labels.contains_key(&(metric, values.to_vec()))
    }

    /// The buckets of a family's series (0 but for histograms, or an unknown handle).
    pub fn buckets(&self, metric: Metric) -> usize {
        self.buckets.get(metric as usize).copied().unwrap_or(0)
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Which kind of metric to register.
pub enum MetricKind {
    Counter,
    Gauge,
    /// With these upper bounds (ascending); empty for Prometheus' defaults.
    Histogram(Vec<f64>),
}

impl MetricKind {
    /// The buckets each series has (0 but for histograms).
    fn buckets(&self) -> usize {
        match self {
            MetricKind::Histogram(b) if b.is_empty() => prometheus::DEFAULT_BUCKETS.len(),
            MetricKind::Histogram(b) => b.len(),
            _ => 0,
        }
    }
}

impl PluginSeries {
    /// Registers metric `name` for plugin `info` (names start with `sonde_`, belong to one
    /// plugin and are not the agent's own); its handle.
    pub fn register(
        &mut self,
        host: &HostContext,
        info: &PluginInfo,
        kind: MetricKind,
        name: String,
        help: String,
        labels: Vec<String>,
    ) -> Result<Metric, Error> {
        if !name.starts_with("sonde_") || !valid_name(&name) {
            return Err(Error::Invalid(format!(
                "metric name {name:?} must start with sonde_ and be [a-zA-Z0-9_]"
            )));
        }
        if let Some(l) = labels
            .iter()
            .find(|l| !valid_name(l) || l.starts_with("__"))
        {
            return Err(Error::Invalid(format!("label name {l:?} is not valid")));
        }
        if let MetricKind::Histogram(buckets) = &kind {
            if buckets.len() > MAX_BUCKETS {
                return Err(Error::Invalid(format!(
                    "a histogram has at most {MAX_BUCKETS} buckets, not {}",
                    buckets.len()
                )));
            }
            if buckets.windows(2).any(|w| w[0] >= w[1]) || buckets.iter().any(|b| !b.is_finite()) {
                return Err(Error::Invalid(
                    "histogram buckets must be finite and ascending".into(),
                ));
            }
        }
        {
            let mut names = host.metric_names.lock().unwrap_or_else(|e| e.into_inner());
            match names.get(&name) {
                Some(owner) if *owner != info.name => {
                    return Err(Error::Invalid(format!(
                        "metric {name} is exported by {owner}"
                    )));
                }
                _ => {}
            }
            if host.is_agent_metric(&name) {
                return Err(Error::Invalid(format!(
                    "metric {name} is one of the agent's own"
                )));
            }
            names.insert(name.clone(), info.name.clone());
        }
        let help = if help.is_empty() {
            format!("{name} ({})", info.source)
        } else {
            help
        };
        let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let buckets = kind.buckets();
        // Every series carries the node's name, as the agent's own do, unless the plugin
        // declares a `node` label of its own.
        let mut opts = Opts::new(name.clone(), help);
        if !labels.iter().any(|l| l == "node") {
            opts = opts.const_label("node", &*host.probes.node);
        }
        let family = match kind {
            MetricKind::Counter => GenericCounterVec::new(opts, &label_refs).map(Family::Counter),
            MetricKind::Gauge => GaugeVec::new(opts, &label_refs).map(Family::Gauge),
            MetricKind::Histogram(buckets) => {
                let mut opts = HistogramOpts::from(opts);
                if !buckets.is_empty() {
                    opts = opts.buckets(buckets);
                }
                HistogramVec::new(opts, &label_refs).map(Family::Histogram)
            }
        }
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let collector: Box<dyn prometheus::core::Collector> = match &family {
            Family::Counter(c) => Box::new(c.clone()),
            Family::Gauge(g) => Box::new(g.clone()),
            Family::Histogram(h) => Box::new(h.clone()),
        };
        self.registry
            .register(collector)
            .map_err(|e| Error::Invalid(format!("metric {name}: {e}")))?;
        self.buckets.push(buckets);
        self.families.push((family, labels.len()));
        Ok((self.families.len() - 1) as Metric)
    }

    /// The series of `metric` for these label values, counted against `spec.limits.series`.
    pub fn with_labels(
        &mut self,
        info: &PluginInfo,
        metric: Metric,
        label_values: Vec<String>,
    ) -> Result<Series, Error> {
        let key = (metric, label_values);
        if let Some(s) = self.by_labels.get(&key) {
            return Ok(*s);
        }
        let (family, arity) = self
            .families
            .get(metric as usize)
            .ok_or_else(|| Error::Invalid(format!("unknown metric handle {metric}")))?;
        let values = &key.1;
        if values.len() != *arity {
            return Err(Error::Invalid(format!(
                "{} label values for {arity} labels",
                values.len()
            )));
        }
        let cap = info.manifest.spec.limits.series as usize;
        if self.series.len() >= cap {
            return Err(Error::Limit(format!(
                "series limit {cap} reached (spec.limits.series)"
            )));
        }
        let v: Vec<&str> = values.iter().map(String::as_str).collect();
        let one = match family {
            Family::Counter(c) => c.get_metric_with_label_values(&v).map(One::Counter),
            Family::Gauge(g) => g.get_metric_with_label_values(&v).map(One::Gauge),
            Family::Histogram(h) => h.get_metric_with_label_values(&v).map(One::Histogram),
        }
        .map_err(|e| Error::Invalid(e.to_string()))?;
        self.series.push(one);
        let handle = (self.series.len() - 1) as Series;
        self.by_labels.insert(key, handle);
        Ok(handle)
    }

    fn one(&self, series: Series) -> Result<&One, Error> {
        self.series
            .get(series as usize)
            .ok_or_else(|| Error::Invalid(format!("unknown series handle {series}")))
    }

    pub fn add(&self, series: Series, value: f64) -> Result<(), Error> {
        match self.one(series)? {
            One::Counter(c) if value >= 0.0 && value.is_finite() => {
                c.inc_by(value);
                Ok(())
            }
            One::Counter(_) => Err(Error::Invalid(format!("a counter cannot add {value}"))),
            _ => Err(Error::Invalid(format!("series {series} is not a counter"))),
        }
    }

    pub fn set(&self, series: Series, value: f64) -> Result<(), Error> {
        match self.one(series)? {
            One::Gauge(g) => {
                g.set(value);
                Ok(())
            }
            _ => Err(Error::Invalid(format!("series {series} is not a gauge"))),
        }
    }

    pub fn observe(&self, series: Series, value: f64) -> Result<(), Error> {
        match self.one(series)? {
            One::Histogram(h) if value.is_finite() => {
                h.observe(value);
                Ok(())
            }
            One::Histogram(_) => Err(Error::Invalid(format!("cannot observe {value}"))),
            _ => Err(Error::Invalid(format!(
                "series {series} is not a histogram"
            ))),
        }
    }
}

impl HostState {
    fn register(
        &mut self,
        kind: MetricKind,
        name: String,
        help: String,
        labels: Vec<String>,
    ) -> Result<Metric, Error> {
        self.require(Capability::Metrics)?;
        let buckets = kind.buckets();
        let cost = super::budget::family_cost(&name, &help, &labels, buckets);
        self.budget
            .charge(cost)
            .map_err(|why| Error::Limit(format!("metric {name}: {why}")))?;
        let made = self
            .metrics
            .register(&self.host, &self.plugin, kind, name, help, labels);
        if made.is_err() {
            self.budget.release(cost);
        }
        made
    }
}

impl Host for HostState {
    fn register_counter(
        &mut self,
        name: String,
        help: String,
        label_names: Vec<String>,
    ) -> Result<Metric, Error> {
        self.register(MetricKind::Counter, name, help, label_names)
    }

    fn register_gauge(
        &mut self,
        name: String,
        help: String,
        label_names: Vec<String>,
    ) -> Result<Metric, Error> {
        self.register(MetricKind::Gauge, name, help, label_names)
    }

    fn register_histogram(
        &mut self,
        name: String,
        help: String,
        label_names: Vec<String>,
        buckets: Vec<f64>,
    ) -> Result<Metric, Error> {
        self.register(MetricKind::Histogram(buckets), name, help, label_names)
    }

    fn with_labels(&mut self, metric: Metric, label_values: Vec<String>) -> Result<Series, Error> {
        self.require(Capability::Metrics)?;
        if self.metrics.has(metric, &label_values) {
            return self.metrics.with_labels(&self.plugin, metric, label_values);
        }
        let cost = super::budget::series_cost(&label_values, self.metrics.buckets(metric));
        self.budget
            .charge(cost)
            .map_err(|why| Error::Limit(format!("a new series: {why}")))?;
        let made = self.metrics.with_labels(&self.plugin, metric, label_values);
        if made.is_err() {
            self.budget.release(cost);
        }
        made
    }

    fn add(&mut self, series: Series, value: f64) -> Result<(), Error> {
        self.metrics.add(series, value)
    }

    fn set(&mut self, series: Series, value: f64) -> Result<(), Error> {
        self.metrics.set(series, value)
    }

    fn observe(&mut self, series: Series, value: f64) -> Result<(), Error> {
        self.metrics.observe(series, value)
    }
}
