//! Prometheus metrics the agent exports for the plugin (capability `metrics`).
//!
//! Register a metric once (in [`Plugin::init`](crate::Plugin::init)), resolve each label set
//! to a [`Series`] once, and keep the series: updating through a handle is the cheap call.
//! Names must start with `sonde_`; counters end in `_total` by Prometheus convention.

use std::fmt;
use std::marker::PhantomData;

use crate::bindings::sonde::plugin::metrics as wit;
use crate::Result;

fn owned(strings: &[&str]) -> Vec<String> {
    strings.iter().map(|s| s.to_string()).collect()
}

/// A counter family: values only go up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counter {
    metric: wit::Metric,
}

/// A gauge family: values are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gauge {
    metric: wit::Metric,
}

/// A histogram family: observations are counted into buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Histogram {
    metric: wit::Metric,
}

/// One label set of a metric of kind `M` ([`Counter`], [`Gauge`] or [`Histogram`]); `Copy`,
/// so keep it wherever it is needed.
pub struct Series<M> {
    handle: wit::Series,
    kind: PhantomData<fn() -> M>,
}

impl Counter {
    /// Registers the counter `name` with these label names.
    pub fn register(name: &str, help: &str, label_names: &[&str]) -> Result<Self> {
        let metric = wit::register_counter(name, help, &owned(label_names))?;
        Ok(Counter { metric })
    }

    /// The series for these label values, in `label_names` order. Each new label set counts
    /// against the plugin's series limit.
    pub fn series(&self, label_values: &[&str]) -> Result<Series<Counter>> {
        Series::resolve(self.metric, label_values)
    }
}

impl Gauge {
    /// Registers the gauge `name` with these label names.
    pub fn register(name: &str, help: &str, label_names: &[&str]) -> Result<Self> {
        let metric = wit::register_gauge(name, help, &owned(label_names))?;
        Ok(Gauge { metric })
    }

    /// The series for these label values, in `label_names` order.
    pub fn series(&self, label_values: &[&str]) -> Result<Series<Gauge>> {
        Series::resolve(self.metric, label_values)
    }
}

impl Histogram {
    /// Registers the histogram `name` with these label names and bucket upper bounds
    /// (ascending; empty for Prometheus' defaults).
    pub fn register(name: &str, help: &str, label_names: &[&str], buckets: &[f64]) -> Result<Self> {
        let metric = wit::register_histogram(name, help, &owned(label_names), buckets)?;
        Ok(Histogram { metric })
    }

    /// The series for these label values, in `label_names` order.
    pub fn series(&self, label_values: &[&str]) -> Result<Series<Histogram>> {
        Series::resolve(self.metric, label_values)
    }
}

impl<M> Series<M> {
    fn resolve(metric: wit::Metric, label_values: &[&str]) -> Result<Self> {
        let handle = wit::with_labels(metric, &owned(label_values))?;
        Ok(Series {
            handle,
            kind: PhantomData,
        })
    }
}

impl Series<Counter> {
    /// Adds a non-negative amount.
    pub fn add(&self, value: f64) -> Result<()> {
        Ok(wit::add(self.handle, value)?)
    }

    /// Adds one.
    pub fn inc(&self) -> Result<()> {
        self.add(1.0)
    }
}

impl Series<Gauge> {
    /// Sets the value.
    pub fn set(&self, value: f64) -> Result<()> {
        Ok(wit::set(self.handle, value)?)
    }
}

impl Series<Histogram> {
    /// Records one observation.
    pub fn observe(&self, value: f64) -> Result<()> {
        Ok(wit::observe(self.handle, value)?)
    }
}

// Derives would require `M: Clone` etc.; a series is a handle whatever its kind.
impl<M> Clone for Series<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Series<M> {}

impl<M> PartialEq for Series<M> {
    fn eq(&self, other: &Self) -> bool {
        self.handle == other.handle
    }
}

impl<M> Eq for Series<M> {}

impl<M> fmt::Debug for Series<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Series({})", self.handle)
    }
}
