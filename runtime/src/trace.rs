//! `sonde trace`: runs a rhai script against live probes, bpftrace-style. It loads only the
//! probes the script has handlers for, with the agent's own machinery (collectors, topology,
//! fan-out), hands every event to the script without rate limits, and at Ctrl-C, SIGTERM,
//! `--duration` or the script's `exit()` runs `on_exit()` and prints every aggregation map.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::IntCounter;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::event::Batch;
use crate::metrics::Metrics;
use crate::probes::{Context, Probes, ProbesConfig, DRIVERS};
use crate::script::{output, Limits, Printer, Script, ScriptError};
use crate::topology::netns::NetnsTopology;

/// Per-probe ring buffer while tracing: every event is delivered, so leave room for bursts.
const RING_BUFFER_SIZE: &str = "8Mi";
/// Batches queued between the collectors and the script.
const QUEUE_BATCHES: usize = 4096;
/// How long a stopping trace still takes events: past the collectors' longest wait between
/// polls (an idle probe's), so that what the kernel handed over before the stop is read.
const FINAL_DRAIN: Duration =
    Duration::from_millis(crate::probes::IDLE_POLL_INTERVAL.as_millis() as u64 + 50);
/// Event fields that cost something to collect, the probe option that collects them, and
/// the probe: a script that mentions the field turns the option on.
const FIELD_OPTIONS: &[(&str, &str, &str)] = &[("stack", "packet_drop", "stack")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub struct TraceOptions {
    pub source: String,
    /// The script's file, or `-e`.
    pub origin: String,
    /// Stop after this long; `None` runs until Ctrl-C, SIGTERM or `exit()`.
    pub duration: Option<Duration>,
    /// How often `on_interval()` runs.
    pub interval: Duration,
    pub output: Format,
    /// Print event counts and the handlers' cost per event on stderr at the end.
    pub stats: bool,
    /// A running agent's address: take its event stream instead of loading the probes.
    pub agent: Option<String>,
    /// With `agent`: how long to ask it to lift the probes' event rate limits.
    pub unlimited: Option<Duration>,
    /// With `agent`: the bearer token it is sent (see [`crate::auth::client_token`]).
    pub token: Option<String>,
    /// With an `https://` agent: whom to trust, and the client certificate.
    pub agent_tls: crate::tls::ClientTls,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0}")]
    Script(#[from] ScriptError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Writes and flushes; a reader that went away (`sonde trace ... | head`) is not an error.
fn write_out(to_stderr: bool, text: &str) {
    if to_stderr {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(text.as_bytes()).and_then(|()| e.flush());
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
    }
}

/// The probes config of a trace: the script's probes on, with every event delivered.
fn probes_config(script: &Script) -> anyhow::Result<ProbesConfig> {
    let mut probes = serde_json::Map::new();
    for d in DRIVERS {
        let name = d.spec.name;
        let enabled = script.handlers().probes.contains(&name);
        if !enabled {
            // Only enabled probes get an event stream (some probes have none).
            probes.insert(name.to_string(), serde_json::json!({ "enabled": false }));
            continue;
        }
        let mut probe = serde_json::json!({
            "enabled": true,
            "events": {"enabled": true, "ratePerCpu": 0, "ringBufferSize": RING_BUFFER_SIZE},
        });

        for (field, probe_name, option) in FIELD_OPTIONS {
            if *probe_name == name && script.mentions_field(field) {
                probe[*option] = true.into();
            }
        }
        probes.insert(name.to_string(), probe);
    }
    // netstat is not a driver: it reads /proc, has no events, and a trace never needs it.
    probes.insert("netstat".into(), serde_json::json!({ "enabled": false }));
    let config: ProbesConfig = serde_json::from_value(probes.into())
        .context("cannot configure the probes for the script")?;
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// A batch of events from where the trace gets them.
enum Events {
    /// Decoded by the probes loaded here.
    Local(Batch),
    /// JSON events from an agent's stream.
    Json(Vec<serde_json::Value>),
}

/// Where a trace's events come from.
enum Feed {
    Local(Box<LocalProbes>),
    Agent {
        url: String,
        events: mpsc::Receiver<Vec<serde_json::Value>>,
    },
}

impl Feed {
    /// The next batch; `None` once the source has ended.
    async fn next(&mut self) -> Option<Events> {
        match self {
            Feed::Local(l) => l.events.recv().await.map(Events::Local),
            Feed::Agent { events, .. } => events.recv().await.map(Events::Json),
        }
    }
}

/// The probes a trace loaded, and what it needs to stop them and count their losses.
struct LocalProbes {
    probes: Probes,
    metrics: Arc<Metrics>,
    events: mpsc::Receiver<Batch>,
    queue_full: IntCounter,
    refresh: tokio::task::JoinHandle<()>,
    wanted: Vec<&'static str>,
}

impl LocalProbes {
    /// Detaches the probes; returns the events lost in the kernel and in the queue.
    fn stop(self: Box<Self>) -> (u64, u64) {
        let this = *self;
        this.refresh.abort();
        let mut probes = this.probes;
        probes.sync();
        drop(probes);
        let kernel = this
            .wanted
            .iter()
            .map(|name| this.metrics.events_lost.with_label_values(&[name]).get())
            .sum();
        (kernel, this.queue_full.get())
    }
}

/// Loads the script's probes here (inside the runtime), with every event for the script.
fn attach(script: &Script) -> Result<LocalProbes, TraceError> {
    let config = probes_config(script)?;
    let agent_config = AgentConfig::embedded();
    let metrics = Arc::new(Metrics::new());
    let topology = NetnsTopology::new(
        &agent_config.topology.netns_dir,
        agent_config.topology.gone_retention,
    );
    let refresh = topology.spawn_refresh();
    let ctx = Context::new(
        &crate::agent::node_name(&agent_config),
        topology,
        Arc::clone(&metrics),
    );
    let wanted = script.handlers().probes.clone();
    let queue_full = metrics
        .consumer_events_dropped
        .with_label_values(&["trace"]);
    // Subscribed before the probes start, so that their first events are seen.
    let events = ctx.fanout.subscribe_counted(
        "trace",
        QUEUE_BATCHES,
        queue_full.clone(),
        Some(wanted.iter().map(|p| p.to_string()).collect()),
    );
    let mut probes = Probes::new(Arc::clone(&ctx));
    // A script that called exit() in its top-level statements needs no probes.
    if !wanted.is_empty() && !script.exited() {
        probes.apply(&config);
        let failed: Vec<String> = probes
            .status()
            .into_iter()
            .filter(|s| wanted.contains(&s.name) && s.state != "running")
            .map(|s| format!("{}: {}", s.name, s.error.unwrap_or_default()))
            .collect();
        if !failed.is_empty() {
            refresh.abort();
            return Err(anyhow::anyhow!("cannot attach {}", failed.join("; ")).into());
        }
        // Kernel symbols name drop locations; read them now rather than on the first drop.
        ctx.symbols();
    }
    Ok(LocalProbes {
        probes,
        metrics,
        events,
        queue_full,
        refresh,
        wanted,
    })
}

/// An agent's URL: whether it is HTTPS, its host, and `host:port`.
#[derive(Debug, PartialEq)]
struct AgentUrl {
    https: bool,
    host: String,
    addr: String,
}

/// What is wrong with `--agent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum AgentUrlError {
    #[error("--agent {0:?}: only http:// and https:// URLs are supported")]
    Scheme(String),
    #[error(
        "--agent {0:?}: expected http://HOST:PORT or https://HOST:PORT (the agent's --listen \
         address)"
    )]
    Shape(String),
}

/// `http://HOST:PORT`, `https://HOST:PORT` or `HOST:PORT` (HTTP).
fn agent_url(url: &str) -> Result<AgentUrl, AgentUrlError> {
    let (https, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some(_) => return Err(AgentUrlError::Scheme(url.to_string())),
        None => (false, url),
    };
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains('/') {
        return Err(AgentUrlError::Shape(url.to_string()));
    }
    let (host, addr) = match host_port.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (h.to_string(), host_port.to_string())
        }
        _ => {
            let port = if https { 443 } else { 80 };
            (host_port.to_string(), format!("{host_port}:{port}"))
        }
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(AgentUrl { https, host, addr })
}

/// A connection to an agent, plain or TLS.
trait AgentIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AgentIo for T {}

/// Opens the agent's event stream for `probes`: the agent answers once it has subscribed,
/// so every event after that reaches the script.
async fn connect_agent(
    url: &str,
    probes: &[&'static str],
    unlimited: Option<Duration>,
    token: Option<&str>,
    tls: &crate::tls::ClientTls,
) -> anyhow::Result<mpsc::Receiver<Vec<serde_json::Value>>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let AgentUrl { https, host, addr } = agent_url(url)?;
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot reach the agent at {url}"))?;
    let mut stream: Box<dyn AgentIo> = if https {
        let connector = tls.connector()?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| anyhow::anyhow!("--agent {url:?}: {host:?}: {e}"))?;
        Box::new(
            connector
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS with the agent at {url}"))?,
        )
    } else {
        Box::new(tcp)
    };
    // HTTP/1.0: the body is the rest of the connection, no chunked framing to undo.
    let unlimited = unlimited.map_or(String::new(), |d| format!("&unlimited={}ms", d.as_millis()));
    let authorization = match token {
        Some(t) if t.contains(['\r', '\n']) => anyhow::bail!("the token holds a line break"),
        Some(t) => format!("Authorization: Bearer {t}\r\n"),
        None => String::new(),
    };
    let request = format!(
        "GET /api/v1/events?probes={}{unlimited} HTTP/1.0\r\nHost: {addr}\r\n{authorization}\r\n",
        probes.join(",")
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut status = String::new();
    reader.read_line(&mut status).await?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
    }
    if status.split_whitespace().nth(1) != Some("200") {
        let mut body = String::new();
        let _ = reader.take(4096).read_to_string(&mut body).await;
        anyhow::bail!(
            "the agent at {url} refused the event stream ({}): {}",
            status.trim(),
            body.trim()
        );
    }
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    tokio::spawn(async move {
        let mut batch = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            match serde_json::from_str(&line) {
                Ok(v) => batch.push(v),
                Err(e) => tracing::warn!(error = %e, "agent sent a line that is not JSON"),
            }
            // Hand over what has arrived; keep reading while more is buffered.
            if (reader.buffer().is_empty() || batch.len() >= 1024)
                && tx.send(std::mem::take(&mut batch)).await.is_err()
            {
                return;
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(batch).await;
        }
    });
    Ok(rx)
}

pub fn run(opts: TraceOptions) -> Result<(), TraceError> {
    let output = opts.output;
    // In JSON mode stdout carries only the document; what the script prints goes to stderr.
    let print: Printer = Arc::new(move |s| write_out(output == Format::Json, s));
    let probe_names = crate::probes::event_probes();
    let mut script = Script::compile(
        &opts.source,
        &opts.origin,
        &probe_names,
        Limits::default(),
        print,
    )?;
    // Checked before anything starts, so that a bad config is reported first.
    probes_config(&script)?;
    script.start()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let guard = rt.enter();
    let wanted = script.handlers().probes.clone();
    let mut feed = match &opts.agent {
        Some(url) if !wanted.is_empty() && !script.exited() => {
            let events = rt.block_on(connect_agent(
                url,
                &wanted,
                opts.unlimited,
                opts.token.as_deref(),
                &opts.agent_tls,
            ))?;
            Feed::Agent {
                url: url.clone(),
                events,
            }
        }
        _ => Feed::Local(Box::new(attach(&script)?)),
    };
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + opts.interval, opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    drop(guard);
    let attached = if wanted.is_empty() {
        "no probes".to_string()
    } else {
        wanted.join(", ")
    };
    let through = match &feed {
        Feed::Agent { url, .. } => format!(" (through the agent at {url})"),
        Feed::Local(_) => String::new(),
    };
    write_out(
        true,
        &format!("sonde trace: attached {attached}{through}\n"),
    );

    enum Next {
        Events(Events),
        Interval,
        Stop,
        Ended,
    }
    let has_interval = script.handlers().interval;
    let mut ended = false;
    fn handle(script: &mut Script, events: Events) -> Result<(), ScriptError> {
        match events {
            Events::Local(batch) => script.on_events(&batch),
            Events::Json(batch) => script.on_json_events(&batch),
        }
    }
    let mut run = || -> Result<(), ScriptError> {
        while !script.exited() {
            let next = rt.block_on(async {
                let stop = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    e = feed.next() => e.map_or(Next::Ended, Next::Events),
                    _ = tick.tick(), if has_interval => Next::Interval,
                    _ = interrupt.recv() => Next::Stop,
                    _ = terminate.recv() => Next::Stop,
                    _ = stop => Next::Stop,
                }
            });
            match next {
                Next::Events(events) => handle(&mut script, events)?,
                Next::Interval => script.on_interval()?,
                Next::Ended => {
                    ended = true;
                    break;
                }
                Next::Stop => {
                    // What the kernel handed over before the stop still counts: take what
                    // the collectors publish until their next poll has surely run. (Checked
                    // by hand: under a flood, the feed is always ready and the timeout alone
                    // would never end the loop.)
                    let until = tokio::time::Instant::now() + FINAL_DRAIN;
                    while !script.exited() && tokio::time::Instant::now() < until {
                        let next = rt
                            .block_on(async { tokio::time::timeout_at(until, feed.next()).await });
                        match next {
                            Ok(Some(events)) => handle(&mut script, events)?,
                            _ => break,
                        }
                    }
                    break;
                }
            }
        }
        Ok(())
    };
    let result = run();

    let (lost_in_kernel, lost_in_queue) = match feed {
        Feed::Local(local) => {
            let _guard = rt.enter();
            local.stop()
        }
        Feed::Agent { url, .. } => {
            if ended {
                write_out(
                    true,
                    &format!("sonde trace: the agent at {url} ended the event stream\n"),
                );
            }
            (0, 0)
        }
    };
    rt.shutdown_timeout(Duration::from_secs(1));
    result?;
    script.on_exit()?;

    let stats = script.stats();
    if opts.stats {
        let per_event = stats
            .busy
            .as_nanos()
            .checked_div(u128::from(stats.events))
            .unwrap_or(0);
        let lost = if opts.agent.is_some() {
            "losses are counted by the agent (sonde_consumer_events_dropped_total)".to_string()
        } else {
            format!("lost {lost_in_kernel} in the kernel, {lost_in_queue} in the queue")
        };
        write_out(
            true,
            &format!(
                "sonde trace: {} events handled in {:.3} s, {per_event} ns/event \
                 (conversion and handler); {lost}\n",
                stats.events,
                stats.busy.as_secs_f64(),
            ),
        );
    }
    if lost_in_kernel + lost_in_queue > 0 {
        write_out(
            true,
            &format!(
                "sonde trace: warning: {} events were lost ({lost_in_kernel} with the ring \
                 buffer full, {lost_in_queue} with the script's queue full); the maps miss them\n",
                lost_in_kernel + lost_in_queue
            ),
        );
    }
    let maps = script.maps();
    match output {
        Format::Text => write_out(false, &output::text(&maps)),
        Format::Json => write_out(false, &format!("{}\n", output::json(&maps))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_urls() {
        let url = |https, host: &str, addr: &str| {
            Ok(AgentUrl {
                https,
                host: host.into(),
                addr: addr.into(),
            })
        };
        assert_eq!(
            agent_url("http://127.0.0.1:9990"),
            url(false, "127.0.0.1", "127.0.0.1:9990")
        );
        assert_eq!(
            agent_url("http://127.0.0.1:9990/"),
            url(false, "127.0.0.1", "127.0.0.1:9990")
        );
        assert_eq!(
            agent_url("localhost:9990"),
            url(false, "localhost", "localhost:9990")
        );
        assert_eq!(
            agent_url("http://node-1"),
            url(false, "node-1", "node-1:80")
        );
        assert_eq!(
            agent_url("https://node-1"),
            url(true, "node-1", "node-1:443")
        );
        assert_eq!(
            agent_url("https://[fd00::7]:9990"),
            url(true, "fd00::7", "[fd00::7]:9990")
        );
        assert!(agent_url("ftp://x:1")
            .unwrap_err()
            .to_string()
            .contains("only http:// and https://"));
        assert!(agent_url("http://x:1/api")
            .unwrap_err()
            .to_string()
            .contains("HOST:PORT"));
    }
}
