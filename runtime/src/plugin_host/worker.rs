//! One plugin's life: its instance (store + bindings), the thread that feeds it event batches
//! and ticks, and what happens when it fails: a fresh instance with backoff, and quarantine
//! after `MAX_FAILURES` failures within `FAILURE_WINDOW`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtx};

use super::bundle::{Bundle, BundleError, PluginInfo};
use super::delivery::{self, Probe};
use super::manifest::Capability;
use super::manifest::{BundleKind, Delivery};
use super::{events, log, metrics, world, HostState, PluginHost, PluginStatus, EPOCH_TICK};
use crate::enrich::Enricher;
use crate::event::Batch;
use crate::topology::Workload;

/// The kinds of `sonde_plugin_errors_total` a running plugin can add to: each starts at 0.
pub(super) const RUNTIME_ERROR_KINDS: [&str; 8] = [
    "trap",
    "timeout",
    "memory",
    "quarantined",
    "limit",
    "not_granted",
    "invalid",
    "cache",
];

const MAX_FAILURES: usize = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_secs(1);

/// Distinguishes a plugin's successive registries, so a stopping worker only removes its own.
static GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// A clock that stands still at the epoch: what a plugin without capability `clock` sees.
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Why a call into a plugin failed; the `kind` label of `sonde_plugin_errors_total`.
#[derive(Debug)]
pub struct Failure {
    pub kind: &'static str,
    pub message: String,
}

impl Failure {
    fn timeout(timeout: Duration) -> Self {
        Failure {
            kind: "timeout",
            message: format!("call exceeded spec.limits.callTimeout ({timeout:?})"),
        }
    }

    fn from_call(e: wasmtime::Error, timeout: Duration) -> Self {
        // The error chain without the wasm backtrace, on one line.
        let message = e
            .chain()
            .map(|c| c.to_string())
            .filter(|c| !c.contains("wasm backtrace"))
            .collect::<Vec<_>>()
            .join(": ")
            .replace('\n', " ");
        let kind = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => return Failure::timeout(timeout),
            _ if message.contains("growing memory")
                || message.contains("memory") && message.contains("limit") =>
            {
                "memory"
            }
            _ => "trap",
        };
        Failure { kind, message }
    }
}

/// A running plugin of either kind (a WebAssembly instance or a script), as its worker
/// drives it. A method that fails leaves the guest poisoned: the worker makes a fresh one.
pub(crate) trait Guest: Send {
    /// Distinguishes successive instances, so a stopping worker only removes its own series.
    fn generation(&self) -> u64;
    /// The guest's own metrics, gathered into /metrics.
    fn registry(&self) -> prometheus::Registry;
    /// Hands over the events of the probes the plugin subscribes to; how many it was handed.
    fn deliver(
        &mut self,
        host: &PluginHost,
        info: &PluginInfo,
        batch: &Batch,
        symbols: &mut delivery::Symbols,
    ) -> Result<u64, Failure>;
    fn tick(&mut self, host: &PluginHost, info: &PluginInfo, now_ns: u64) -> Result<(), Failure>;
    /// Labels for a workload (capability `enrich`).
    fn workload_labels(
        &mut self,
        host: &PluginHost,
        info: &PluginInfo,
        workload: &Workload,
    ) -> Result<Vec<(String, String)>, Failure>;
}

/// Makes a fresh guest of a plugin, for a restart.
pub(crate) type Fresh = Box<dyn Fn(&PluginHost) -> Result<Box<dyn Guest>, BundleError> + Send>;

/// A live instance of a plugin.
pub struct Instance {
    /// Drives the instance's calls: each runs as a future on this runtime, with a deadline.
    rt: tokio::runtime::Runtime,
    store: Store<HostState>,
    bindings: world::Exports,
    timeout: Duration,
    generation: u64,
}

/// A small runtime for one instance's calls; the WASI host functions (timers, pollables) run
/// on it.
fn call_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs one call into a guest to its end or to its deadline, whichever comes first. Guest
/// code that spins is stopped by the epoch deadline (a trap); a call blocked in a host
/// function (a WASI sleep, a pollable that never becomes ready) is abandoned here: its future
/// is dropped, which unwinds the guest's fiber. Either way the instance is poisoned and the
/// worker makes a fresh one.
fn bounded<R>(
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    call: impl std::future::Future<Output = wasmtime::Result<R>>,
) -> Result<R, Failure> {
    // The epoch deadline comes first for guest code (a tick after `timeout`); this one a tick
    // later, for host calls.
    let wall = timeout + 2 * EPOCH_TICK;
    rt.block_on(async { tokio::time::timeout(wall, call).await })
        .map_err(|_| Failure::timeout(timeout))?
        .map_err(|e| Failure::from_call(e, timeout))
}

impl Instance {
    fn call<'a, R, F>(
        &'a mut self,
        what: &'static str,
        metrics: &super::PluginMetrics,
        name: &str,
        f: impl FnOnce(&'a world::Exports, &'a mut Store<HostState>) -> F,
    ) -> Result<R, Failure>
    where
        F: std::future::Future<Output = wasmtime::Result<R>> + 'a,
    {
        self.store.set_epoch_deadline(deadline_ticks(self.timeout));
        let started = Instant::now();
        let timeout = self.timeout;
        let Instance {
            rt,
            store,
            bindings,
            ..
        } = self;
        let r = bounded(rt, timeout, f(bindings, store));
        metrics
            .call_seconds
            .with_label_values(&[name, what])
            .observe(started.elapsed().as_secs_f64());
        r
    }
}

/// The epoch ticks of a call's deadline.
fn deadline_ticks(timeout: Duration) -> u64 {
    timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1
}

impl PluginHost {
    /// A fresh instance of a prepared plugin, initialised with its config.
    fn instantiate(
        &self,
        info: &Arc<PluginInfo>,
        pre: &world::Pre,
    ) -> Result<Instance, BundleError> {
        let m = &info.manifest;
        // No arguments, environment, files, stdio or network; clocks and randomness only
        // when granted.
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !m.grants(Capability::Clock) {
            wasi.wall_clock(Frozen).monotonic_clock(Frozen);
        }
        if !m.grants(Capability::Random) {
            wasi.secure_random(Deterministic::new(vec![0]))
                .insecure_random(Deterministic::new(vec![0]))
                .insecure_random_seed(0);
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            // One budget for all the instance's memories, tables and host objects, and the
            // plugin's enrichment answers.
            limiter: super::budget::Limiter {
                account: super::budget::Account::new(&info.budget),
            },
            budget: super::budget::Account::new(&info.budget),
            plugin: Arc::clone(info),
            host: Arc::clone(&self.host),
            metrics: metrics::PluginSeries::new(),
            events: events::EmitBudget::default(),
            log: log::LogBudget::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let timeout = m.spec.limits.call_timeout;
        store.set_epoch_deadline(deadline_ticks(timeout));
        let rt = call_runtime()
            .map_err(|e| BundleError::Init(format!("cannot make the plugin's runtime: {e}")))?;
        let bindings = bounded(&rt, timeout, pre.instantiate(&mut store))
            .map_err(|f| BundleError::Init(f.message))?;
        let mut instance = Instance {
            rt,
            store,
            bindings,
            timeout,
            generation: next_generation(),
        };
        let config = m.config_json();
        let metrics = &self.host.self_metrics;
        match instance.call("init", metrics, &info.name, |b, s| b.init(s, &config)) {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(reason)) => Err(BundleError::Init(reason.replace('\n', " "))),
            Err(f) => Err(BundleError::Init(format!("{}: {}", f.kind, f.message))),
        }
    }

    /// Loads a bundle and, once its new instance has initialised, swaps it in for the
    /// previous version of the same plugin (which serves until then).
    pub fn start(
        self: &Arc<Self>,
        bundle: Bundle,
    ) -> Result<Arc<Mutex<PluginStatus>>, BundleError> {
        self.check_allowed(&bundle)?;
        let name = bundle.manifest.metadata.name.clone();
        let previous = self.host.memory.held(&name);
        if bundle.manifest.bundle_kind() != Some(BundleKind::Script) {
            self.host
                .memory
                .admit(&name, bundle.manifest.spec.limits.memory.0)?;
        }
        let started = self.start_admitted(bundle);
        if started.is_err() {
            // What the running version held, if any, it holds still.
            match previous {
                Some(b) => {
                    let _ = self.host.memory.admit(&name, b);
                }
                None => self.host.memory.release(&name),
            }
        }
        started
    }

    fn start_admitted(
        self: &Arc<Self>,
        bundle: Bundle,
    ) -> Result<Arc<Mutex<PluginStatus>>, BundleError> {
        if bundle.manifest.bundle_kind() == Some(BundleKind::Script) {
            return self.start_script(bundle);
        }
        let name = bundle.manifest.metadata.name.clone();
        let component = self.compile(&name, &bundle.sha256, &bundle.module);
        let prepared = component
            .and_then(|c| self.prepare(&c))
            .and_then(|pre| pre.check(&bundle.manifest).map(|()| pre));
        let pre = match prepared {
            Ok(pre) => pre,
            Err(e) => {
                // Keep what runs; let go of what failed to compile or fit.
                self.using(&name, self.in_use_sha(&name).as_deref());
                return Err(e);
            }
        };
        let wit = pre.version();
        if wit == world::Version::V0_1 {
            tracing::warn!(plugin = %name, "built for sonde:plugin@0.1.0, which this agent hosts for one more release: rebuild it against @{}", super::wit_version());
        }
        let info = Arc::new(PluginInfo::new(&bundle.manifest));
        let instance = match self.instantiate(&info, &pre) {
            Ok(instance) => instance,
            Err(e) => {
                self.using(&name, self.in_use_sha(&name).as_deref());
                return Err(e);
            }
        };
        let fresh_info = Arc::clone(&info);
        let fresh: Fresh = Box::new(move |host: &PluginHost| {
            host.instantiate(&fresh_info, &pre)
                .map(|i| Box::new(i) as Box<dyn Guest>)
        });
        self.launch(
            &bundle,
            info,
            Box::new(instance),
            fresh,
            Some(wit.to_string()),
        )
    }

    /// Swaps a guest that has initialised in for the previous version of its plugin: its
    /// metrics and its queue replace the old ones', and its thread starts.
    pub(crate) fn launch(
        self: &Arc<Self>,
        bundle: &Bundle,
        info: Arc<PluginInfo>,
        instance: Box<dyn Guest>,
        fresh: Fresh,
        wit: Option<String>,
    ) -> Result<Arc<Mutex<PluginStatus>>, BundleError> {
        let name = info.name.clone();
        let status = Arc::new(Mutex::new(PluginStatus {
            name: name.clone(),
            version: bundle.sha256[..12].to_string(),
            dir: bundle.dir.display().to_string(),
            state: "running".into(),
            subscribe: bundle.manifest.spec.subscribe.clone(),
            capabilities: bundle
                .manifest
                .spec
                .capabilities
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
            wit,
            last_error: None,
            last_refusal: None,
        }));
        self.using(&name, Some(&bundle.sha256));
        // The plugin's counters start at 0, so that a dashboard shows 0, not "no data".
        let m = &self.host.self_metrics;
        for kind in RUNTIME_ERROR_KINDS {
            m.errors.with_label_values(&[&name, kind]);
        }
        for counter in [&m.delivered, &m.emitted, &m.restarts] {
            counter.with_label_values(&[&name]);
        }
        // A new version starts with no refusal of its own.
        self.host
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        // The swap: the new instance's metrics replace the old ones' and its queue replaces
        // the old one's, whose worker ends when its queue closes.
        self.publish_registry(&name, &*instance);
        let m = &self.host.self_metrics;
        let dropped = m.dropped.with_label_values(&[&name]);
        let rx = self.host.probes.fanout.subscribe_counted(
            &consumer(&name),
            bundle.manifest.spec.limits.queue as usize,
            dropped,
            Some(bundle.manifest.spec.subscribe.clone()),
        );
        let enrich = bundle.manifest.grants(Capability::Enrich).then(|| {
            let (enricher, questions) = Enricher::new(&name);
            self.host.probes.enrichers.set(Arc::clone(&enricher));
            (enricher, questions)
        });
        m.up.with_label_values(&[&name]).set(1);
        let host = Arc::clone(self);
        let worker_status = Arc::clone(&status);
        std::thread::Builder::new()
            .name(format!("plugin {name}"))
            .spawn(move || host.run(info, fresh, instance, rx, enrich, worker_status))
            .map_err(|e| BundleError::Init(format!("cannot start the plugin's thread: {e}")))?;
        Ok(status)
    }

    pub(crate) fn publish_registry(&self, name: &str, instance: &dyn Guest) {
        self.host
            .registries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name.to_string(),
                (instance.generation(), instance.registry()),
            );
    }

    /// Stops a plugin (its bundle was removed): its worker ends and its series go.
    pub fn stop(&self, name: &str) {
        self.using(name, None);
        self.host.memory.release(name);
        self.host.probes.fanout.unsubscribe(&consumer(name));
        self.host
            .registries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.host
            .metric_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, owner| owner != name);
        let _ = self.host.self_metrics.up.remove_label_values(&[name]);
    }

    /// The plugin's thread: batches and ticks until its queue closes (replaced, removed) or
    /// it is quarantined. The queue is awaited on a small runtime, but every call into the
    /// plugin happens outside it: WASI's synchronous host functions run their own.
    pub(crate) fn run(
        self: Arc<Self>,
        info: Arc<PluginInfo>,
        fresh: Fresh,
        instance: Box<dyn Guest>,
        rx: tokio::sync::mpsc::Receiver<Batch>,
        enrich: Option<(Arc<Enricher>, tokio::sync::mpsc::Receiver<Workload>)>,
        status: Arc<Mutex<PluginStatus>>,
    ) {
        let name = info.name.clone();
        let generation = instance.generation();
        let (enricher, questions) = match enrich {
            Some((e, q)) => (Some(e), Some(q)),
            None => (None, None),
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.serve(
                &info,
                &fresh,
                instance,
                rx,
                enricher.as_ref().zip(questions),
                &status,
            )
        }));
        if outcome.is_err() {
            // A bug of the host's, not the plugin's: never take the agent down with it.
            self.quarantine(
                &name,
                &status,
                "host error while serving the plugin".into(),
                generation,
            );
        }
        if let Some(e) = &enricher {
            self.host.probes.enrichers.remove(e);
        }
    }

    fn serve(
        &self,
        info: &Arc<PluginInfo>,
        fresh: &Fresh,
        mut instance: Box<dyn Guest>,
        mut rx: tokio::sync::mpsc::Receiver<Batch>,
        mut enrich: Option<(&Arc<Enricher>, tokio::sync::mpsc::Receiver<Workload>)>,
        status: &Mutex<PluginStatus>,
    ) {
        enum Next {
            Batch(Batch),
            Tick,
            Question(Workload),
            Closed,
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(plugin = %info.name, error = %e, "plugin thread cannot start");
                return;
            }
        };
        let name = info.name.clone();
        let m = self.host.self_metrics.clone();
        let mut failures: VecDeque<Instant> = VecDeque::new();
        let mut symbols = delivery::Symbols::default();
        let mut tick = rt.block_on(async {
            let mut t = tokio::time::interval(TICK);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            t
        });
        loop {
            let next = rt.block_on(async {
                let question = async {
                    match enrich.as_mut() {
                        Some((_, q)) => q.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    batch = rx.recv() => batch.map_or(Next::Closed, Next::Batch),
                    _ = tick.tick() => Next::Tick,
                    Some(w) = question => Next::Question(w),
                }
            });
            let result = match next {
                Next::Closed => return,
                Next::Question(workload) => {
                    instance
                        .workload_labels(self, info, &workload)
                        .map(|labels| {
                            if let Some((enricher, _)) = &enrich {
                                self.keep_answer(info, enricher, workload, clean_labels(labels));
                            }
                        })
                }
                Next::Batch(batch) => instance.deliver(self, info, &batch, &mut symbols).map(|n| {
                    if n > 0 {
                        m.delivered.with_label_values(&[&name]).inc_by(n);
                    }
                }),
                Next::Tick => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos() as u64;
                    instance.tick(self, info, now)
                }
            };
            let Err(failure) = result else { continue };
            // The instance is poisoned: count, then restart or quarantine.
            m.errors.with_label_values(&[&name, failure.kind]).inc();
            tracing::warn!(plugin = %name, kind = failure.kind, error = %failure.message, "plugin failed");
            let now = Instant::now();
            failures.push_back(now);
            while failures
                .front()
                .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
            {
                failures.pop_front();
            }
            let error = format!("{}: {}", failure.kind, failure.message);
            let generation = instance.generation();
            // What the poisoned instance held of the plugin's budget is free before the
            // next one is made.
            drop(instance);
            if failures.len() >= MAX_FAILURES {
                self.quarantine(&name, status, error, generation);
                return;
            }
            set_status(status, "restarting", Some(error));
            m.up.with_label_values(&[&name]).set(0);
            let mut backoff = FIRST_BACKOFF * 2u32.pow(failures.len() as u32 - 1);
            loop {
                std::thread::sleep(backoff.min(MAX_BACKOFF));
                match fresh(self) {
                    Ok(fresh) => {
                        instance = fresh;
                        if self.registry_is_current(&name) {
                            self.publish_registry(&name, &*instance);
                        }
                        m.restarts.with_label_values(&[&name]).inc();
                        m.up.with_label_values(&[&name]).set(1);
                        set_status(status, "running", None);
                        tracing::info!(plugin = %name, "plugin restarted");
                        break;
                    }
                    Err(e) => {
                        m.errors.with_label_values(&[&name, e.kind()]).inc();
                        failures.push_back(Instant::now());
                        if failures.len() >= MAX_FAILURES {
                            self.quarantine(&name, status, e.to_string(), generation);
                            return;
                        }
                        backoff *= 2;
                    }
                }
            }
        }
    }

    /// Keeps an enrichment answer, charged to the plugin's budget. When the budget is spent,
    /// the answers for pods that are gone make room; if that is not enough, the answer is
    /// refused (counted as a `limit` refusal) and the workload's events go without labels.
    fn keep_answer(
        &self,
        info: &PluginInfo,
        enricher: &Enricher,
        workload: Workload,
        labels: Vec<(String, String)>,
    ) {
        let cost = crate::enrich::answer_cost(&workload, &labels);
        let mut charged = info.budget.charge(cost);
        if charged.is_err() {
            if let Some(keep) = self.host.probes.topology.workloads() {
                info.budget.release(enricher.forget_all_but(&keep));
                charged = info.budget.charge(cost);
            }
        }
        match charged {
            Ok(()) => {
                if let Some(old) = enricher.answer(workload.clone(), labels) {
                    info.budget
                        .release(crate::enrich::answer_cost(&workload, &old));
                }
            }
            Err(why) => self.host.refused(
                &info.name,
                &super::Refusal::Limit(format!(
                    "labels for {}/{} not kept: {why}",
                    workload.namespace, workload.pod
                )),
            ),
        }
    }

    /// Whether this plugin's registry is still published (it was not removed meanwhile).
    fn registry_is_current(&self, name: &str) -> bool {
        self.host
            .registries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    fn quarantine(&self, name: &str, status: &Mutex<PluginStatus>, error: String, generation: u64) {
        tracing::error!(plugin = %name, error = %error, "plugin quarantined after repeated failures");
        let m = &self.host.self_metrics;
        m.errors.with_label_values(&[name, "quarantined"]).inc();
        m.up.with_label_values(&[name]).set(0);
        set_status(status, "quarantined", Some(error));
        let mut registries = self
            .host
            .registries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if registries.get(name).is_some_and(|(g, _)| *g == generation) {
            registries.remove(name);
        }
    }
}

impl Guest for Instance {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn registry(&self) -> prometheus::Registry {
        self.store.data().metrics.registry.clone()
    }

    /// The events of the probes the plugin subscribes to, typed or packed as its manifest
    /// says, at most `limits.batch` per call.
    fn deliver(
        &mut self,
        host: &PluginHost,
        info: &PluginInfo,
        batch: &Batch,
        symbols: &mut delivery::Symbols,
    ) -> Result<u64, Failure> {
        let spec = &info.manifest.spec;
        let m = &host.host.self_metrics;
        let name = info.name.as_str();
        let packed = spec.delivery == Delivery::Packed;
        let mut n = 0u64;
        for &probe in Probe::ALL {
            if !spec.subscribe.iter().any(|s| s == probe.name()) {
                continue;
            }
            let chunk = spec.limits.batch as usize;
            for part in delivery::batches(batch, probe, packed, chunk, symbols) {
                n += part.len() as u64;
                let call = if packed { "on-packed" } else { probe.handler() };
                self.call(call, m, name, move |g, s| g.deliver(s, part))?;
            }
        }
        Ok(n)
    }

    fn tick(&mut self, host: &PluginHost, info: &PluginInfo, now_ns: u64) -> Result<(), Failure> {
        let m = &host.host.self_metrics;
        self.call("tick", m, &info.name, |b, s| b.tick(s, now_ns))
    }

    fn workload_labels(
        &mut self,
        host: &PluginHost,
        info: &PluginInfo,
        workload: &Workload,
    ) -> Result<Vec<(String, String)>, Failure> {
        let asked = super::topology::to_wit(workload.clone());
        let m = &host.host.self_metrics;
        self.call("workload-labels", m, &info.name, |b, s| {
            b.workload_labels(s, &asked)
        })
    }
}

/// At most 32 labels, with non-empty keys and values of at most 256 bytes.
fn clean_labels(labels: Vec<(String, String)>) -> Vec<(String, String)> {
    labels
        .into_iter()
        .filter(|(k, v)| !k.is_empty() && k.len() <= 256 && v.len() <= 256)
        .take(32)
        .collect()
}

/// The fan-out consumer name of a plugin.
fn consumer(name: &str) -> String {
    format!("plugin:{name}")
}

fn set_status(status: &Mutex<PluginStatus>, state: &str, error: Option<String>) {
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.state = state.to_string();
    if error.is_some() {
        s.last_error = error;
    }
}
