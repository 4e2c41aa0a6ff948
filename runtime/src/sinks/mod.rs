//! Event sinks: where enriched events leave the agent as JSON lines (stdout, a rotated
//! file). Each runs on its own thread fed by its own fan-out queue, and is restarted when
//! its config changes.

pub mod file;
pub mod loki;
pub mod stdout;

use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::ByteSize;
use crate::event::Batch;
use crate::fanout::FanOut;

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
    pub fn validate(&self) -> Result<(), String> {
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
            serde_json::to_writer(&mut line, event)?;
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

struct Running<C> {
    config: C,
    thread: JoinHandle<()>,
}

/// The running sinks.
pub struct Sinks {
    fanout: Arc<FanOut>,
    metrics: loki::SinkMetrics,
    stdout: Option<Running<stdout::Config>>,
    file: Option<Running<file::Config>>,
    loki: Option<Running<loki::Config>>,
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
        let wanted_stdout = config.stdout.enabled.then(|| config.stdout.clone());
        if self.stdout.as_ref().map(|r| &r.config) != wanted_stdout.as_ref() {
            stop(
                &self.fanout,
                "sink:stdout",
                self.stdout.take().map(|r| r.thread),
            );
            if let Some(c) = wanted_stdout {
                let mut rx = self.fanout.subscribe("sink:stdout", QUEUE_BATCHES);
                let metrics = self.metrics.clone();
                let thread = std::thread::spawn(move || {
                    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout());
                    write_batches(&mut rx, &mut out, "stdout", &metrics)
                });
                self.stdout = Some(Running { config: c, thread });
            }
        }
        if self.file.as_ref().map(|r| &r.config) != config.file.as_ref() {
            stop(
                &self.fanout,
                "sink:file",
                self.file.take().map(|r| r.thread),
            );
            if let Some(c) = config.file.clone() {
                match file::RotatingFile::open(&c) {
                    Ok(mut f) => {
                        let mut rx = self.fanout.subscribe("sink:file", QUEUE_BATCHES);
                        let metrics = self.metrics.clone();
                        let thread = std::thread::spawn(move || {
                            write_batches(&mut rx, &mut f, "file", &metrics)
                        });
                        self.file = Some(Running { config: c, thread });
                    }
                    Err(e) => {
                        tracing::error!(path = %c.path, error = %e, "file sink cannot open its file")
                    }
                }
            }
        }
        if self.loki.as_ref().map(|r| &r.config) != config.loki.as_ref() {
            stop(
                &self.fanout,
                "sink:loki",
                self.loki.take().map(|r| r.thread),
            );
            if let Some(c) = config.loki.clone() {
                let rx = self.fanout.subscribe("sink:loki", QUEUE_BATCHES);
                let metrics = self.metrics.clone();
                let config = c.clone();
                let thread = std::thread::spawn(move || loki::run(config, rx, metrics));
                self.loki = Some(Running { config: c, thread });
            }
        }
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
