//! `GET /api/v1/events?probes=packet_drop,tcp_reset[&unlimited=10m]`: the agent's enriched
//! events as they happen, one JSON object per line (the stdout sink's format), for `sonde
//! trace --agent`.
//!
//! A stream takes the events its probes emit under their rate limits, the same events the
//! sinks get: opening one changes nothing for the other consumers. `unlimited=DURATION` (at
//! most `api.maxUnlimited`) asks for every event: the probes' in-kernel rate limits are lifted
//! for that long while the stream is open, for every consumer (renewed every few seconds, so
//! they return on their own once the stream ends or its time is up).
//!
//! Streams are bounded: at most `api.maxStreams` are open at once (more are answered 503), and
//! a stream whose reader falls further behind than `api.streamQueue` (queued events,
//! estimated in bytes) is ended. Both are counted in
//! `sonde_api_streams_closed_total{reason}`, the events a stream lost in
//! `sonde_consumer_events_dropped_total{consumer="api:events"}` (one series for all streams).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::fanout::{BytesReceiver, FanOut};
use crate::metrics::Metrics;
use crate::probes::Probes;
use crate::server::ApiConfig;

/// The unlimited event rate of a streamed probe lasts this long unless renewed...
const UNLIMITED_FOR: Duration = Duration::from_secs(15);
/// ... and is renewed this often while the stream is open and its time is not up.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The consumer label of every stream's lost events.
const CONSUMER: &str = "api:events";

#[derive(Clone)]
struct StreamState {
    fanout: Arc<FanOut>,
    probes: Arc<Mutex<Probes>>,
    metrics: Arc<Metrics>,
    limits: ApiConfig,
    open: Arc<AtomicUsize>,
}

pub fn router(
    fanout: Arc<FanOut>,
    probes: Arc<Mutex<Probes>>,
    metrics: Arc<Metrics>,
    limits: ApiConfig,
) -> Router {
    Router::new()
        .route("/api/v1/events", get(events))
        .with_state(StreamState {
            fanout,
            probes,
            metrics,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
        })
}

/// What a stream asks for.
#[derive(Debug, PartialEq)]
struct Request {
    probes: Vec<String>,
    /// How long to lift the probes' rate limits, if asked.
    unlimited: Option<Duration>,
}

/// Why a stream's query was refused (the body of its 400).
#[derive(Debug, PartialEq, thiserror::Error)]
enum RequestError {
    #[error("unlimited: {0}")]
    Unlimited(#[from] crate::units::UnitError),
    #[error("unlimited: {asked:?} is longer than this agent allows (api.maxUnlimited: {max:?})")]
    TooLong { asked: Duration, max: Duration },
    #[error("unknown parameter {0:?}; the parameters are probes and unlimited")]
    UnknownParameter(String),
    #[error("probes: name at least one probe (probes=packet_drop,tcp_reset)")]
    NoProbes,
}

/// The request of `probes=a,b&unlimited=10m` (names need no escaping).
fn parse_request(query: Option<&str>, max_unlimited: Duration) -> Result<Request, RequestError> {
    let mut names = Vec::new();
    let mut unlimited = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("probes", list)) => names.extend(
                list.replace("%2C", ",")
                    .replace("%2c", ",")
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from),
            ),
            Some(("unlimited", d)) => {
                let d = crate::units::parse_duration(d)?;
                if d > max_unlimited {
                    return Err(RequestError::TooLong {
                        asked: d,
                        max: max_unlimited,
                    });
                }
                unlimited = (!d.is_zero()).then_some(d);
            }
            _ => return Err(RequestError::UnknownParameter(pair.to_string())),
        }
    }
    if names.is_empty() {
        return Err(RequestError::NoProbes);
    }
    Ok(Request {
        probes: names,
        unlimited,
    })
}

/// Lifts the event rate limit of `probes` for `duration`; the reason when one is not running.
fn lift_rate_limits(
    probes: &Mutex<Probes>,
    names: &[String],
    duration: Duration,
) -> Result<(), crate::probes::ControlError> {
    let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
    names
        .iter()
        .try_for_each(|name| p.override_event_rate(name, 0, duration))
}

/// What a stream holds on to: its queue, its place among the open streams, and the task
/// that keeps its probes unlimited.
struct Open {
    queue: BytesReceiver,
    renew: Option<tokio::task::JoinHandle<()>>,
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(r) = &self.renew {
            r.abort();
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.api_streams.dec();
        let reason = if self.queue.fell_behind() {
            "behind"
        } else {
            "ended"
        };
        self.metrics
            .api_streams_closed
            .with_label_values(&[reason])
            .inc();
    }
}

async fn events(State(s): State<StreamState>, RawQuery(query): RawQuery) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let request = match parse_request(query.as_deref(), s.limits.max_unlimited) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    // A place among the open streams, or 503.
    let max = s.limits.max_streams;
    if s.open
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_err()
    {
        s.metrics
            .api_streams_closed
            .with_label_values(&["over_cap"])
            .inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{max} event streams are open, the most this agent serves (api.maxStreams)\n"),
        )
            .into_response();
    }
    s.metrics.api_streams.inc();
    let consumer = format!("{CONSUMER}:{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let queue = s.fanout.subscribe_bytes(
        &consumer,
        s.limits.stream_queue.0,
        s.metrics
            .consumer_events_dropped
            .with_label_values(&[CONSUMER]),
        Some(request.probes.clone()),
    );
    let mut open = Open {
        queue,
        renew: None,
        open: Arc::clone(&s.open),
        metrics: Arc::clone(&s.metrics),
    };
    // Every probe asked for must be running; with `unlimited`, their rate limits go.
    let probes = Arc::clone(&s.probes);
    let wanted = request.probes.clone();
    let first = request.unlimited.map(|u| u.min(UNLIMITED_FOR));
    let checked = tokio::task::spawn_blocking(move || match first {
        Some(d) => lift_rate_limits(&probes, &wanted, d),
        None => {
            let p = probes.lock().unwrap_or_else(|e| e.into_inner());
            wanted.iter().try_for_each(|name| p.check_running(name))
        }
    })
    .await;
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
    if let Some(unlimited) = request.unlimited {
        let probes = Arc::clone(&s.probes);
        let names = request.probes.clone();
        let until = Instant::now() + unlimited;
        open.renew = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Never past the time asked for.
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                let (p, n) = (Arc::clone(&probes), names.clone());
                let d = left.min(UNLIMITED_FOR);
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || lift_rate_limits(&p, &n, d)).await
                {
                    tracing::warn!(error = %e, "event stream: cannot keep its probes unlimited");
                }
            }
        }));
    }
    let body = futures_util::stream::unfold(open, |mut open| async move {
        let batch = open.queue.recv().await?;
        let mut text = String::with_capacity(batch.len() * 300);
        for e in batch.iter() {
            text += &e.to_json();
            text.push('\n');
        }
        Some((Ok::<_, Infallible>(Bytes::from(text)), open))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(600);

    #[test]
    fn requests_from_the_query() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_request(Some("probes=packet_drop,tcp_reset"), MAX),
            Ok(Request {
                probes: names(&["packet_drop", "tcp_reset"]),
                unlimited: None
            })
        );
        assert_eq!(
            parse_request(
                Some("probes=packet_drop%2Ctcp_reset&probes=tcp_retrans&unlimited=2m"),
                MAX
            ),
            Ok(Request {
                probes: names(&["packet_drop", "tcp_reset", "tcp_retrans"]),
                unlimited: Some(Duration::from_secs(120))
            })
        );
        let err = |q| parse_request(q, MAX).unwrap_err().to_string();
        assert!(err(None).contains("at least one"));
        assert!(err(Some("probes=")).contains("at least one"));
        assert!(err(Some("probe=x")).contains("unknown parameter"));
        assert!(err(Some("probes=x&unlimited=11m")).contains("api.maxUnlimited"));
        assert!(err(Some("probes=x&unlimited=soon")).starts_with("unlimited: "));
    }
}
