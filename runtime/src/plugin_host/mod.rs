//! The plugin host: runs bundles (`plugin.yaml` + a WebAssembly component for the world
//! `sonde:plugin/plugin` in `wit/`) sandboxed in wasmtime, feeds them the probes' events in
//! batches, and gives them the host interfaces their manifest grants, each implemented in its
//! own module here (`log`, `metrics`, `events`, `topology`, `maps`, `control`).
//!
//! Each plugin runs on its own thread with its own store: memory is capped by `StoreLimits`,
//! every call by a deadline: the epoch stops guest code that runs too long, and since calls
//! are futures (async exports, WASI's async host functions) a call blocked in a host function
//! (a sleep, a poll) is dropped at the same deadline. A call that traps, times out or runs out of memory poisons
//! the instance: the store is dropped and a fresh one is made from the plugin's `InstancePre`,
//! with backoff; repeated failures quarantine the plugin. Nothing a plugin does stops the
//! agent or the other plugins.

mod bundle;
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use bundle::{Bundle, BundleError};
pub use watch::PluginDirs;

use crate::probes::{Context, Probes};

// Exports are called asynchronously, so that a call blocked in a host function (a WASI sleep
// or poll) can be abandoned at its deadline: see `worker::Instance::call`.
wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    exports: { default: async },
});

use self::sonde::plugin::types::Error as WitError;

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
                "Plugin failures by kind: bundle, init, trap, timeout, memory, quarantined.",
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
    limits: StoreLimits,
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

impl sonde::plugin::types::Host for HostState {}

impl HostState {
    /// Refuses a call unless the manifest grants `c`.
    fn require(&self, c: manifest::Capability) -> Result<(), WitError> {
        if self.plugin.manifest.grants(c) {
            Ok(())
        } else {
            Err(WitError::NotGranted(format!(
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
    cache_dir: Option<PathBuf>,
    compiler: Compiler,
    pub host: Arc<HostContext>,
}

/// Where components are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// In this process.
    InProcess,
    /// In a child process, `<this sonde binary> plugin compile --output FILE` with the module
    /// on stdin: compiling a large component (Python, JavaScript) peaks at hundreds of MiB,
    /// which the child returns to the system when it exits; the agent only maps the result.
    Child(PathBuf),
}

/// How long a child may take to compile one component.
const CHILD_COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl PluginHost {
    /// An engine with epoch interruption and a linker with the host interfaces and a WASI
    /// whose every door (files, network, env, clocks, randomness) is shut unless granted.
    pub fn new(
        host: Arc<HostContext>,
        cache_dir: Option<PathBuf>,
        compiler: Compiler,
    ) -> anyhow::Result<Arc<Self>> {
        let engine = Self::engine()?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
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
            cache_dir,
            compiler,
            host,
        }))
    }

    fn engine() -> anyhow::Result<Engine> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        Ok(Engine::new(&config)?)
    }

    /// Compiles a component, or takes it from the cache of modules already compiled.
    fn compile(&self, sha256: &str, bytes: &[u8]) -> Result<Component, BundleError> {
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
        {
            return Ok(c.clone());
        }
        let component = match (self.cached(sha256), &self.compiler) {
            (Some(c), _) => c,
            (None, Compiler::Child(exe)) => match self.compile_in_child(exe, sha256, bytes) {
                Ok(c) => c,
                Err(ChildFailure::Refused(reason)) => return Err(BundleError::Module(reason)),
                Err(ChildFailure::Unavailable(why)) => {
                    tracing::warn!(error = %why, "compiling the plugin in process instead");
                    self.compile_here(sha256, bytes)?
                }
            },
            (None, Compiler::InProcess) => self.compile_here(sha256, bytes)?,
        };
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha256.to_string(), component.clone());
        Ok(component)
    }

    fn compile_here(&self, sha256: &str, bytes: &[u8]) -> Result<Component, BundleError> {
        let c = Component::new(&self.engine, bytes)
            .map_err(|e| BundleError::Module(format!("not a valid component: {}", one_line(&e))))?;
        self.keep(sha256, &c);
        Ok(c)
    }

    /// Compiles in a child process into the cache directory (or a temporary file without
    /// one) and maps the result.
    fn compile_in_child(
        &self,
        exe: &Path,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<Component, ChildFailure> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let (out, temporary) = match self.cache_path(sha256) {
            Some(path) => (path, false),
            None => {
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = format!("sonde-{}-{n}-{sha256}.cwasm", std::process::id());
                (std::env::temp_dir().join(name), true)
            }
        };
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                ChildFailure::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        run_compiler(exe, bytes, &out)?;
        // SAFETY: the file was just written by this same binary's `plugin compile`, with the
        // engine configuration `PluginHost::engine` makes (wasmtime checks the compatibility
        // again); nobody else writes there.
        let component = unsafe { Component::deserialize_file(&self.engine, &out) };
        if temporary {
            // The component maps the file; its name is no longer needed.
            let _ = std::fs::remove_file(&out);
        }
        // A binary replaced on disk by another version compiles for another engine.
        component.map_err(|e| {
            ChildFailure::Unavailable(format!(
                "cannot load what {} compiled: {}",
                exe.display(),
                one_line(&e)
            ))
        })
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
        crate::probes::release_freed_memory();
    }

    fn in_use_sha(&self, plugin: &str) -> Option<String> {
        self.in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .cloned()
    }

    /// The cache file of a module: its content hash and the engine's compatibility hash, so
    /// that another wasmtime or another configuration never reads it.
    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", h.finish())))
    }

    /// A component compiled by an earlier run, if the cache has a good one.
    fn cached(&self, sha256: &str) -> Option<Component> {
        let path = self.cache_path(sha256)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the cache directory is the agent's own (plugins.cacheDir, written only by
        // `keep` below), and the file name pins both the module's content and the engine's
        // compatibility, which is what deserialising requires.
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %one_line(&e), "unusable cached component; compiling again");
                None
            }
        }
    }

    /// Writes a compiled component to the cache (atomically), when there is one.
    fn keep(&self, sha256: &str, component: &Component) {
        let Some(path) = self.cache_path(sha256) else {
            return;
        };
        let written = component
            .serialize()
            .map_err(|e| one_line(&e))
            .and_then(|bytes| {
                let dir = path.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the compiled component");
        }
    }

    /// Checks that a component fits the world: its imports are all provided by the host and
    /// its exports are the world's.
    fn prepare(&self, component: &Component) -> Result<PluginPre<HostState>, BundleError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| BundleError::World(one_line(&e)))?;
        PluginPre::new(pre).map_err(|e| BundleError::World(one_line(&e)))
    }
}

impl HostContext {
    /// The metric families of every running plugin, for /metrics.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let registries = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        let mut families: Vec<_> = registries.values().flat_map(|(_, r)| r.gather()).collect();
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }
}

/// Why a child did not compile a component.
enum ChildFailure {
    /// The component is bad: the child's one-line reason.
    Refused(String),
    /// The child could not do the work (not started, killed, ...): compile in process.
    Unavailable(String),
}

/// Runs `exe plugin compile --output out` with the module on stdin.
fn run_compiler(exe: &Path, module: &[u8], out: &Path) -> Result<(), ChildFailure> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use ChildFailure::{Refused, Unavailable};
    let mut child = Command::new(exe)
        .args(["plugin", "compile", "--output"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Unavailable(format!("cannot start {}: {e}", exe.display())))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Feed and drain from threads: a large module fills the pipe before the child reads it
    // all, and the child's messages must not block it either.
    let module = module.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&module));
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > CHILD_COMPILE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Refused(format!(
                    "compiling took longer than {}s",
                    CHILD_COMPILE_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Unavailable(format!("waiting for the compiler: {e}"))),
        }
    };
    let _ = feeder.join();
    let text = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let reason = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("sonde: ").to_string());
    match reason {
        // The child's own verdict on the module.
        Some(r) if status.code() == Some(1) => Err(Refused(r)),
        // Killed (out of memory, say) or not a sonde that knows `plugin compile`.
        other => Err(Unavailable(format!(
            "{} plugin compile failed ({status}){}",
            exe.display(),
            other.map(|r| format!(": {r}")).unwrap_or_default()
        ))),
    }
}

/// `sonde plugin compile`: compiles the component `module` for this host's engine into
/// `out` (written whole, then renamed into place). Run by the agent in a child process.
pub fn compile_to(module: &[u8], out: &Path) -> Result<(), String> {
    let engine = PluginHost::engine().map_err(|e| e.to_string())?;
    let compiled = engine
        .precompile_component(module)
        .map_err(|e| format!("not a valid component: {}", one_line(&e)))?;
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, compiled)
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", out.display())
        })
}

/// Validates a bundle without an agent: `sonde plugin check DIR`.
pub fn check_bundle(dir: &Path) -> Result<Bundle, BundleError> {
    let bundle = Bundle::read(dir)?;
    if bundle.manifest.bundle_kind() == Some(manifest::BundleKind::Script) {
        // Compiled as the agent would, with its functions (which only a running agent
        // carries out): syntax, handlers and subscriptions.
        script::compile(&bundle, script::register_stubs)?;
        return Ok(bundle);
    }
    let engine = PluginHost::engine().map_err(|e| BundleError::Module(e.to_string()))?;
    let component = Component::new(&engine, &bundle.module)
        .map_err(|e| BundleError::Module(format!("not a valid component: {}", one_line(&e))))?;
    let mut linker: Linker<HostState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| BundleError::World(e.to_string()))?;
    Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
        .map_err(|e| BundleError::World(e.to_string()))?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| BundleError::World(one_line(&e)))?;
    PluginPre::new(pre).map_err(|e| BundleError::World(one_line(&e)))?;
    Ok(bundle)
}

/// An error chain on one line.
fn one_line(e: &wasmtime::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// `plugins:` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename_all = "camelCase")]
pub struct PluginsConfig {
    /// Directories of bundles, watched while the agent runs (`--plugin-dir` adds more).
    pub dirs: Vec<String>,
    /// Where compiled components are kept, so that a restart does not compile them again
    /// (seconds for Python and JavaScript plugins); empty for no cache.
    pub cache_dir: String,
    /// A Kubernetes namespace whose ConfigMaps labelled `sonde.dev/bundle` are bundles,
    /// followed through the API; empty = none.
    pub config_map_namespace: String,
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
        let out = dir.join("out.cwasm");
        // A module the compiler refuses: its one-line reason, without the `sonde: ` prefix.
        let refuses = script(
            &dir,
            "echo 'sonde: not a valid component: bad magic' >&2; exit 1",
        );
        match run_compiler(&refuses, &[0u8; 300_000], &out) {
            Err(ChildFailure::Refused(r)) => assert_eq!(r, "not a valid component: bad magic"),
            _ => panic!("expected a refusal"),
        }
        // A compiler that cannot do the work (killed, or an older binary without the
        // command): the host compiles in process instead.
        let killed = script(&dir, "kill -9 $$");
        assert!(matches!(
            run_compiler(&killed, b"x", &out),
            Err(ChildFailure::Unavailable(_))
        ));
        let missing = dir.join("no-such-binary");
        assert!(matches!(
            run_compiler(&missing, b"x", &out),
            Err(ChildFailure::Unavailable(_))
        ));
        let works = script(&dir, "exit 0");
        assert!(run_compiler(&works, b"x", &out).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn compile_to_refuses_what_is_not_a_component() {
        let out =
            std::env::temp_dir().join(format!("sonde-compile-to-{}.cwasm", std::process::id()));
        let e = compile_to(b"\0asm not really", &out).unwrap_err();
        assert!(e.starts_with("not a valid component: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(!out.exists());
    }
}
