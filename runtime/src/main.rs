//! `sonde`: the node agent and its CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sonde::agent::{self, RunOptions};

#[derive(Parser)]
#[command(
    name = "sonde",
    version,
    about = "Kubernetes network observability from eBPF probes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the probes, export /metrics, emit events.
    Run {
        /// YAML config file, watched for changes (default: the embedded config).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address of /metrics, /healthz, /readyz and /api/v1/ [default: 127.0.0.1:9990].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// A directory of plugin bundles, watched while running (repeatable).
        #[arg(long = "plugin-dir", value_name = "DIR")]
        plugin_dirs: Vec<PathBuf>,
    },
    /// Work with plugin bundles.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// List the probe catalogue and whether each probe can load on this kernel.
    Probes {
        /// A config file whose `attach` settings the TC probes are checked with (default:
        /// auto, TCX links where the kernel has them).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Read the kernel's types from this BTF file, as config `btf.path` does (to check a
        /// file before deploying it).
        #[arg(long, value_name = "FILE")]
        btf: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run a rhai script against live probes, bpftrace-style (see docs/cookbook.md).
    #[command(group = clap::ArgGroup::new("script").required(true).args(["expr", "file"]))]
    Trace {
        /// The script, inline.
        #[arg(short = 'e', value_name = "SCRIPT")]
        expr: Option<String>,
        /// The script, from a file.
        #[arg(short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        /// Stop after this long (500ms, 5s, 1m); default: at Ctrl-C or exit().
        #[arg(long, value_name = "D", value_parser = sonde::units::positive_duration)]
        duration: Option<std::time::Duration>,
        /// How often on_interval() runs.
        #[arg(long, value_name = "D", default_value = "1s", value_parser = sonde::units::positive_duration)]
        interval: std::time::Duration,
        /// How the maps are printed at the end.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Print the number of events and the handlers' cost per event on stderr at the end.
        #[arg(long)]
        stats: bool,
        /// Take the events of a running agent (http://HOST:PORT, its --listen address)
        /// instead of loading the probes here.
        #[arg(long, value_name = "URL")]
        agent: Option<String>,
        /// With --agent: ask the agent to lift the probes' event rate limits for this long
        /// (every consumer then gets every event; at most its api.maxUnlimited). Without it
        /// the stream gets what the sinks get.
        #[arg(long, value_name = "D", requires = "agent", value_parser = sonde::units::positive_duration)]
        unlimited: Option<std::time::Duration>,
        /// With --agent: the bearer token to send it (a file holding a Kubernetes service
        /// account token). Default: the kubeconfig's current user's token, if it has one.
        #[arg(long, value_name = "FILE", requires = "agent")]
        token_file: Option<PathBuf>,
        /// With an https:// agent: trust the CA certificates in FILE (PEM) instead of the
        /// system's.
        #[arg(long, value_name = "FILE", requires = "agent")]
        ca_file: Option<PathBuf>,
        /// With an https:// agent: trust any certificate it presents (a self-signed agent,
        /// api.tls.selfSigned), as curl -k does.
        #[arg(long, requires = "agent", conflicts_with = "ca_file")]
        insecure: bool,
        /// With an https:// agent: the client certificate (PEM) to present (api.auth.mode
        /// mtls), with --key.
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// The client certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a bundle (manifest, checksum, that the component fits the host's world)
    /// without running the agent.
    Check {
        /// The bundle's folder (plugin.yaml and its module).
        dir: PathBuf,
        /// The agent's compile cache (plugins.cacheDir), used when this user owns it: a
        /// component checked on the node is not compiled again by the agent. Empty: none.
        #[arg(long, value_name = "DIR", default_value = sonde::plugin_host::DEFAULT_CACHE_DIR)]
        cache_dir: String,
    },
    /// Print a bundle as a Kubernetes ConfigMap (labelled sonde.dev/bundle) on stdout.
    Configmap {
        /// The bundle's folder (plugin.yaml and its module or script).
        dir: PathBuf,
        /// The ConfigMap's namespace (default: none, kubectl's current one).
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// Compile the component on stdin for this host (what the agent runs in a child process).
    #[command(hide = true)]
    Compile {
        /// Where the compiled component goes (default: stdout).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    sonde::memory::tune_malloc();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: clap's reason, without the usage block that follows it.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut reason = lines.next().unwrap_or("invalid arguments").to_string();
            // "the following required arguments were not provided:" names them on the next line.
            if reason.ends_with(':') {
                if let Some(next) = lines.next() {
                    reason = format!("{reason} {next}");
                }
            }
            eprintln!("sonde: {}", reason.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    // A trace's stderr is for the script's own messages: the agent's logs only when amiss,
    // and not the probes' (a probe that cannot attach is the trace's one-line error).
    // kube's client logs every failed request as an error; the topology's watches say once
    // per failure (with backoff) what went wrong.
    let default_log = match cli.command {
        Command::Trace { .. } => "warn,sonde::probes=off,kube_client=off",
        _ => "info,kube_client=off",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SONDE_LOG")
                .unwrap_or_else(|_| default_log.into()),
        )
        .init();
    let result = match cli.command {
        Command::Run {
            config,
            listen,
            plugin_dirs,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(agent::run(RunOptions {
                    config,
                    listen,
                    plugin_dirs,
                }))
            }),
        Command::Plugin {
            command: PluginCommand::Check { dir, cache_dir },
        } => plugin_check(&dir, &cache_dir),
        Command::Plugin {
            command: PluginCommand::Compile { output },
        } => plugin_compile(output.as_deref()),
        Command::Plugin {
            command: PluginCommand::Configmap { dir, namespace },
        } => plugin_configmap(&dir, namespace.as_deref()),
        Command::Probes {
            config,
            btf,
            output,
        } => probes(config.as_deref(), btf, output),
        Command::Trace {
            expr,
            file,
            duration,
            interval,
            output,
            stats,
            agent,
            unlimited,
            token_file,
            ca_file,
            insecure,
            cert,
            key,
        } => {
            return trace(
                expr,
                file,
                duration,
                interval,
                output,
                stats,
                AgentArgs {
                    url: agent,
                    unlimited,
                    token_file,
                    tls: sonde::tls::ClientTls {
                        ca_file,
                        insecure,
                        cert_file: cert,
                        key_file: key,
                    },
                },
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// `sonde trace --agent` and how it reaches the agent.
struct AgentArgs {
    url: Option<String>,
    unlimited: Option<std::time::Duration>,
    token_file: Option<PathBuf>,
    tls: sonde::tls::ClientTls,
}

/// `sonde trace`: errors are one line, `sonde trace: <where>: <why>`, and exit 1.
fn trace(
    expr: Option<String>,
    file: Option<PathBuf>,
    duration: Option<std::time::Duration>,
    interval: std::time::Duration,
    output: Output,
    stats: bool,
    agent: AgentArgs,
) -> ExitCode {
    let AgentArgs {
        url: agent,
        unlimited,
        token_file,
        tls: agent_tls,
    } = agent;
    let token = match agent {
        Some(_) => match sonde::auth::client_token(token_file.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("sonde trace: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let (source, origin) = match (expr, file) {
        (Some(e), _) => (e, "-e".to_string()),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(s) => (s, path.display().to_string()),
            Err(e) => {
                eprintln!("sonde trace: {}: cannot read: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        (None, None) => unreachable!("clap requires -e or -f"),
    };
    let result = sonde::trace::run(sonde::trace::TraceOptions {
        source,
        origin,
        duration,
        interval,
        output: match output {
            Output::Text => sonde::trace::Format::Text,
            Output::Json => sonde::trace::Format::Json,
        },
        stats,
        agent,
        unlimited,
        token,
        agent_tls,
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde trace: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// A row of `sonde probes`.
struct ProbeRow {
    name: &'static str,
    description: &'static str,
    /// Hooks, or what it reads.
    hooks: Vec<String>,
    /// Loadable, or why not.
    loadable: Result<(), String>,
    /// How its TC hooks (`tcx`, `clsact`) or kernel-function hooks (`fentry`, `kprobe`) are
    /// attached here.
    attach: Option<&'static str>,
    /// What the probe lacks on this kernel, when it loads.
    degraded: Option<String>,
    /// Capabilities it needs that this process does not hold (netstat: CAP_SYS_ADMIN, for
    /// what it reads only from inside a namespace).
    needs: Vec<&'static str>,
}

/// `sonde probes`: tries to load each eBPF probe into the kernel (without attaching it), and
/// checks that the probes that read procfs (netstat) can enter network namespaces. TC probes
/// and probes of kernel functions are checked with the `attach` setting of `config` (auto
/// without one; those of kernel functions are attached for a moment, to know whether a BPF
/// trampoline attaches here), and the kernel's
/// types come from `btf` (else the config's `btf.path`, else the kernel).
fn probes(
    config: Option<&std::path::Path>,
    btf: Option<PathBuf>,
    output: Output,
) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => sonde::config::AgentConfig::load(path)?,
        None => sonde::config::AgentConfig::default(),
    };
    let btf_path = btf.or_else(|| config.btf.path());
    ebpf_core::btf::set_path(btf_path);
    let config = config.probes;
    let mut loader = ebpf_core::ProbeLoader::new();
    let btf = ebpf_core::btf::KernelBtf::load().map_err(|e| e.to_string());
    let held = sonde::caps::effective();
    let mut rows: Vec<ProbeRow> = ebpf_core::CATALOGUE
        .iter()
        .map(|spec| {
            let attach = sonde::probes::tc_attach(spec.name, &config);
            let (checked, mode) = match &btf {
                Ok(btf) => {
                    let has_tc = spec.hooks.iter().any(|h| h.tc_direction().is_some());
                    // The mode does not depend on the right to load, so it is said either way.
                    let mode = has_tc
                        .then(|| {
                            attach
                                .resolve(ebpf_core::tc::kernel_has_tcx(btf.types()))
                                .ok()
                        })
                        .flatten()
                        .map(ebpf_core::TcMode::as_str);
                    let fn_attach = sonde::probes::fn_attach(spec.name, &config);
                    match loader.check(spec, btf, attach, fn_attach) {
                        Ok(c) => {
                            let mode = mode.or(c.fn_mode.map(ebpf_core::FnMode::as_str));
                            (Ok(c), mode)
                        }
                        Err(e) => (Err(e.to_string()), mode),
                    }
                }
                Err(e) => (Err(e.clone()), None),
            };
            // The hooks it uses on this kernel; when that cannot be told, those of every kernel.
            let (loadable, degraded, hooks) = match checked {
                Ok(c) => (Ok(()), c.degraded, c.hooks),
                Err(e) => (
                    Err(e),
                    None,
                    spec.hooks_everywhere().map(ToString::to_string).collect(),
                ),
            };
            ProbeRow {
                name: spec.name,
                description: spec.description,
                hooks,
                loadable,
                attach: mode,
                degraded,
                needs: held.map_or_else(Vec::new, |h| sonde::caps::missing_for(spec, h)),
            }
        })
        .collect();
    {
        use sonde::probes::netstat;
        let checked = netstat::check();
        rows.push(ProbeRow {
            name: netstat::NAME,
            description: netstat::DESCRIPTION,
            hooks: netstat::SOURCES.iter().map(ToString::to_string).collect(),
            loadable: checked.as_ref().map(drop).map_err(ToString::to_string),
            attach: None,
            degraded: checked.ok().flatten(),
            needs: held
                .filter(|h| !sonde::caps::holds(*h, sonde::caps::SYS_ADMIN))
                .map_or_else(Vec::new, |_| vec![sonde::caps::SYS_ADMIN.name]),
        });
    }
    let mut text = String::new();
    match output {
        Output::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name,
                        "description": r.description,
                        "hooks": r.hooks,
                        "attach": r.attach,
                        "loadable": r.loadable.is_ok(),
                        "reason": r.loadable.as_ref().err(),
                        "degraded": r.degraded,
                        "needs": r.needs,
                    })
                })
                .collect();
            text = serde_json::to_string_pretty(&v)? + "\n";
        }
        Output::Text => {
            // Hooks say how they are attached: `tc/ingress,tc/egress (tcx)`.
            let hooks = |r: &ProbeRow| match r.attach {
                Some(mode) => format!("{} ({mode})", r.hooks.join(",")),
                None => r.hooks.join(","),
            };
            // The hooks column as wide as the longest list (three hooks are ~80 characters).
            let hooks_width = rows
                .iter()
                .map(|r| hooks(r).len())
                .max()
                .unwrap_or(0)
                .max(56);
            let line = |text: &mut String, cols: [&str; 4]| {
                *text += &format!(
                    "{:<14} {:<9} {:<hooks_width$} {}\n",
                    cols[0], cols[1], cols[2], cols[3]
                );
            };
            line(&mut text, ["PROBE", "LOADABLE", "HOOKS", "DESCRIPTION"]);
            for r in &rows {
                let loadable = match (&r.loadable, &r.degraded) {
                    (Err(_), _) => "no",
                    (Ok(()), Some(_)) => "degraded",
                    (Ok(()), None) => "yes",
                };
                line(&mut text, [r.name, loadable, &hooks(r), r.description]);
                if let Err(reason) = &r.loadable {
                    text += &format!("{:<14} why not: {reason}\n", "");
                }
                if let Some(lacks) = &r.degraded {
                    text += &format!("{:<14} lacks: {lacks}\n", "");
                }
                if !r.needs.is_empty() {
                    text += &format!("{:<14} needs: {}\n", "", r.needs.join(", "));
                }
            }
            // What each capability is for, and whether this process holds it.
            if let Some(held) = held {
                text += &format!("\n{:<15} {:<5} FOR\n", "CAPABILITY", "HELD");
                for c in sonde::caps::ALL {
                    let yes = if sonde::caps::holds(held, *c) {
                        "yes"
                    } else {
                        "no"
                    };
                    text += &format!("{:<15} {yes:<5} {}\n", c.name, c.used_for);
                }
            }
        }
    }
    print_stdout(&text)
}

/// `sonde plugin check DIR`.
fn plugin_check(dir: &std::path::Path, cache_dir: &str) -> anyhow::Result<()> {
    let bundle = sonde::plugin_host::check_bundle(dir, cache_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    if let Err(e) = sonde::plugin_host::configmap::configmap_yaml(&bundle, None) {
        eprintln!("sonde: warning: {e}");
    }
    let m = &bundle.manifest;
    let (kind, file) = match m.bundle_kind() {
        Some(sonde::plugin_host::manifest::BundleKind::Script) => ("script", "source"),
        _ => ("plugin", "module"),
    };
    let ceiling = sonde::plugin_host::PluginLimits::default().memory.0;
    let asked = m.spec.limits.memory.0;
    if kind == "plugin" && asked > ceiling {
        eprintln!(
            "sonde: warning: spec.limits.memory ({} MiB) is over the agent's default ceiling (plugins.limits.memory: {} MiB): an agent refuses it unless its operator raises the ceiling",
            asked >> 20,
            ceiling >> 20
        );
    }
    let memory = if kind == "plugin" {
        format!(
            "; memory {} MiB for its linear memories, tables, host objects and enrichment answers together",
            asked >> 20
        )
    } else {
        String::new()
    };
    print_stdout(&format!(
        "{}: {kind} {} is valid ({file} {}, {} bytes, sha256 {}; subscribes to [{}]; capabilities [{}]{memory})\n",
        dir.display(),
        m.metadata.name,
        m.file(),
        bundle.module.len(),
        bundle.sha256,
        m.spec.subscribe.join(", "),
        m.spec.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
    ))
}

/// `sonde plugin configmap DIR [--namespace NS]`.
fn plugin_configmap(dir: &std::path::Path, namespace: Option<&str>) -> anyhow::Result<()> {
    let bundle = sonde::plugin_host::check_bundle(dir, "")
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let yaml = sonde::plugin_host::configmap::configmap_yaml(&bundle, namespace)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print_stdout(&yaml)
}

/// `sonde plugin compile [--output FILE]` (module on stdin, component on stdout by default).
fn plugin_compile(output: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Read;
    let mut module = Vec::new();
    std::io::stdin()
        .read_to_end(&mut module)
        .map_err(|e| anyhow::anyhow!("cannot read the module from stdin: {e}"))?;
    sonde::plugin_host::compile_to(&module, output).map_err(anyhow::Error::msg)
}

/// Writes to stdout; a reader that went away (`sonde probes | head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
