//! The plugin host: runs bundles (`plugin.yaml` + a WebAssembly component built against
//! `sonde:plugin` in `wit/`; `world` says which versions and how their exports are found)
//! sandboxed in wasmtime, feeds them the probes' events in batches, and gives them the host
//! interfaces their manifest grants, each implemented in its own module here (`log`,
//! `metrics`, `events`, `topology`, `maps`, `control`).
//!
//! Each plugin runs on its own thread with its own store: memory is capped by `StoreLimits`,
//! every call by a deadline: the epoch stops guest code that runs too long, and since calls
//! are futures (async exports, WASI's async host functions) a call blocked in a host function
//! (a sleep, a poll) is dropped at the same deadline. A call that traps, times out or runs out of memory poisons
//! the instance: the store is dropped and a fresh one is made from the plugin's `InstancePre`,
//! with backoff; repeated failures quarantine the plugin. Nothing a plugin does stops the
//! agent or the other plugins.

mod budget;
mod bundle;
mod cache;
pub mod configmap;
mod control;
pub mod delivery;
mod events;
mod log;
pub mod manifest;
mod maps;
mod metrics;
mod script;
mod topology;
mod watch;
mod worker;
pub mod world;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use budget::Total as MemoryTotal;
pub use bundle::{Bundle, BundleError};
pub use watch::PluginDirs;

use crate::probes::{Context, Probes};

// Exports are called asynchronously, so that a call blocked in a host function (a WASI sleep
// or poll) can be abandoned at its deadline: see `worker::Instance::call`.
wasmtime::component::bindgen!({
    world: "full",
    // The package alone: wit/deps/ holds the frozen earlier versions (bound in `world`).
    path: "../wit/plugin.wit",
    exports: { default: async },
    // Every refusal a host function returns passes through `convert_error` below, which
    // counts it (`sonde_plugin_errors_total{kind}`) and keeps the last for /api/v1/plugins.
    imports: { default: trappable },
    trappable_error_type: {
        "sonde:plugin/types.error" => Refusal,
    },
});

use self::sonde::plugin::types::Error as WitError;

/// Why a host function refused a plugin's call: the WIT `error`, as the host's functions
/// return it before `convert_error` counts it and hands it to the plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The manifest does not grant the capability the call needs.
    NotGranted(String),
    /// The arguments are wrong.
    Invalid(String),
    /// A per-plugin limit is reached.
    Limit(String),
}

impl Refusal {
    /// The `kind` label it is counted under.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NotGranted(_) => "not_granted",
            Refusal::Invalid(_) => "invalid",
            Refusal::Limit(_) => "limit",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Refusal::NotGranted(r) | Refusal::Invalid(r) | Refusal::Limit(r) => r,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.reason())
    }
}

/// How often the engine's epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What plugins share with the agent.
pub struct HostContext {
    pub probes: Arc<Context>,
    /// The running probes, for `maps` and `control`.
    pub probe_set: Arc<Mutex<Probes>>,
    pub self_metrics: PluginMetrics,
    /// Metric names taken, by plugin, so that two plugins cannot export the same family.
    pub metric_names: Mutex<HashMap<String, String>>,
    /// Each running plugin's registry (with the generation of the instance that made it),
    /// gathered into /metrics.
    pub registries: Mutex<HashMap<String, (u64, Registry)>>,
    /// The last host call each plugin had refused, for /api/v1/plugins.
    pub refusals: Mutex<HashMap<String, String>>,
    /// All plugins' memory together, against `plugins.limits.totalMemory`.
    pub memory: Arc<budget::Total>,
    /// The agent's own metric names, as last read (see `is_agent_metric`).
    pub agent_names: Mutex<Option<(std::time::Instant, std::collections::HashSet<String>)>>,
}

/// The host's own series about plugins.
#[derive(Clone)]
pub struct PluginMetrics {
    pub up: IntGaugeVec,
    pub errors: IntCounterVec,
    pub delivered: IntCounterVec,
    pub dropped: IntCounterVec,
    pub emitted: IntCounterVec,
    pub restarts: IntCounterVec,
    pub call_seconds: HistogramVec,
}

impl PluginMetrics {
    pub fn register(r: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let up = IntGaugeVec::new(
            Opts::new(
                "sonde_plugin_up",
                "1 while the plugin runs, 0 when restarting or quarantined.",
            ),
            &["plugin"],
        )
        .expect("valid metric");
        r.register(Box::new(up.clone())).expect("registered once");
        let call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sonde_plugin_call_duration_seconds",
                "Time spent in one call into a plugin.",
            )
            .buckets(vec![0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0]),
            &["plugin", "call"],
        )
        .expect("valid metric");
        r.register(Box::new(call_seconds.clone()))
            .expect("registered once");
        PluginMetrics {
            up,
            errors: counter(
                "sonde_plugin_errors_total",
                "Plugin failures by kind: manifest, module, checksum, world, init, trap, timeout, memory, cache, quarantined.",
                &["plugin", "kind"],
            ),
            delivered: counter(
                "sonde_plugin_events_delivered_total",
                "Events handed to the plugin.",
                &["plugin"],
            ),
            dropped: counter(
                "sonde_plugin_events_dropped_total",
                "Events the plugin lost: its queue was full, or it was restarting.",
                &["plugin"],
            ),
            emitted: counter(
                "sonde_plugin_events_emitted_total",
                "Events the plugin emitted to the sinks.",
                &["plugin"],
            ),
            restarts: counter(
                "sonde_plugin_restarts_total",
                "Times the plugin was restarted from a fresh instance after a failure.",
                &["plugin"],
            ),
            call_seconds,
        }
    }
}

/// Everything one plugin instance's store holds.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Charges linear memories and tables to the plugin's budget as they grow.
    limiter: budget::Limiter,
    /// The same budget, for the host objects the instance creates.
    budget: budget::Account,
    plugin: Arc<bundle::PluginInfo>,
    host: Arc<HostContext>,
    metrics: metrics::PluginSeries,
    events: events::EmitBudget,
    log: log::LogBudget,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl sonde::plugin::types::Host for HostState {
    fn convert_error(&mut self, refusal: Refusal) -> wasmtime::Result<WitError> {
        self.host.refused(&self.plugin.name, &refusal);
        Ok(match refusal {
            Refusal::NotGranted(r) => WitError::NotGranted(r),
            Refusal::Invalid(r) => WitError::Invalid(r),
            Refusal::Limit(r) => WitError::Limit(r),
        })
    }
}

impl HostState {
    /// Refuses a call unless the manifest grants `c`.
    fn require(&self, c: manifest::Capability) -> Result<(), Refusal> {
        if self.plugin.manifest.grants(c) {
            Ok(())
        } else {
            Err(Refusal::NotGranted(format!(
                "capability {} is not in spec.capabilities of plugin {}",
                c.as_str(),
                self.plugin.name
            )))
        }
    }
}

/// The wasmtime engine and linker every plugin shares, and compiled components by content.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    /// Compiled components of the running plugins, by module hash (a bundle swapped for one
    /// with the same module, a new config say, is not compiled again).
    compiled: Mutex<HashMap<String, Component>>,
    /// The module hash each running plugin uses, to let go of components nobody runs.
    in_use: Mutex<HashMap<String, String>>,
    /// Where compiled components are kept across restarts (`plugins.cacheDir`), if anywhere.
    cache: Option<cache::Cache>,
    compiler: Compiler,
    limits: PluginLimits,
    /// `plugins.allowedCapabilities`.
    allowed: Vec<manifest::Capability>,
    pub host: Arc<HostContext>,
}

/// Where components are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// In this process.
    InProcess,
    /// In a child process, `<this sonde binary> plugin compile` with the module on stdin and
    /// the compiled component on stdout: compiling a large component (Python, JavaScript)
    /// peaks at hundreds of MiB, which the child returns to the system when it exits. The
    /// child runs under `plugins.limits.compileMemory` (its address space) and
    /// `compileTimeout`; one that fails in any way is a refused bundle, never a reason to
    /// compile in the agent.
    Child(PathBuf),
}

/// A plugin as `/api/v1/plugins` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    /// The module's SHA-256, short.
    pub version: String,
    pub dir: String,
    /// `loading` (a new bundle being compiled and initialised), `running`, `restarting`,
    /// `quarantined`, or `refused` (a bundle that never loaded).
    pub state: String,
    pub subscribe: Vec<String>,
    pub capabilities: Vec<String>,
    /// The `sonde:plugin` version the component was built for (none for scripts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The last host call refused to it (`limit: ...`, `not_granted: ...`, `invalid: ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refusal: Option<String>,
}

impl PluginHost {
    /// An engine with epoch interruption and a linker with the host interfaces and a WASI
    /// whose every door (files, network, env, clocks, randomness) is shut unless granted.
    pub fn new(
        host: Arc<HostContext>,
        config: &PluginsConfig,
        compiler: Compiler,
    ) -> anyhow::Result<Arc<Self>> {
        let engine = Self::engine()?;
        let cache = open_cache(&config.cache_dir, &engine);
        let linker = linker(&engine)?;
        let engine_for_epoch = engine.clone();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                engine_for_epoch.increment_epoch();
            })?;
        Ok(Arc::new(PluginHost {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            in_use: Mutex::new(HashMap::new()),
            cache,
            compiler,
            limits: config.limits.clone(),
            allowed: config.allowed_capabilities.clone(),
            host,
        }))
    }

    fn engine() -> anyhow::Result<Engine> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        Ok(Engine::new(&config)?)
    }

    /// Compiles a component, or takes it from the components already compiled or the cache.
    fn compile(&self, plugin: &str, sha256: &str, bytes: &[u8]) -> Result<Component, BundleError> {
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
        {
            return Ok(c.clone());
        }
        let refused = |why: String| {
            tracing::warn!(%plugin, "{why}; compiling again");
            self.host
                .self_metrics
                .errors
                .with_label_values(&[plugin, "cache"])
                .inc();
        };
        let component = compile_through(
            &self.engine,
            self.cache.as_ref(),
            sha256,
            bytes,
            refused,
            |bytes| match &self.compiler {
                Compiler::Child(exe) => run_compiler(exe, bytes, &self.limits),
                Compiler::InProcess => precompile(&self.engine, bytes),
            },
        )?;
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha256.to_string(), component.clone());
        Ok(component)
    }

    /// Records which module a plugin runs (`None`: it stopped) and lets go of the compiled
    /// components no running plugin uses, returning their memory to the system: compiling a
    /// large component (Python, JavaScript) leaves hundreds of MiB of freed heap behind.
    pub(crate) fn using(&self, plugin: &str, sha256: Option<&str>) {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        match sha256 {
            Some(sha) => in_use.insert(plugin.to_string(), sha.to_string()),
            None => in_use.remove(plugin),
        };
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|sha, _| in_use.values().any(|u| u == sha));
        drop(in_use);
        crate::memory::release_freed_memory();
    }

    fn in_use_sha(&self, plugin: &str) -> Option<String> {
        self.in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .cloned()
    }

    /// Refuses a bundle that asks for a capability the operator does not allow, or for more
    /// memory than the operator's ceiling.
    fn check_allowed(&self, bundle: &Bundle) -> Result<(), BundleError> {
        let memory = bundle.manifest.spec.limits.memory.0;
        if memory > self.limits.memory.0 {
            return Err(BundleError::Manifest(format!(
                "spec.limits.memory: {} MiB is over this agent's ceiling (plugins.limits.memory: {} MiB)",
                memory >> 20,
                self.limits.memory.0 >> 20
            )));
        }
        let asked = &bundle.manifest.spec.capabilities;
        match asked.iter().find(|c| !self.allowed.contains(c)) {
            None => Ok(()),
            Some(c) => Err(BundleError::Manifest(format!(
                "spec.capabilities: {} is not allowed on this agent (plugins.allowedCapabilities: [{}])",
                c.as_str(),
                self.allowed
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Checks that a component fits the world: its imports are all provided by the host and
    /// its exports are the world's.
    fn prepare(&self, component: &Component) -> Result<world::Pre, BundleError> {
        prepare(&self.linker, &self.engine, component)
    }
}

impl HostContext {
    /// What the plugin host shares with the probes of `probes` (their context `ctx`), its
    /// series registered beside the agent's, all plugins' memory capped at `total_memory`
    /// bytes: as the agent and the benches make it.
    pub fn new(ctx: Arc<Context>, probes: Arc<Mutex<Probes>>, total_memory: u64) -> Arc<Self> {
        let self_metrics = PluginMetrics::register(&ctx.metrics.registry);
        Arc::new(HostContext {
            probes: ctx,
            probe_set: probes,
            self_metrics,
            metric_names: Mutex::new(HashMap::new()),
            registries: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            agent_names: Mutex::new(None),
            memory: MemoryTotal::new(total_memory),
        })
    }

    /// Counts a host call refused to a plugin (or a script) and keeps it as its last.
    pub(crate) fn refused(&self, plugin: &str, refusal: &Refusal) {
        self.self_metrics
            .errors
            .with_label_values(&[plugin, refusal.kind()])
            .inc();
        let mut last = refusal.to_string();
        last.truncate(last.floor_char_boundary(512));
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(plugin.to_string(), last);
    }

    /// Whether `name` is one of the agent's own metrics. The names are read from the
    /// agent's registry at most every 10 s, not on every registration: a plugin registering
    /// thousands of families does not gather the whole registry thousands of times.
    pub(crate) fn is_agent_metric(&self, name: &str) -> bool {
        let mut cached = self.agent_names.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(10));
        if !fresh {
            let names = self
                .probes
                .metrics
                .registry
                .gather()
                .iter()
                .map(|f| f.name().to_string())
                .collect();
            *cached = Some((std::time::Instant::now(), names));
        }
        cached
            .as_ref()
            .is_some_and(|(_, names)| names.contains(name))
    }

    /// The last refused host call of a plugin.
    pub fn last_refusal(&self, plugin: &str) -> Option<String> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .cloned()
    }

    /// The metric families of every running plugin, for /metrics.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let registries = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        let mut families: Vec<_> = registries.values().flat_map(|(_, r)| r.gather()).collect();
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }
}

/// The linker every plugin is instantiated through: WASI (its doors shut by each instance's
/// context) and the host interfaces.
fn linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Full::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    world::v0_1::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Checks that a component was built for a version this host binds and fits it: its imports
/// are all provided by the host, and its exports are found (`world::Pre::check` then holds
/// them against the manifest).
fn prepare(
    linker: &Linker<HostState>,
    engine: &Engine,
    component: &Component,
) -> Result<world::Pre, BundleError> {
    let version = world::version_of(component, engine)?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| BundleError::World(one_line(&e)))?;
    world::prepare(pre, version)
}

/// Why a bundle's module or script cannot be used: what reading, checking or compiling it
/// found (`BundleError::Module`, kind `module`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModuleError {
    #[error("not a valid component: the file is not WebAssembly (it does not start with \\0asm)")]
    NotWasm,
    #[error("not a valid component: shorter than a WebAssembly header")]
    Short,
    #[error(
        "not a valid component: a core WebAssembly module (build for wasm32-wasip2, or wrap it \
         with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("not a valid component: a WebAssembly version or layer this host does not know")]
    UnknownLayer,
    /// The compiler's reason, on one line.
    #[error("not a valid component: {0}")]
    Invalid(String),
    #[error("cannot make the plugin engine: {0}")]
    Engine(String),
    #[error("cannot load the compiled component: {0}")]
    Load(String),
    #[error("cannot start the compiler {exe}: {source}")]
    CompilerStart {
        exe: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("waiting for the compiler: {0}")]
    CompilerWait(#[source] Arc<std::io::Error>),
    #[error("compiling took longer than plugins.limits.compileTimeout ({0:?})")]
    CompileTimeout(Duration),
    #[error("compiling needed more than plugins.limits.compileMemory ({0} MiB of address space)")]
    CompileMemory(u64),
    /// The child compiler's own verdict on the module (its last line, which is one of these
    /// errors as it printed it).
    #[error("{0}")]
    Refused(String),
    #[error("the compiler was killed by signal {signal}{}", then_said(last))]
    CompilerKilled { signal: i32, last: Option<String> },
    #[error("the compiler {exe} failed (exit {code}){}", then_said(last))]
    CompilerFailed {
        exe: String,
        code: i32,
        last: Option<String>,
    },
    #[error("cannot read the compiler's output")]
    CompilerOutput,
    #[error("cannot write the component to {to}: {source}")]
    Write {
        to: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The file the manifest names (`spec.module`, `spec.source`) cannot be read.
    #[error("{path} ({field}): {why}")]
    File {
        path: String,
        field: &'static str,
        #[source]
        why: bundle::FileError,
    },
    #[error("{0}: not UTF-8 text")]
    NotUtf8(String),
    /// A script that does not compile (the script's own error, with its line).
    #[error(transparent)]
    Script(#[from] crate::script::ScriptError),
    #[error("{dir}: as a ConfigMap: {why}")]
    ConfigMap { dir: String, why: String },
    #[error(
        "{dir}: as a ConfigMap this bundle is {mib:.1} MiB, over Kubernetes' 1 MiB limit: ship \
         the module in an image volume or on a hostPath and point --plugin-dir at it"
    )]
    ConfigMapTooLarge { dir: String, mib: f64 },
}

/// `: <line>` after a compiler failure, for the last line the compiler printed, if any.
fn then_said(last: &Option<String>) -> String {
    last.as_deref()
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

/// Compiles a component in this process.
fn precompile(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>, ModuleError> {
    engine
        .precompile_component(bytes)
        .map_err(|e| ModuleError::Invalid(one_line(&e)))
}

/// A component from the cache, or compiled by `compile` (after its header is checked) and
/// kept there; `refused` hears why a cached file was not taken, if one was not.
fn compile_through(
    engine: &Engine,
    cache: Option<&cache::Cache>,
    sha256: &str,
    bytes: &[u8],
    refused: impl FnOnce(String),
    compile: impl FnOnce(&[u8]) -> Result<Vec<u8>, ModuleError>,
) -> Result<Component, BundleError> {
    match cache.map(|c| c.load(sha256, engine)) {
        Some(cache::Lookup::Hit(c)) => return Ok(c),
        Some(cache::Lookup::Bad(why)) => refused(why),
        Some(cache::Lookup::Miss) | None => {}
    }
    component_header(bytes)?;
    let compiled = compile(bytes)?;
    if let Some(cache) = cache {
        if let Err(e) = cache.store(sha256, &compiled) {
            tracing::warn!(error = %e, "cannot cache the compiled component");
        }
    }
    // SAFETY: compiled just now by this binary (in process, or its own `plugin compile` in a
    // child) for this engine's configuration; wasmtime checks the compatibility again.
    let component = unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|e| ModuleError::Load(one_line(&e)))?;
    Ok(component)
}

/// Opens the compile cache of `plugins.cacheDir` (empty: none); one that cannot be used is
/// logged and the agent compiles without it.
fn open_cache(dir: &str, engine: &Engine) -> Option<cache::Cache> {
    if dir.is_empty() {
        return None;
    }
    match cache::Cache::open(Path::new(dir), engine) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!("{e}; compiling plugins without a cache");
            None
        }
    }
}

/// Runs `exe plugin compile` with the module on stdin and returns what it writes on stdout,
/// the compiled component. The child's address space is capped at `limits.compileMemory`
/// and its time at `limits.compileTimeout`; a child that fails in any way (refuses the
/// module, runs out of memory, is killed, cannot start) gives the one-line reason.
fn run_compiler(exe: &Path, module: &[u8], limits: &PluginLimits) -> Result<Vec<u8>, ModuleError> {
    use std::io::{Read, Write};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, Stdio};
    let mut command = Command::new(exe);
    command
        .args(["plugin", "compile"])
        // Two malloc arenas, not eight a core: each reserves 64 MiB of address space, which
        // the cap counts.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let memory = limits.compile_memory.0;
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let cap = libc::rlimit {
                rlim_cur: memory as libc::rlim_t,
                rlim_max: memory as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| ModuleError::CompilerStart {
        exe: exe.display().to_string(),
        source: Arc::new(e),
    })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Feed and drain from threads: a large module fills the pipe before the child reads it
    // all, and its output and messages must not block it either.
    let module = module.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&module));
    let output = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).map(|_| bytes)
    });
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limits.compile_timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ModuleError::CompileTimeout(limits.compile_timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(ModuleError::CompilerWait(Arc::new(e))),
        }
    };
    let _ = feeder.join();
    let compiled = output.join();
    let text = reader.join().unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("sonde: ").to_string());
    let out_of_memory = text.contains("memory allocation of");
    match (status.code(), status.signal()) {
        (Some(0), _) => match compiled {
            Ok(Ok(bytes)) => Ok(bytes),
            _ => Err(ModuleError::CompilerOutput),
        },
        // The child's own verdict on the module.
        (Some(1), _) if last.is_some() && !out_of_memory => {
            Err(ModuleError::Refused(last.unwrap_or_default()))
        }
        _ if out_of_memory => Err(ModuleError::CompileMemory(memory >> 20)),
        (_, Some(signal)) => Err(ModuleError::CompilerKilled { signal, last }),
        (code, _) => Err(ModuleError::CompilerFailed {
            exe: exe.display().to_string(),
            code: code.unwrap_or(-1),
            last,
        }),
    }
}

/// `sonde plugin compile`: compiles the component `module` for this host's engine and
/// writes it to `out` (whole, then renamed into place) or, without one, to stdout. Run by
/// the agent in a child process.
pub fn compile_to(module: &[u8], out: Option<&Path>) -> Result<(), ModuleError> {
    use std::io::Write;
    let engine = PluginHost::engine().map_err(|e| ModuleError::Engine(format!("{e:#}")))?;
    let compiled = precompile(&engine, module)?;
    let Some(out) = out else {
        let mut stdout = std::io::stdout().lock();
        return stdout
            .write_all(&compiled)
            .and_then(|()| stdout.flush())
            .map_err(|e| ModuleError::Write {
                to: "stdout".into(),
                source: Arc::new(e),
            });
    };
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, compiled)
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ModuleError::Write {
                to: out.display().to_string(),
                source: Arc::new(e),
            }
        })
}

/// Validates a bundle without an agent: `sonde plugin check DIR`. A component is compiled
/// as the agent would, through the same cache (`cache_dir`, the agent's `plugins.cacheDir`)
/// when this user may use it: a bundle checked on the node is not compiled again when the
/// agent loads it.
pub fn check_bundle(dir: &Path, cache_dir: &str) -> Result<Bundle, BundleError> {
    let bundle = Bundle::read(dir)?;
    if bundle.manifest.bundle_kind() == Some(manifest::BundleKind::Script) {
        // Compiled as the agent would, with its functions (which only a running agent
        // carries out): syntax, handlers and subscriptions.
        script::compile(&bundle, script::register_stubs)?;
        return Ok(bundle);
    }
    let engine = PluginHost::engine().map_err(|e| ModuleError::Engine(format!("{e:#}")))?;
    let cache = if cache_dir.is_empty() {
        None
    } else {
        // Not this user's to use (another owner): checked without it.
        cache::Cache::open(Path::new(cache_dir), &engine).ok()
    };
    let component = compile_through(
        &engine,
        cache.as_ref(),
        &bundle.sha256,
        &bundle.module,
        |_| {},
        |bytes| precompile(&engine, bytes),
    )?;
    let linker = linker(&engine).map_err(|e| BundleError::World(e.to_string()))?;
    prepare(&linker, &engine, &component)?.check(&bundle.manifest)?;
    Ok(bundle)
}

/// The version of `sonde:plugin` this agent hosts: the package line of `wit/plugin.wit`.
pub fn wit_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        include_str!("../../../wit/plugin.wit")
            .lines()
            .find_map(|l| l.trim().strip_prefix("package sonde:plugin@"))
            .map(|v| v.trim_end_matches(';').to_string())
            .expect("wit/plugin.wit declares package sonde:plugin@VERSION")
    })
}

/// An error chain on one line, without the bytes of the file it is about (wasmparser shows
/// the first bytes of a file whose header is wrong, `actual=[0x72, 0x6f, ...]`).
fn one_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}").replace('\n', " ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("actual=[") {
        out.push_str(&rest[..at]);
        out.push_str("actual=[...]");
        rest = rest[at..].find(']').map_or("", |end| &rest[at + end + 1..]);
    }
    out.push_str(rest);
    out
}

/// Refuses what is not a component before the compiler sees it, saying what it is instead
/// and never quoting it.
fn component_header(bytes: &[u8]) -> Result<(), ModuleError> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    const CORE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    match (bytes.get(..4), bytes.get(4..8)) {
        (Some(m), _) if m != MAGIC => Err(ModuleError::NotWasm),
        (None, _) | (_, None) => Err(ModuleError::Short),
        (_, Some(v)) if v == CORE => Err(ModuleError::CoreModule),
        (_, Some(v)) if v != COMPONENT => Err(ModuleError::UnknownLayer),
        _ => Ok(()),
    }
}

/// `plugins:` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename_all = "camelCase")]
pub struct PluginsConfig {
    /// Directories of bundles, watched while the agent runs (`--plugin-dir` adds more).
    pub dirs: Vec<String>,
    /// Where compiled components are kept, so that a restart does not compile them again
    /// (seconds for Python and JavaScript plugins); empty for no cache. See `cache.rs` for
    /// what the agent checks before it uses a file there.
    pub cache_dir: String,
    /// A Kubernetes namespace whose ConfigMaps labelled `sonde.dev/bundle` are bundles,
    /// followed through the API; empty = none.
    pub config_map_namespace: String,
    /// The capabilities bundles may be granted at all; a bundle asking for another is
    /// refused. Default: every one but `control` (which changes what the probes do).
    pub allowed_capabilities: Vec<manifest::Capability>,
    pub limits: PluginLimits,
}

/// Where the agent keeps compiled components unless told otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/sonde";

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dirs: Vec::new(),
            cache_dir: DEFAULT_CACHE_DIR.into(),
            config_map_namespace: String::new(),
            allowed_capabilities: manifest::Capability::ALL
                .into_iter()
                .filter(|c| *c != manifest::Capability::Control)
                .collect(),
            limits: PluginLimits::default(),
        }
    }
}

/// `plugins.limits`: what the operator allows every plugin, whatever its manifest asks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename_all = "camelCase")]
pub struct PluginLimits {
    /// The most memory a manifest may ask for (`spec.limits.memory`): its linear memories,
    /// tables, host objects and enrichment answers together.
    pub memory: crate::units::ByteSize,
    /// All plugins' memory together.
    pub total_memory: crate::units::ByteSize,
    /// The address space of a compiler child (compiling the Python or the JavaScript
    /// plugin, 18 and 12 MiB of WebAssembly, fits in 500 MiB): one that needs more is refused.
    pub compile_memory: crate::units::ByteSize,
    /// How long a compiler child may take: less than the liveness probe's budget.
    #[serde(deserialize_with = "crate::units::duration")]
    pub compile_timeout: Duration,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory: crate::units::ByteSize(256 << 20),
            total_memory: crate::units::ByteSize(512 << 20),
            compile_memory: crate::units::ByteSize(1 << 30),
            compile_timeout: Duration::from_secs(60),
        }
    }
}

/// The bundle directories: the config's, then the command line's.
pub fn dirs_from(config: &PluginsConfig, cli: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = config.dirs.iter().map(PathBuf::from).collect();
    for d in cli {
        if !dirs.contains(d) {
            dirs.push(d.clone());
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("compiler.sh");
        std::fs::write(&path, format!("#!/bin/sh\ncat >/dev/null\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn child_compiler_verdicts() {
        let dir = std::env::temp_dir().join(format!("sonde-compiler-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let limits = PluginLimits::default();
        // A module the compiler refuses: its one-line reason, without the `sonde: ` prefix.
        let refuses = script(
            &dir,
            "echo 'sonde: not a valid component: bad magic' >&2; exit 1",
        );
        assert_eq!(
            run_compiler(&refuses, &[0u8; 300_000], &limits)
                .unwrap_err()
                .to_string(),
            "not a valid component: bad magic"
        );
        // A compiler that is killed, cannot start, runs out of memory or of time: each a
        // refusal with its reason, never a compile in the agent.
        let killed = script(&dir, "kill -9 $$");
        assert_eq!(
            run_compiler(&killed, b"x", &limits)
                .unwrap_err()
                .to_string(),
            "the compiler was killed by signal 9"
        );
        let missing = dir.join("no-such-binary");
        let e = run_compiler(&missing, b"x", &limits)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot start the compiler"), "{e}");
        let oom = script(
            &dir,
            "echo 'memory allocation of 1048576 bytes failed' >&2; kill -6 $$",
        );
        let e = run_compiler(&oom, b"x", &limits).unwrap_err().to_string();
        assert!(e.contains("plugins.limits.compileMemory (1024 MiB"), "{e}");
        let slow = script(&dir, "sleep 5");
        let quick = PluginLimits {
            compile_timeout: Duration::from_millis(200),
            ..PluginLimits::default()
        };
        let e = run_compiler(&slow, b"x", &quick).unwrap_err().to_string();
        assert!(e.contains("compileTimeout (200ms)"), "{e}");
        // The address-space cap is the child's: a shell under 64 MiB cannot map 256 MiB.
        let capped = PluginLimits {
            compile_memory: crate::units::ByteSize(64 << 20),
            ..PluginLimits::default()
        };
        let mapper = script(&dir, "[ \"$(ulimit -v)\" = 65536 ] && printf capped");
        assert_eq!(run_compiler(&mapper, b"x", &capped).unwrap(), b"capped");
        let works = script(&dir, "printf compiled");
        assert_eq!(run_compiler(&works, b"x", &limits).unwrap(), b"compiled");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn what_is_not_a_component_is_named_not_quoted() {
        let secret = b"root:$6$secret:19000:0:99999:7:::";
        let e = component_header(secret).unwrap_err().to_string();
        assert!(e.contains("not WebAssembly") && !e.contains("root"), "{e}");
        assert!(component_header(b"\0asm\x01\0\0\0")
            .unwrap_err()
            .to_string()
            .contains("core"));
        assert!(component_header(b"\0as")
            .unwrap_err()
            .to_string()
            .contains("shorter"));
        assert!(component_header(b"\0asm\x0d\0\x01\0").is_ok());
        // What wasmparser says of a bad header, without the bytes.
        let engine = PluginHost::engine().unwrap();
        let e = one_line(&engine.precompile_component(secret).unwrap_err());
        assert!(e.contains("actual=[...]"), "{e}");
        assert!(!e.contains("0x72"), "{e}");
    }

    #[test]
    fn the_hosted_wit_version_is_the_packages() {
        let v = wit_version();
        assert!(
            v.split('.').count() == 3 && v.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{v}"
        );
    }

    #[test]
    fn compile_to_refuses_what_is_not_a_component() {
        let out =
            std::env::temp_dir().join(format!("sonde-compile-to-{}.cwasm", std::process::id()));
        let e = compile_to(b"\0asm not really", Some(&out))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("not a valid component: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(!out.exists());
    }
}
