//! The Loki sink: events pushed to Loki's push API (`POST /loki/api/v1/push`, JSON) in
//! batches, one stream per event type with the labels `{job="sonde", node, type}` and the
//! event's JSON line as the log line.
//!
//! Pushing never blocks the agent: the sink keeps at most `maxBuffer` events while Loki is
//! slow or away, dropping the oldest (counted in `sonde_sink_events_dropped_total{sink}`), and
//! retries a failed push with exponential backoff; a push Loki refuses as malformed (4xx other
//! than 429) is dropped and counted rather than retried forever.
//!
//! Pushes go through `ureq` over HTTP or HTTPS (trusting `caFile`, else Mozilla's roots;
//! presenting `certFile`/`keyFile`), with a bearer token read from `bearerTokenFile` at each
//! push (projected tokens rotate) or basic auth.

use crate::config::Invalid;
use std::collections::{BTreeMap, VecDeque};
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
        deserialize_with = "crate::units::duration"
    )]
    pub batch_wait: Duration,
    /// Events kept while Loki cannot take them; the oldest go first.
    #[serde(default = "default_max_buffer")]
    pub max_buffer: usize,
    /// Time one push may take.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::units::duration"
    )]
    pub timeout: Duration,
    /// The longest wait between two tries of a failing push (they start at 100ms and double).
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "crate::units::duration"
    )]
    pub max_backoff: Duration,
    /// `X-Scope-OrgID`, for a multi-tenant Loki.
    #[serde(default)]
    pub tenant: Option<String>,
    /// PEM CA certificates trusted for an `https://` url (empty: Mozilla's roots).
    #[serde(default)]
    pub ca_file: String,
    /// A PEM client certificate (and its key) presented to an `https://` url.
    #[serde(default)]
    pub cert_file: String,
    #[serde(default)]
    pub key_file: String,
    /// A file holding a bearer token, read at each push.
    #[serde(default)]
    pub bearer_token_file: String,
    /// Basic auth, the password from a file read at each push.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
}

/// `sinks.loki.basicAuth`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicAuth {
    pub username: String,
    pub password_file: String,
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
    pub fn validate(&self) -> Result<(), Invalid> {
        let endpoint = Endpoint::parse(&self.url)
            .map_err(|e| Invalid::new("sinks.loki.url", e.to_string()))?;
        if let Some(t) = &self.tenant {
            ureq::http::HeaderValue::from_str(t).map_err(|_| {
                Invalid::new(
                    "sinks.loki.tenant",
                    "not a valid HTTP header value (control characters?)",
                )
            })?;
        }
        if !endpoint.https {
            for (key, value) in [
                ("caFile", &self.ca_file),
                ("certFile", &self.cert_file),
                ("keyFile", &self.key_file),
            ] {
                if !value.is_empty() {
                    return Err(Invalid::new(
                        format!("sinks.loki.{key}"),
                        "only for an https:// url",
                    ));
                }
            }
        }
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(Invalid::new(
                "sinks.loki.certFile and sinks.loki.keyFile",
                "give both or neither",
            ));
        }
        if !self.bearer_token_file.is_empty() && self.basic_auth.is_some() {
            return Err(Invalid::new(
                "sinks.loki.bearerTokenFile and sinks.loki.basicAuth",
                "one or the other",
            ));
        }
        if let Some(b) = &self.basic_auth {
            if b.username.is_empty() || b.username.contains(':') {
                return Err(Invalid::new(
                    "sinks.loki.basicAuth.username",
                    "must be set, without ':'",
                ));
            }
        }
        self.tls()?;
        if self.batch_size == 0 {
            return Err(Invalid::new("sinks.loki.batchSize", "must be at least 1"));
        }
        if self.max_buffer < self.batch_size {
            return Err(Invalid::new(
                "sinks.loki.maxBuffer",
                "must be at least batchSize",
            ));
        }
        Ok(())
    }
}

/// Where pushes go: `http(s)://host:port/path` (the path defaults to Loki's push API).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    https: bool,
    /// The whole URL pushes are sent to.
    url: String,
}

/// What is wrong with the Loki sink's settings.
#[derive(Debug, thiserror::Error)]
pub enum LokiError {
    #[error("{url:?} is not a URL: {source}")]
    NotUrl {
        url: String,
        #[source]
        source: ureq::http::uri::InvalidUri,
    },
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{url:?}: bad port {port:?}")]
    Port { url: String, port: String },
    /// A file of a secret (bearer token, password) that cannot be read.
    #[error("sinks.loki.{key} {path}: {source}")]
    Secret {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, LokiError> {
        let uri: ureq::http::Uri = url.parse().map_err(|source| LokiError::NotUrl {
            url: url.to_string(),
            source,
        })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(LokiError::Scheme(url.to_string())),
        };
        if uri.host().unwrap_or_default().is_empty() {
            return Err(LokiError::NoHost(url.to_string()));
        }
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        if let Some((_, port)) = authority.rsplit_once(':') {
            if !port.ends_with(']') && port.parse::<u16>().is_err() {
                return Err(LokiError::Port {
                    url: url.to_string(),
                    port: port.to_string(),
                });
            }
        }
        let url = match uri.path() {
            "" | "/" => format!("{}/loki/api/v1/push", url.trim_end_matches('/')),
            _ => url.to_string(),
        };
        Ok(Endpoint { https, url })
    }
}

impl Config {
    /// The TLS settings of pushes, from the files named (read now).
    fn tls(&self) -> Result<ureq::tls::TlsConfig, Invalid> {
        use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
        let invalid = |key: &str, path: &str, e: &dyn std::fmt::Display| {
            Invalid::new(format!("sinks.loki.{key}"), format!("{path}: {e}"))
        };
        let read = |key: &str, path: &str| std::fs::read(path).map_err(|e| invalid(key, path, &e));
        let certs = |key: &str, path: &str| -> Result<Vec<Certificate<'static>>, Invalid> {
            let pem = read(key, path)?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(invalid(key, path, &e))),
                })
                .collect::<Result<_, _>>()?;
            if certs.is_empty() {
                return Err(invalid(key, path, &"no certificate in it"));
            }
            Ok(certs)
        };
        let mut builder = TlsConfig::builder();
        if !self.ca_file.is_empty() {
            builder =
                builder.root_certs(RootCerts::new_with_certs(&certs("caFile", &self.ca_file)?));
        }
        if !self.cert_file.is_empty() {
            let chain = certs("certFile", &self.cert_file)?;
            let key = PrivateKey::from_pem(&read("keyFile", &self.key_file)?)
                .map_err(|e| invalid("keyFile", &self.key_file, &e))?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        Ok(builder.build())
    }

    /// The `Authorization` header of a push, read from its file now.
    fn authorization(&self) -> Result<Option<String>, LokiError> {
        let secret = |key: &'static str, path: &str| {
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|source| LokiError::Secret {
                    key,
                    path: path.to_string(),
                    source,
                })
        };
        if !self.bearer_token_file.is_empty() {
            let token = secret("bearerTokenFile", &self.bearer_token_file)?;
            return Ok(Some(format!("Bearer {token}")));
        }
        if let Some(b) = &self.basic_auth {
            use base64::Engine;
            let password = secret("basicAuth.passwordFile", &b.password_file)?;
            let pair = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", b.username));
            return Ok(Some(format!("Basic {pair}")));
        }
        Ok(None)
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
            sent: counter(
                "sonde_sink_events_sent_total",
                "Events a remote sink accepted.",
            ),
            dropped: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "sonde_sink_events_dropped_total",
                        "Events a sink lost, by reason: buffer_full (Loki away longer than its buffer holds), refused (Loki refused the push), shutdown (unsent when the agent stopped), write_error (the file or stdout could not be written).",
                    ),
                    &["sink", "reason"],
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("registered once");
                for (sink, reasons) in [
                    ("loki", &["buffer_full", "refused", "shutdown"][..]),
                    ("file", &["write_error"][..]),
                    ("stdout", &["write_error"][..]),
                ] {
                    for reason in reasons {
                        c.with_label_values(&[sink, reason]);
                    }
                }
                c
            },
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
    // Checked when the config was read; files that went away since are said here.
    let tls = match config.tls() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(sink = "loki", error = %e, "the Loki sink cannot start");
            return;
        }
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into();
    let sent = metrics.sent.with_label_values(&["loki"]);
    let full = metrics.dropped.with_label_values(&["loki", "buffer_full"]);
    let refused = metrics.dropped.with_label_values(&["loki", "refused"]);
    let unsent = metrics.dropped.with_label_values(&["loki", "shutdown"]);
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
                full.inc_by(over as u64);
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
        match push(&agent, &endpoint, &config, body) {
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
                refused.inc_by(n as u64);
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
                    unsent.inc_by(buffer.len() as u64);
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

/// One POST; the status decides what happens to the batch.
fn push(
    agent: &ureq::Agent,
    endpoint: &Endpoint,
    config: &Config,
    body: Vec<u8>,
) -> Result<(), PushError> {
    let mut request = agent
        .post(&endpoint.url)
        .header("Content-Type", "application/json");
    if let Some(t) = &config.tenant {
        request = request.header("X-Scope-OrgID", t);
    }
    if let Some(auth) = config
        .authorization()
        .map_err(|e| PushError::Retry(e.to_string()))?
    {
        request = request.header("Authorization", auth);
    }
    let mut answer = request
        .send(&body[..])
        .map_err(|e| PushError::Retry(e.to_string()))?;
    let status = answer.status().as_u16();
    let reason = |answer: &mut ureq::http::Response<ureq::Body>| {
        let body = answer
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        format!(
            "HTTP {status}: {}",
            body.trim().chars().take(200).collect::<String>()
        )
    };
    match status {
        200..=299 => Ok(()),
        429 | 500..=599 => Err(PushError::Retry(reason(&mut answer))),
        _ => Err(PushError::Refused(reason(&mut answer))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("http://loki:3100/loki/api/v1/push").ok(),
            Some(Endpoint {
                https: false,
                url: "http://loki:3100/loki/api/v1/push".into()
            })
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9").unwrap().url,
            "http://127.0.0.1:9/loki/api/v1/push"
        );
        assert!(Endpoint::parse("https://loki:3100").unwrap().https);
        assert!(Endpoint::parse("ftp://loki:3100")
            .unwrap_err()
            .to_string()
            .contains("http:// or https://"));
        assert!(Endpoint::parse("http://loki:x/").is_err());
    }

    #[test]
    fn settings_are_checked_with_the_key_named() {
        let config = |extra: &str| -> Config {
            serde_yaml_ng::from_str(&format!("url: https://loki:3100\n{extra}")).unwrap()
        };
        for (extra, says) in [
            ("tenant: \"a\\nb\"\n", "sinks.loki.tenant"),
            (
                "certFile: c.pem\n",
                "sinks.loki.certFile and sinks.loki.keyFile",
            ),
            (
                "caFile: /nonexistent/ca.pem\n",
                "sinks.loki.caFile: /nonexistent/ca.pem",
            ),
            (
                "bearerTokenFile: t\nbasicAuth: {username: u, passwordFile: p}\n",
                "one or the other",
            ),
        ] {
            let e = config(extra).validate().unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{extra}: {e}");
        }
        let plain: Config = serde_yaml_ng::from_str("url: http://loki\ncaFile: ca.pem\n").unwrap();
        let e = plain.validate().unwrap_err();
        assert_eq!(e.field, "sinks.loki.caFile");
        assert_eq!(e.reason, "only for an https:// url");
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
