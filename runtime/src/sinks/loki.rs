//! The Loki sink: events pushed to Loki's push API (`POST /loki/api/v1/push`, JSON) in
//! batches, one stream per event type with the labels `{job="sonde", node, type}` and the
//! event's JSON line as the log line.
//!
//! Pushing never blocks the agent: the sink keeps at most `maxBuffer` events while Loki is
//! slow or away, dropping the oldest (counted in `sonde_sink_events_dropped_total{sink}`), and
//! retries a failed push with exponential backoff; a push Loki refuses as malformed (4xx other
//! than 429) is dropped and counted rather than retried forever.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, UNIX_EPOCH};

use prometheus::{IntCounterVec, Opts, Registry};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::event::Batch;

/// `sinks.loki` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// The push endpoint, `http://HOST:PORT/loki/api/v1/push`.
    pub url: String,
    /// Events per push at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long an event may wait for a fuller batch.
    #[serde(
        default = "default_batch_wait",
        deserialize_with = "crate::config::duration"
    )]
    pub batch_wait: Duration,
    /// Events kept while Loki cannot take them; the oldest go first.
    #[serde(default = "default_max_buffer")]
    pub max_buffer: usize,
    /// Time one push may take.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::duration"
    )]
    pub timeout: Duration,
    /// The longest wait between two tries of a failing push (they start at 100ms and double).
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "crate::config::duration"
    )]
    pub max_backoff: Duration,
    /// `X-Scope-OrgID`, for a multi-tenant Loki.
    #[serde(default)]
    pub tenant: Option<String>,
}

fn default_batch_size() -> usize {
    1000
}
fn default_batch_wait() -> Duration {
    Duration::from_secs(1)
}
fn default_max_buffer() -> usize {
    10_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        Endpoint::parse(&self.url).map_err(|e| format!("sinks.loki.url: {e}"))?;
        if self.batch_size == 0 {
            return Err("sinks.loki.batchSize: must be at least 1".into());
        }
        if self.max_buffer < self.batch_size {
            return Err("sinks.loki.maxBuffer: must be at least batchSize".into());
        }
        Ok(())
    }
}

/// Where pushes go: `http://host:port/path` (Loki in a cluster speaks plain HTTP to its
/// agents; put a proxy in front for TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/loki/api/v1/push"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Endpoint {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// The sink's own counters, by `sink` label.
#[derive(Clone)]
pub struct SinkMetrics {
    pub sent: IntCounterVec,
    pub dropped: IntCounterVec,
    pub push_errors: IntCounterVec,
}

impl SinkMetrics {
    pub fn register(r: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["sink"]).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        SinkMetrics {
            sent: counter("sonde_sink_events_sent_total", "Events a remote sink accepted."),
            dropped: counter(
                "sonde_sink_events_dropped_total",
                "Events a remote sink gave up on: its buffer was full, or the receiver refused them.",
            ),
            push_errors: counter(
                "sonde_sink_push_errors_total",
                "Pushes to a remote sink that failed (and were retried unless refused).",
            ),
        }
    }
}

/// One event waiting to be pushed.
struct Line {
    time_ns: u128,
    kind: String,
    node: String,
    json: String,
}

/// Why a push did not go through.
enum PushError {
    /// Worth retrying: the connection, a timeout, 429 or 5xx.
    Retry(String),
    /// The receiver refused the batch itself (4xx): retrying would not help.
    Refused(String),
}

/// Runs the sink until its queue closes.
pub(crate) fn run(config: Config, mut rx: mpsc::Receiver<Batch>, metrics: SinkMetrics) {
    let Ok(endpoint) = Endpoint::parse(&config.url) else {
        return;
    };
    let sent = metrics.sent.with_label_values(&["loki"]);
    let dropped = metrics.dropped.with_label_values(&["loki"]);
    let errors = metrics.push_errors.with_label_values(&["loki"]);
    let mut buffer: VecDeque<Line> = VecDeque::new();
    let mut oldest_wait = Instant::now();
    let mut backoff = Duration::ZERO;
    let mut next_try = Instant::now();
    let mut closed = false;
    loop {
        // Take what is queued, waiting at most until the next push is due.
        let due = if buffer.is_empty() {
            None
        } else {
            Some((oldest_wait + config.batch_wait).max(next_try))
        };
        let batch = match due {
            _ if closed => None,
            None => match rx.blocking_recv() {
                Some(b) => Some(b),
                None => {
                    closed = true;
                    None
                }
            },
            Some(at) => {
                let mut got = None;
                // A full batch goes as soon as a push may be tried; during a backoff the
                // queue is still taken in (the buffer drops its oldest past `maxBuffer`).
                while Instant::now() < at
                    && (buffer.len() < config.batch_size || Instant::now() < next_try)
                {
                    match rx.try_recv() {
                        Ok(b) => {
                            got = Some(b);
                            break;
                        }
                        Err(TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(5)),
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                got
            }
        };
        if let Some(batch) = batch {
            if buffer.is_empty() {
                oldest_wait = Instant::now();
            }
            for e in batch.iter() {
                buffer.push_back(Line {
                    time_ns: e
                        .time
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos(),
                    kind: e.kind.type_name().to_string(),
                    node: e.node.to_string(),
                    json: e.to_json(),
                });
            }
            let over = buffer.len().saturating_sub(config.max_buffer);
            if over > 0 {
                buffer.drain(..over);
                dropped.inc_by(over as u64);
            }
            continue;
        }
        if buffer.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        let ready = buffer.len() >= config.batch_size
            || oldest_wait.elapsed() >= config.batch_wait
            || closed;
        if !ready || Instant::now() < next_try {
            if closed && Instant::now() < next_try {
                // Shutting down: one last try is all the agent waits for.
                std::thread::sleep(next_try - Instant::now());
            }
            continue;
        }
        let n = buffer.len().min(config.batch_size);
        let body = push_body(buffer.range(..n));
        match push(&endpoint, &config, &body) {
            Ok(()) => {
                buffer.drain(..n);
                sent.inc_by(n as u64);
                backoff = Duration::ZERO;
                next_try = Instant::now();
                oldest_wait = Instant::now();
            }
            Err(PushError::Refused(reason)) => {
                tracing::warn!(sink = "loki", %reason, events = n, "Loki refused a push; its events are dropped");
                buffer.drain(..n);
                dropped.inc_by(n as u64);
                errors.inc();
                oldest_wait = Instant::now();
            }
            Err(PushError::Retry(reason)) => {
                errors.inc();
                backoff = (backoff * 2).clamp(FIRST_BACKOFF, config.max_backoff.max(FIRST_BACKOFF));
                next_try = Instant::now() + backoff;
                tracing::warn!(sink = "loki", %reason, retry_in = ?backoff, "push to Loki failed");
                if closed {
                    // Do not hold the agent's shutdown for a Loki that is away.
                    dropped.inc_by(buffer.len() as u64);
                    return;
                }
            }
        }
    }
}

/// The push request's JSON: one stream per (node, type), values in time order.
fn push_body<'a>(lines: impl Iterator<Item = &'a Line>) -> Vec<u8> {
    let mut streams: BTreeMap<(&str, &str), Vec<[String; 2]>> = BTreeMap::new();
    for l in lines {
        streams
            .entry((&l.node, &l.kind))
            .or_default()
            .push([l.time_ns.to_string(), l.json.clone()]);
    }
    let streams: Vec<serde_json::Value> = streams
        .into_iter()
        .map(|((node, kind), values)| {
            serde_json::json!({
                "stream": {"job": "sonde", "node": node, "type": kind},
                "values": values,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "streams": streams })).unwrap_or_default()
}

/// One HTTP/1.1 POST; the status decides what happens to the batch.
fn push(endpoint: &Endpoint, config: &Config, body: &[u8]) -> Result<(), PushError> {
    let retry = |e: std::io::Error| PushError::Retry(e.to_string());
    let addr = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(retry)?
        .next()
        .ok_or_else(|| PushError::Retry(format!("{} has no address", endpoint.host)))?;
    let mut s = TcpStream::connect_timeout(&addr, config.timeout).map_err(retry)?;
    s.set_read_timeout(Some(config.timeout)).map_err(retry)?;
    s.set_write_timeout(Some(config.timeout)).map_err(retry)?;
    let tenant = config
        .tenant
        .as_ref()
        .map(|t| format!("X-Scope-OrgID: {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{tenant}Connection: close\r\n\r\n",
        endpoint.path,
        endpoint.host,
        endpoint.port,
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(retry)?;
    s.write_all(body).map_err(retry)?;
    let mut answer = Vec::new();
    s.take(64 << 10).read_to_end(&mut answer).map_err(retry)?;
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| PushError::Retry("no HTTP status in the answer".into()))?;
    let reason = || {
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        format!(
            "HTTP {status}: {}",
            body.chars().take(200).collect::<String>()
        )
    };
    match status {
        200..=299 => Ok(()),
        429 | 500..=599 => Err(PushError::Retry(reason())),
        _ => Err(PushError::Refused(reason())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("http://loki:3100/loki/api/v1/push"),
            Ok(Endpoint {
                host: "loki".into(),
                port: 3100,
                path: "/loki/api/v1/push".into()
            })
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9").unwrap().path,
            "/loki/api/v1/push"
        );
        assert!(Endpoint::parse("https://loki:3100")
            .unwrap_err()
            .contains("http://"));
        assert!(Endpoint::parse("http://loki:x/")
            .unwrap_err()
            .contains("port"));
    }

    #[test]
    fn one_stream_per_node_and_type() {
        let line = |t: u128, kind: &str| Line {
            time_ns: t,
            kind: kind.into(),
            node: "n1".into(),
            json: format!("{{\"type\":\"{kind}\"}}"),
        };
        let lines = [
            line(1, "packet_drop"),
            line(2, "tcp_reset"),
            line(3, "packet_drop"),
        ];
        let body: serde_json::Value = serde_json::from_slice(&push_body(lines.iter())).unwrap();
        let streams = body["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(
            streams[0]["stream"],
            serde_json::json!({"job": "sonde", "node": "n1", "type": "packet_drop"})
        );
        assert_eq!(
            streams[0]["values"],
            serde_json::json!([
                ["1", "{\"type\":\"packet_drop\"}"],
                ["3", "{\"type\":\"packet_drop\"}"]
            ])
        );
    }
}
