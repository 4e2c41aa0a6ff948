//! `sonde run`: wires topology, probes, fan-out, sinks and the HTTP endpoints together, and
//! applies config file changes while running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::config::AgentConfig;
use crate::exporter::{self, ApiState};
use crate::metrics::Metrics;
use crate::plugin_host::{self, HostContext, PluginDirs, PluginHost};
use crate::probes::{Context, Probes};
use crate::sinks::Sinks;

/// How often the config file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(1);
/// How often kernel counters are folded into the metrics between scrapes, so that counts
/// are labelled while their namespace still exists.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// Bundle directories from `--plugin-dir`, after the config's.
    pub plugin_dirs: Vec<PathBuf>,
}

/// The node label: config, else `$NODE_NAME`, else the host name.
pub(crate) fn node_name(config: &AgentConfig) -> String {
    if !config.node.is_empty() {
        return config.node.clone();
    }
    if let Ok(n) = std::env::var("NODE_NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = match &opts.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::embedded(),
    };
    let listen = match opts.listen {
        Some(a) => a,
        None => config
            .listen
            .parse()
            .with_context(|| format!("listen: {:?} is not an address", config.listen))?,
    };
    // Refused before anything starts: an agent open to its network without checking who asks.
    let auth_enabled = config
        .api
        .auth
        .enabled_for(listen)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // The server's limits are read at start.
    let api = config.api.clone();

    // Checked when the config was parsed.
    let additional_labels = Arc::new(
        config
            .topology
            .additional_labels()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let metrics = Arc::new(Metrics::with_config(
        additional_labels.names(),
        &config.metrics,
    ));
    let node = node_name(&config);
    let started = crate::topology::start(&config.topology, &node, additional_labels)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ctx = Context::new(&node, Arc::clone(&started.topology), Arc::clone(&metrics));
    let mut sinks = Sinks::new(
        Arc::clone(&ctx.fanout),
        crate::sinks::loki::SinkMetrics::register(&metrics.registry),
    );
    sinks.apply(&config.sinks);
    let sinks = Arc::new(Mutex::new(sinks));
    use_btf(&config);
    let probes = Arc::new(Mutex::new(Probes::new(Arc::clone(&ctx))));
    // BTF parsing and the verifier run off the async workers.
    let (p, probes_config) = (Arc::clone(&probes), config.probes.clone());
    tokio::task::spawn_blocking(move || {
        p.lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&probes_config)
    })
    .await
    .context("loading the probes")?;
    // Read the kernel symbols now, off the data path, rather than on the first drop event.
    let warm = Arc::clone(&ctx);
    tokio::task::spawn_blocking(move || {
        warm.symbols();
        crate::memory::release_freed_memory();
    });

    let plugin_dirs = plugin_host::dirs_from(&config.plugins, &opts.plugin_dirs);
    let configmap_ns = config.plugins.config_map_namespace.clone();
    let plugins = if plugin_dirs.is_empty() && configmap_ns.is_empty() {
        None
    } else {
        let host = PluginHost::new(
            HostContext::new(
                Arc::clone(&ctx),
                Arc::clone(&probes),
                config.plugins.limits.total_memory.0,
            ),
            &config.plugins,
            compiler(),
        )
        .context("cannot start the plugin host")?;
        let dirs = PluginDirs::new(host, plugin_dirs);
        // Scans at once, and loads each bundle on a thread of its own: the HTTP server starts
        // now, whatever the bundles do; /readyz waits for the bundles present at start.
        dirs.spawn_watch();
        if !configmap_ns.is_empty() {
            let client = match &started.client {
                Some(c) => c.clone(),
                None => crate::topology::kube::client(&config.topology)
                    .await
                    .map_err(|e| anyhow::anyhow!("plugins.configMapNamespace: {e}"))?,
            };
            dirs.spawn_configmaps(client, &configmap_ns);
            tracing::info!(namespace = %configmap_ns, "following bundle ConfigMaps through the API");
        }
        Some(dirs)
    };
    let tls = if api.tls.enabled() {
        let reloads = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "sonde_tls_certificate_reloads_total",
                "Reloads of api.tls.certFile and keyFile after they changed, by result (error: the previous pair is kept).",
            ),
            &["result"],
        )
        .expect("valid metric");
        metrics
            .registry
            .register(Box::new(reloads.clone()))
            .expect("registered once");
        Some(crate::tls::start(&api.tls, &ctx.node, listen, reloads)?)
    } else {
        None
    };
    let checks = if !auth_enabled {
        None
    } else {
        let tokens = if api.auth.mode == crate::auth::AuthMode::Mtls {
            None
        } else {
            let client = match &started.client {
                Some(c) => c.clone(),
                None => crate::topology::kube::client(&config.topology)
                    .await
                    .map_err(|e| anyhow::anyhow!("api.auth: the API server checks tokens: {e}"))?,
            };
            Some(crate::auth::Authorizer::new(client, &ctx.node, &api.auth))
        };
        Some(Arc::new(crate::auth::Checks {
            tokens,
            client_certs: !api.tls.client_ca_file.is_empty(),
        }))
    };
    let auth_name = match &checks {
        None => "off",
        Some(c) if c.tokens.is_none() => "mtls",
        Some(_) => "kubernetes",
    };
    tracing::info!(%listen, node = %ctx.node, auth = auth_name, https = tls.is_some(), "sonde running");

    let sync_probes = Arc::clone(&probes);
    let (sync_topology, sync_metrics) = (Arc::clone(&ctx.topology), Arc::clone(&metrics));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        loop {
            tick.tick().await;
            let p = Arc::clone(&sync_probes);
            let _ = tokio::task::spawn_blocking(move || {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                p.sync();
                p.retry_failed();
            })
            .await;
            sync_metrics
                .topology_stale
                .set(sync_topology.stale().is_some() as i64);
        }
    });

    tokio::spawn(expire_gone_pods(
        Arc::clone(&ctx.topology),
        Arc::clone(&metrics),
        config.topology.gone_retention,
    ));

    if let Some(path) = opts.config.clone() {
        let probes = Arc::clone(&probes);
        let sinks = Arc::clone(&sinks);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(watch_config(path, config, probes, sinks, metrics));
    }

    let events = crate::event_stream::router(
        Arc::clone(&ctx.fanout),
        Arc::clone(&probes),
        Arc::clone(&metrics),
        api.clone(),
    );
    let app = exporter::router(ApiState {
        probes: Arc::clone(&probes),
        metrics,
        topology: Arc::clone(&ctx.topology),
        plugins,
    })
    .merge(events);
    let app = match checks {
        Some(c) => app.layer(axum::middleware::from_fn_with_state(c, crate::auth::layer)),
        None => app,
    };
    crate::server::serve(listener, app, &api, tls, shutdown()).await;
    tracing::info!("sonde stopping");
    // Unloaded here rather than when the last reference goes (tasks hold some): a TC probe's
    // clsact filters stay on their interfaces until deleted.
    probes.lock().unwrap_or_else(|e| e.into_inner()).stop();
    drop(probes);
    drop(sinks);
    Ok(())
}

/// Removes, every quarter of `retention` (at most a minute apart), the series of the pods that
/// have been gone for `retention` (`topology.goneRetention`): a node where pods come and go
/// keeps the series of the pods it has, not of every pod it ever had.
async fn expire_gone_pods(
    topology: Arc<dyn crate::topology::Topology>,
    metrics: Arc<Metrics>,
    retention: std::time::Duration,
) {
    let every = (retention / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (topology, metrics) = (Arc::clone(&topology), Arc::clone(&metrics));
        let _ = tokio::task::spawn_blocking(move || {
            let Some(pods) = topology.workloads() else {
                return;
            };
            let names: std::collections::HashSet<(&str, &str)> =
                pods.iter().map(|w| (&*w.namespace, &*w.pod)).collect();
            let keep = |namespace: &str, pod: &str| names.contains(&(namespace, pod));
            let removed = metrics.expire_pods(&keep);
            if removed > 0 {
                tracing::debug!(series = removed, "series of gone pods removed");
            }
        })
        .await;
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Applies config file changes: probes are enabled, disabled or reconfigured one by one, and
/// a config that does not parse is refused with its reason while the running one stays.
async fn watch_config(
    path: PathBuf,
    mut current: AgentConfig,
    probes: Arc<Mutex<Probes>>,
    sinks: Arc<Mutex<Sinks>>,
    metrics: Arc<Metrics>,
) {
    let mut last_text = tokio::fs::read(&path).await.ok();
    let mut tick = tokio::time::interval(CONFIG_POLL);
    loop {
        tick.tick().await;
        let text = match tokio::fs::read(&path).await {
            Ok(t) => t,
            Err(e) => {
                if last_text.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "config file unreadable; keeping the running config");
                    last_text = None;
                }
                continue;
            }
        };
        if last_text.as_deref() == Some(&text[..]) {
            continue;
        }
        last_text = Some(text.clone());
        let parsed = String::from_utf8(text)
            .map_err(|_| format!("{}: not UTF-8 text", path.display()))
            .and_then(|t| {
                AgentConfig::parse(&t, &path.display().to_string()).map_err(|e| e.to_string())
            });
        let new = match parsed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("config rejected, keeping the running one: {e}");
                metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                continue;
            }
        };
        if new.topology != current.topology
            || new.listen != current.listen
            || new.node != current.node
            || new.btf != current.btf
            || new.metrics.pod_histogram_buckets != current.metrics.pod_histogram_buckets
        {
            tracing::warn!(
                "node, listen, topology, btf and metrics.podHistogramBuckets changes take effect at the next start"
            );
        }
        metrics.budget.set_max(new.metrics.max_series);
        let p = Arc::clone(&probes);
        let probes_config = new.probes.clone();
        let _ = tokio::task::spawn_blocking(move || {
            p.lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&probes_config)
        })
        .await;
        // A sink stopped waits for its thread, which may be waiting on a slow receiver.
        let (s, sinks_config) = (Arc::clone(&sinks), new.sinks.clone());
        let _ = tokio::task::spawn_blocking(move || {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&sinks_config)
        })
        .await;
        metrics.config_reloads.with_label_values(&["applied"]).inc();
        tracing::info!(path = %path.display(), "config applied");
        current = new;
    }
}

/// Makes `btf.path` where the whole process reads the kernel's types from, and says where
/// that is when it is not the kernel's own BTF (or when there is none).
fn use_btf(config: &AgentConfig) {
    use ebpf_core::btf::{self, Source};
    btf::set_path(config.btf.path());
    match Source::current() {
        Ok(Source::Kernel) => {}
        Ok(Source::File(path)) if btf::kernel_has_own() => tracing::info!(
            path = %path.display(),
            "kernel types from btf.path (tp_btf attach points from the kernel's own BTF)"
        ),
        Ok(Source::File(path)) => tracing::info!(
            path = %path.display(),
            "kernel types from btf.path; this kernel has no BTF of its own ({}): \
             probes with tp_btf hooks cannot load",
            btf::VMLINUX
        ),
        Err(e) => {
            let ebpf = crate::probes::DRIVERS
                .iter()
                .any(|d| (d.settings)(&config.probes).is_some());
            if ebpf {
                tracing::warn!("{e}; only probes that load no eBPF program (netstat) can run");
            }
        }
    }
}

/// Components are compiled by this binary in a child process (`sonde plugin compile`), so
/// that the compiler's peak memory leaves with it. `/proc/self/exe` is the running binary
/// even when a newer one has replaced it on disk: the child compiles for this engine.
fn compiler() -> plugin_host::Compiler {
    plugin_host::Compiler::Child(PathBuf::from("/proc/self/exe"))
}
