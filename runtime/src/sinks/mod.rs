//! Event sinks: where enriched events leave the agent (stdout and a rotated file as JSON
//! lines, Loki). Every kind implements [`Sink`]; each runs on its own thread fed by its own
//! fan-out queue, and is restarted when its config changes.

pub mod file;
pub mod loki;
pub mod stdout;

use crate::config::Invalid;
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::event::Batch;
use crate::fanout::FanOut;
use crate::units::ByteSize;

/// Batches a sink may have queued before it starts losing them (a batch holds up to 1024
/// events, so this bounds a stuck sink's memory to a few MiB).
const QUEUE_BATCHES: usize = 32;

/// `sinks:` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub stdout: stdout::Config,
    pub file: Option<file::Config>,
    pub loki: Option<loki::Config>,
}

impl SinksConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(f) = &self.file {
            f.validate()?;
        }
        if let Some(l) = &self.loki {
            l.validate()?;
        }
        Ok(())
    }
}

/// Where a sink's lines go: written one by one, flushed once per batch, so a batch of events
/// costs one write(2) or a few, not one per event.
pub(crate) trait LineOutput {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
    /// After a failed write or flush: forgets what the failed batch left buffered (and, for
    /// a file, any part of it that reached the file), so that the next batch starts on a
    /// whole line.
    fn discard(&mut self) {}
}

impl<W: Write> LineOutput for std::io::BufWriter<W> {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.write_all(line)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Write::flush(self)
    }
}

/// Writes every event of every batch as one JSON line until the queue closes. A batch that
/// cannot be written (a full disk, a closed pipe) is lost whole and counted in
/// `dropped{sink, reason="write_error"}`; the next batch is tried as usual, so the sink
/// recovers by itself when the output takes lines again.
fn write_batches(
    rx: &mut mpsc::Receiver<Batch>,
    out: &mut impl LineOutput,
    sink: &str,
    metrics: &loki::SinkMetrics,
) {
    let mut line = Vec::with_capacity(512);
    let lost = metrics.dropped.with_label_values(&[sink, "write_error"]);
    let mut failing = false;
    while let Some(batch) = rx.blocking_recv() {
        let written = batch.iter().try_for_each(|event| {
            line.clear();
            event.write_json(&mut line);
            line.push(b'\n');
            out.write_line(&line)
        });
        match written.and_then(|()| out.flush()) {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(sink, "event sink writes again");
            }
            Ok(()) => {}
            Err(e) => {
                out.discard();
                lost.inc_by(batch.len() as u64);
                if !failing {
                    failing = true;
                    tracing::error!(sink, error = %e, "event sink cannot write; its events are dropped (counted) until it can");
                }
            }
        }
    }
}

/// A sink: where events leave the agent. Each kind says which part of `sinks:` configures it
/// and how it starts; [`Sinks::apply`] runs every kind the same way: on a thread of its own,
/// fed by its own fan-out queue (`sink:<name>`, so a slow sink loses only its own events),
/// restarted when its part of the config changes. A new sink implements this and is listed
/// in [`Sinks`].
pub(crate) trait Sink {
    /// Its name: the `sink` label of its series, and `sink:<name>` in the fan-out.
    const NAME: &'static str;
    type Config: Clone + PartialEq + Send + 'static;

    /// Its config, when `sinks:` enables it.
    fn wanted(config: &SinksConfig) -> Option<Self::Config>;

    /// Makes what its thread runs with its queue (opening a file, say), or says why it
    /// cannot start.
    fn start(config: &Self::Config, metrics: &loki::SinkMetrics) -> Result<Worker, SinkError>;
}

/// Why a sink cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error("file sink cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A sink's thread body: takes batches from its queue until the queue closes.
pub(crate) type Worker = Box<dyn FnOnce(mpsc::Receiver<Batch>) + Send>;

pub(crate) struct Stdout;

impl Sink for Stdout {
    const NAME: &'static str = "stdout";
    type Config = stdout::Config;

    fn wanted(config: &SinksConfig) -> Option<stdout::Config> {
        config.stdout.enabled.then(|| config.stdout.clone())
    }

    fn start(_: &stdout::Config, metrics: &loki::SinkMetrics) -> Result<Worker, SinkError> {
        let metrics = metrics.clone();
        Ok(Box::new(move |mut rx| {
            let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout());
            write_batches(&mut rx, &mut out, Self::NAME, &metrics)
        }))
    }
}

pub(crate) struct File;

impl Sink for File {
    const NAME: &'static str = "file";
    type Config = file::Config;

    fn wanted(config: &SinksConfig) -> Option<file::Config> {
        config.file.clone()
    }

    fn start(config: &file::Config, metrics: &loki::SinkMetrics) -> Result<Worker, SinkError> {
        let mut f = file::RotatingFile::open(config).map_err(|source| SinkError::Open {
            path: config.path.clone(),
            source,
        })?;
        let metrics = metrics.clone();
        Ok(Box::new(move |mut rx| {
            write_batches(&mut rx, &mut f, Self::NAME, &metrics)
        }))
    }
}

pub(crate) struct Loki;

impl Sink for Loki {
    const NAME: &'static str = "loki";
    type Config = loki::Config;

    fn wanted(config: &SinksConfig) -> Option<loki::Config> {
        config.loki.clone()
    }

    fn start(config: &loki::Config, metrics: &loki::SinkMetrics) -> Result<Worker, SinkError> {
        let (config, metrics) = (config.clone(), metrics.clone());
        Ok(Box::new(move |rx| loki::run(config, rx, metrics)))
    }
}

/// A sink of kind `S` that runs, with the config it was started with.
struct Running<S: Sink> {
    config: S::Config,
    thread: JoinHandle<()>,
}

/// The running sinks.
pub struct Sinks {
    fanout: Arc<FanOut>,
    metrics: loki::SinkMetrics,
    stdout: Option<Running<Stdout>>,
    file: Option<Running<File>>,
    loki: Option<Running<Loki>>,
}

impl Sinks {
    pub fn new(fanout: Arc<FanOut>, metrics: loki::SinkMetrics) -> Self {
        Sinks {
            fanout,
            metrics,
            stdout: None,
            file: None,
            loki: None,
        }
    }

    /// Starts, stops or restarts sinks so that they match the config.
    pub fn apply(&mut self, config: &SinksConfig) {
        apply(&mut self.stdout, config, &self.fanout, &self.metrics);
        apply(&mut self.file, config, &self.fanout, &self.metrics);
        apply(&mut self.loki, config, &self.fanout, &self.metrics);
    }
}

/// Starts, stops or restarts one sink so that it matches the config.
fn apply<S: Sink>(
    running: &mut Option<Running<S>>,
    config: &SinksConfig,
    fanout: &Arc<FanOut>,
    metrics: &loki::SinkMetrics,
) {
    let wanted = S::wanted(config);
    if running.as_ref().map(|r| &r.config) == wanted.as_ref() {
        return;
    }
    let consumer = format!("sink:{}", S::NAME);
    stop(fanout, &consumer, running.take().map(|r| r.thread));
    let Some(c) = wanted else {
        return;
    };
    match S::start(&c, metrics) {
        Ok(work) => {
            let rx = fanout.subscribe(&consumer, QUEUE_BATCHES);
            let thread = std::thread::spawn(move || work(rx));
            *running = Some(Running { config: c, thread });
        }
        Err(e) => tracing::error!(sink = S::NAME, error = %e, "event sink cannot start"),
    }
}

/// Ends a sink: closing its queue ends its thread once the queued batches are written.
fn stop(fanout: &FanOut, name: &str, thread: Option<JoinHandle<()>>) {
    fanout.unsubscribe(name);
    if let Some(t) = thread {
        let _ = t.join();
    }
}

/// `ByteSize` default for file rotation.
pub(crate) fn default_max_size() -> ByteSize {
    ByteSize(100 << 20)
}
