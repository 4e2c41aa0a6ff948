//! Resident scripts: bundles of `kind: Script`. The rhai script in `spec.source` has the
//! handlers `sonde trace` scripts have (`on_<probe>(e)` for the probes in `spec.subscribe`,
//! `on_interval()` every second) and the same aggregations, and runs inside the agent like a
//! plugin: its own thread and queue, `spec.limits.callTimeout` per call on top of the script
//! sandbox's limits, restarts with backoff, quarantine, hot reload from the plugin dirs.
//!
//! What a resident script adds to `sonde trace`'s functions, each needing its capability:
//!
//! - `metric_add(name, labels, value)`, `metric_inc(name, labels)` (counter),
//!   `metric_set(name, labels, value)` (gauge), `metric_observe(name, labels, value)`
//!   (histogram, Prometheus' default buckets): the metric is registered on first use with the
//!   keys of `labels` (an object map) as its label names (capability `metrics`);
//! - `emit(type, fields)` and `emit(type, severity, message, fields)`: a derived event with
//!   `source: script:<name>`; a `netns` field sets the event's network namespace, whose
//!   workload the host fills in (capability `events`).
//!
//! Wrong use (a bad name, other label keys than the metric's, a counter used as a gauge) stops
//! the handler with an error, as any script error; hitting `spec.limits.series` or
//! `eventsPerSecond` drops the update and counts `sonde_plugin_errors_total{kind="limit"}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::Registry;
use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Map, Position};

use super::bundle::{Bundle, BundleError, PluginInfo};
use super::events::{self, EmitBudget};
use super::manifest::Capability;
use super::metrics::{MetricKind, PluginSeries};
use super::worker::{next_generation, Failure, Fresh, Guest};
use super::Refusal as HostError;
use super::{delivery, HostContext, PluginHost};
use crate::event::{Batch, Severity};
use crate::script::aggregate::Num;
use crate::script::{Limits, Printer, Script, ScriptError};
use crate::topology::Workload;

/// Lines a script may print (into the agent's log) per second.
const PRINTS_PER_SECOND: u32 = 20;
/// How often, in rhai operations, the call deadline is checked.
const DEADLINE_EVERY: u64 = 4096;

/// What a script's metric and event functions share with the host.
struct Shared {
    host: Arc<HostContext>,
    info: Arc<PluginInfo>,
    series: PluginSeries,
    /// Metrics by name: kind (0 counter, 1 gauge, 2 histogram), label names, handle.
    metrics: HashMap<String, (u8, Vec<String>, u32)>,
    budget: EmitBudget,
}

/// The wall-clock limit of one call: nanoseconds since `base` after which the script is
/// stopped (checked every `DEADLINE_EVERY` operations).
struct Deadline {
    base: Instant,
    at: AtomicU64,
    fired: AtomicBool,
}

/// A running script.
pub(crate) struct ScriptGuest {
    script: Script,
    generation: u64,
    registry: Registry,
    deadline: Arc<Deadline>,
    timeout: Duration,
    handled: u64,
}

fn runtime(message: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(Dynamic::from(message.into()), Position::NONE).into()
}

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(v: &Dynamic) -> String {
    if v.is_unit() {
        String::new()
    } else if let Some(s) = v.read_lock::<ImmutableString>() {
        s.to_string()
    } else {
        v.to_string()
    }
}

impl Shared {
    fn require(&self, c: Capability) -> Result<(), Box<EvalAltResult>> {
        if self.info.manifest.grants(c) {
            Ok(())
        } else {
            self.refused(HostError::NotGranted(format!(
                "capability {} is not in spec.capabilities of script {}",
                c.as_str(),
                self.info.name
            )))
        }
    }

    /// A host refusal, counted by kind: a limit drops the update, anything else stops the
    /// handler.
    fn refused(&self, e: HostError) -> Result<(), Box<EvalAltResult>> {
        self.host.refused(&self.info.name, &e);
        match e {
            HostError::Limit(reason) => {
                tracing::debug!(script = %self.info.name, %reason, "script update dropped");
                Ok(())
            }
            HostError::Invalid(r) | HostError::NotGranted(r) => Err(runtime(r)),
        }
    }

    fn update(
        &mut self,
        kind: u8,
        name: &str,
        labels: &Map,
        value: f64,
    ) -> Result<(), Box<EvalAltResult>> {
        self.require(Capability::Metrics)?;
        let names: Vec<String> = labels.keys().map(|k| k.to_string()).collect();
        let metric = match self.metrics.get(name) {
            Some((k, want, handle)) => {
                if *k != kind {
                    let kinds = ["counter", "gauge", "histogram"];
                    return Err(runtime(format!(
                        "metric {name} is a {}, not a {}",
                        kinds[*k as usize], kinds[kind as usize]
                    )));
                }
                if *want != names {
                    return Err(runtime(format!(
                        "metric {name} has labels [{}], not [{}]",
                        want.join(", "),
                        names.join(", ")
                    )));
                }
                *handle
            }
            None => {
                let mk = match kind {
                    0 => MetricKind::Counter,
                    1 => MetricKind::Gauge,
                    _ => MetricKind::Histogram(Vec::new()),
                };
                let help = format!("{name} (script {})", self.info.name);
                let (host, info) = (Arc::clone(&self.host), Arc::clone(&self.info));
                let handle = match self.series.register(
                    &host,
                    &info,
                    mk,
                    name.to_string(),
                    help,
                    names.clone(),
                ) {
                    Ok(h) => h,
                    Err(e) => return self.refused(e),
                };
                self.metrics.insert(name.to_string(), (kind, names, handle));
                handle
            }
        };
        let values = labels.values().map(text).collect();
        let info = Arc::clone(&self.info);
        let series = match self.series.with_labels(&info, metric, values) {
            Ok(s) => s,
            Err(e) => return self.refused(e),
        };
        let r = match kind {
            0 => self.series.add(series, value),
            1 => self.series.set(series, value),
            _ => self.series.observe(series, value),
        };
        r.or_else(|e| self.refused(e))
    }

    fn emit(
        &mut self,
        kind: &str,
        severity: &str,
        message: Option<String>,
        fields: Map,
    ) -> Result<(), Box<EvalAltResult>> {
        self.require(Capability::Events)?;
        let severity = match severity {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            other => {
                return Err(runtime(format!(
                    "emit(): severity {other:?} is not info, warning or critical"
                )))
            }
        };
        let mut netns = None;
        let mut json = Vec::with_capacity(fields.len());
        for (k, v) in fields {
            if k.as_str() == "netns" {
                netns = Some(
                    v.as_int()
                        .ok()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            runtime("emit(): field netns must be a network namespace inode")
                        })?,
                );
                continue;
            }
            let value = if let Ok(i) = v.as_int() {
                i.into()
            } else if let Ok(f) = v.as_float() {
                serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
            } else if let Ok(b) = v.as_bool() {
                b.into()
            } else if v.is_unit() {
                serde_json::Value::Null
            } else {
                text(&v).into()
            };
            json.push((k.to_string(), value));
        }
        let (host, info) = (Arc::clone(&self.host), Arc::clone(&self.info));
        let workload: Option<Workload> = None;
        let r = events::publish(
            &host,
            &info,
            &mut self.budget,
            kind.to_string(),
            severity,
            netns,
            workload,
            message,
            json,
        );
        r.or_else(|e| self.refused(e))
    }
}

/// Registers the resident-only functions on a script's engine.
fn register(engine: &mut Engine, shared: &Arc<Mutex<Shared>>, deadline: &Arc<Deadline>) {
    let number = |v: &Dynamic, f: &str| -> Result<f64, Box<EvalAltResult>> {
        Num::from_dynamic(v).map(Num::as_f64).ok_or_else(|| {
            runtime(format!(
                "{f}(): the value must be a number, not {}",
                v.type_name()
            ))
        })
    };
    for (func, kind) in [
        ("metric_add", 0u8),
        ("metric_set", 1),
        ("metric_observe", 2),
    ] {
        let s = Arc::clone(shared);
        engine.register_fn(
            func,
            move |name: ImmutableString,
                  labels: Map,
                  v: Dynamic|
                  -> Result<(), Box<EvalAltResult>> {
                let v = number(&v, func)?;
                lock(&s).update(kind, &name, &labels, v)
            },
        );
    }
    let s = Arc::clone(shared);
    engine.register_fn(
        "metric_inc",
        move |name: ImmutableString, labels: Map| -> Result<(), Box<EvalAltResult>> {
            lock(&s).update(0, &name, &labels, 1.0)
        },
    );
    let s = Arc::clone(shared);
    engine.register_fn(
        "emit",
        move |kind: ImmutableString, fields: Map| -> Result<(), Box<EvalAltResult>> {
            lock(&s).emit(&kind, "info", None, fields)
        },
    );
    let s = Arc::clone(shared);
    engine.register_fn(
        "emit",
        move |kind: ImmutableString,
              severity: ImmutableString,
              message: ImmutableString,
              fields: Map|
              -> Result<(), Box<EvalAltResult>> {
            lock(&s).emit(&kind, &severity, Some(message.to_string()), fields)
        },
    );
    let d = Arc::clone(deadline);
    engine.on_progress(move |ops| {
        if ops % DEADLINE_EVERY == 0 {
            let now = d.base.elapsed().as_nanos() as u64;
            if now > d.at.load(Ordering::Relaxed) {
                d.fired.store(true, Ordering::Relaxed);
                return Some(Dynamic::from("callTimeout"));
            }
        }
        None
    });
}

/// The resident-only functions with no agent behind them, for `sonde plugin check`: a script
/// that calls them compiles the same way.
pub fn register_stubs(engine: &mut Engine) {
    let refuse = || -> Result<(), Box<EvalAltResult>> { Err(runtime("not running in an agent")) };
    for func in ["metric_add", "metric_set", "metric_observe"] {
        engine.register_fn(func, move |_: ImmutableString, _: Map, _: Dynamic| refuse());
    }
    engine.register_fn("metric_inc", move |_: ImmutableString, _: Map| refuse());
    engine.register_fn("emit", move |_: ImmutableString, _: Map| refuse());
    engine.register_fn(
        "emit",
        move |_: ImmutableString, _: ImmutableString, _: ImmutableString, _: Map| refuse(),
    );
}

/// Where a script's `print` goes: the agent's log, at most `PRINTS_PER_SECOND` lines a second.
fn printer(name: &str) -> Printer {
    let name = name.to_string();
    let budget = Mutex::new((Instant::now(), 0u32));
    Arc::new(move |text: &str| {
        let mut b = budget.lock().unwrap_or_else(|e| e.into_inner());
        if b.0.elapsed() >= Duration::from_secs(1) {
            *b = (Instant::now(), 0);
        }
        if b.1 < PRINTS_PER_SECOND {
            b.1 += 1;
            tracing::info!(script = %name, "{}", text.trim_end());
        }
    })
}

/// The probes a script may handle: every probe that has events.
fn probe_names() -> Vec<&'static str> {
    crate::probes::event_probes()
}

/// Compiles a script bundle and checks that its handlers are for probes it subscribes to.
pub fn compile(bundle: &Bundle, extend: impl FnOnce(&mut Engine)) -> Result<Script, BundleError> {
    let origin = bundle
        .dir
        .join(bundle.manifest.file())
        .display()
        .to_string();
    let source = std::str::from_utf8(&bundle.module)
        .map_err(|_| super::ModuleError::NotUtf8(origin.clone()))?;
    let script = Script::compile_with(
        source,
        &origin,
        &probe_names(),
        Limits::default(),
        printer(&bundle.manifest.metadata.name),
        extend,
    )
    .map_err(super::ModuleError::from)?;
    let subscribe = &bundle.manifest.spec.subscribe;
    if let Some(p) = script
        .handlers()
        .probes
        .iter()
        .find(|p| !subscribe.iter().any(|s| s == *p))
    {
        return Err(BundleError::Manifest(format!(
            "spec.subscribe: the script handles {p} (on_{p}) but does not subscribe to it"
        )));
    }
    Ok(script)
}

impl ScriptGuest {
    /// A fresh script: compiled, its top-level statements run.
    fn new(
        host: &Arc<HostContext>,
        info: &Arc<PluginInfo>,
        bundle: &Bundle,
    ) -> Result<Self, BundleError> {
        let shared = Arc::new(Mutex::new(Shared {
            host: Arc::clone(host),
            info: Arc::clone(info),
            series: PluginSeries::new(),
            metrics: HashMap::new(),
            budget: EmitBudget::default(),
        }));
        let deadline = Arc::new(Deadline {
            base: Instant::now(),
            at: AtomicU64::new(u64::MAX),
            fired: AtomicBool::new(false),
        });
        let mut script = compile(bundle, |engine| register(engine, &shared, &deadline))?;
        let registry = lock(&shared).series.registry.clone();
        let timeout = info.manifest.spec.limits.call_timeout;
        arm(&deadline, timeout);
        if let Err(e) = script.start() {
            return Err(BundleError::Init(failure(&deadline, timeout, e).message));
        }
        Ok(ScriptGuest {
            script,
            generation: next_generation(),
            registry,
            deadline,
            timeout,
            handled: 0,
        })
    }

    fn timed(
        &mut self,
        what: &'static str,
        host: &PluginHost,
        info: &PluginInfo,
        f: impl FnOnce(&mut Script) -> Result<(), ScriptError>,
    ) -> Result<(), Failure> {
        arm(&self.deadline, self.timeout);
        let started = Instant::now();
        let r = f(&mut self.script);
        host.host
            .self_metrics
            .call_seconds
            .with_label_values(&[&info.name, what])
            .observe(started.elapsed().as_secs_f64());
        r.map_err(|e| failure(&self.deadline, self.timeout, e))
    }
}

/// Starts the clock of one call.
fn arm(d: &Deadline, timeout: Duration) {
    let at = d.base.elapsed() + timeout;
    d.fired.store(false, Ordering::Relaxed);
    d.at.store(at.as_nanos() as u64, Ordering::Relaxed);
}

/// A script error as a failure of the plugin: its `kind` label and one-line message.
fn failure(d: &Deadline, timeout: Duration, e: ScriptError) -> Failure {
    if d.fired.load(Ordering::Relaxed) {
        return Failure {
            kind: "timeout",
            message: format!("call exceeded spec.limits.callTimeout ({timeout:?}) at {e}"),
        };
    }
    let kind = if e.message.contains("stopped: ") {
        "limit"
    } else {
        "script"
    };
    Failure {
        kind,
        message: e.to_string(),
    }
}

impl Guest for ScriptGuest {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn registry(&self) -> Registry {
        self.registry.clone()
    }

    fn deliver(
        &mut self,
        host: &PluginHost,
        info: &PluginInfo,
        batch: &Batch,
        _symbols: &mut delivery::Symbols,
    ) -> Result<u64, Failure> {
        self.timed("on-events", host, info, |s| s.on_events(batch))?;
        let handled = self.script.stats().events;
        let n = handled - self.handled;
        self.handled = handled;
        Ok(n)
    }

    fn tick(&mut self, host: &PluginHost, info: &PluginInfo, _now_ns: u64) -> Result<(), Failure> {
        self.timed("on-interval", host, info, Script::on_interval)
    }

    fn workload_labels(
        &mut self,
        _host: &PluginHost,
        _info: &PluginInfo,
        _workload: &Workload,
    ) -> Result<Vec<(String, String)>, Failure> {
        Ok(Vec::new())
    }
}

impl PluginHost {
    /// Starts a script bundle, swapping it in for a previous version once it has started.
    pub(crate) fn start_script(
        self: &Arc<Self>,
        bundle: Bundle,
    ) -> Result<Arc<Mutex<super::PluginStatus>>, BundleError> {
        let info = Arc::new(PluginInfo {
            source: Arc::from(format!("script:{}", bundle.manifest.metadata.name)),
            ..PluginInfo::new(&bundle.manifest)
        });
        let guest = ScriptGuest::new(&self.host, &info, &bundle)?;
        let fresh_info = Arc::clone(&info);
        let fresh_bundle = bundle.clone();
        let fresh: Fresh = Box::new(move |host: &PluginHost| {
            ScriptGuest::new(&host.host, &fresh_info, &fresh_bundle)
                .map(|g| Box::new(g) as Box<dyn Guest>)
        });
        self.launch(&bundle, info, Box::new(guest), fresh, None)
    }
}
