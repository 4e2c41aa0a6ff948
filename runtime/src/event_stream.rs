//! `GET /api/v1/events?probes=packet_drop,tcp_reset`: the agent's enriched events as they
//! happen, one JSON object per line (the stdout sink's format), for `sonde trace --agent`.
//!
//! A stream takes every event of its probes: while it is open, the probes' in-kernel rate
//! limit is lifted (renewed every few seconds, so it returns on its own once the last stream
//! ends). Batches a slow reader cannot take are counted in
//! `sonde_consumer_events_dropped_total{consumer="api:events:<n>"}`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::mpsc;

use crate::event::Batch;
use crate::fanout::FanOut;
use crate::metrics::Metrics;
use crate::probes::Probes;

/// Batches queued for one stream.
const QUEUE_BATCHES: usize = 4096;
/// The unlimited event rate of a streamed probe lasts this long unless renewed...
const UNLIMITED_FOR: Duration = Duration::from_secs(15);
/// ... and is renewed this often while the stream is open.
const RENEW_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct StreamState {
    fanout: Arc<FanOut>,
    probes: Arc<Mutex<Probes>>,
    metrics: Arc<Metrics>,
}

pub fn router(fanout: Arc<FanOut>, probes: Arc<Mutex<Probes>>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/api/v1/events", get(events))
        .with_state(StreamState {
            fanout,
            probes,
            metrics,
        })
}

/// The probe names of `probes=a,b` (the only parameter; names need no escaping).
fn probe_names(query: Option<&str>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
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
            _ => {
                return Err(format!(
                    "unknown parameter {pair:?}; the one parameter is probes"
                ))
            }
        }
    }
    if names.is_empty() {
        return Err("probes: name at least one probe (probes=packet_drop,tcp_reset)".into());
    }
    Ok(names)
}

/// Lifts the event rate limit of `probes` for a while; the reason when one is not running.
fn lift_rate_limits(probes: &Mutex<Probes>, names: &[String]) -> Result<(), String> {
    let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
    names
        .iter()
        .try_for_each(|name| p.override_event_rate(name, 0, UNLIMITED_FOR))
}

/// What a stream holds on to: its queue, and the task that keeps its probes unlimited.
struct Open {
    queue: mpsc::Receiver<Batch>,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

async fn events(State(s): State<StreamState>, RawQuery(query): RawQuery) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let names = match probe_names(query.as_deref()) {
        Ok(n) => n,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let probes = Arc::clone(&s.probes);
    let wanted = names.clone();
    let lifted = tokio::task::spawn_blocking(move || lift_rate_limits(&probes, &wanted)).await;
    match lifted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
    let consumer = format!("api:events:{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let queue = s.fanout.subscribe_counted(
        &consumer,
        QUEUE_BATCHES,
        s.metrics
            .consumer_events_dropped
            .with_label_values(&[consumer.as_str()]),
        Some(names.clone()),
    );
    let probes = Arc::clone(&s.probes);
    let renew = tokio::spawn(async move {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (p, n) = (Arc::clone(&probes), names.clone());
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || lift_rate_limits(&p, &n)).await
            {
                tracing::warn!(error = %e, "event stream: cannot keep its probes unlimited");
            }
        }
    });
    let open = Open { queue, renew };
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

    #[test]
    fn probe_names_from_the_query() {
        assert_eq!(
            probe_names(Some("probes=packet_drop,tcp_reset")),
            Ok(vec!["packet_drop".to_string(), "tcp_reset".to_string()])
        );
        assert_eq!(
            probe_names(Some("probes=packet_drop%2Ctcp_reset&probes=tcp_retrans")),
            Ok(vec![
                "packet_drop".to_string(),
                "tcp_reset".to_string(),
                "tcp_retrans".to_string()
            ])
        );
        assert!(probe_names(None).unwrap_err().contains("at least one"));
        assert!(probe_names(Some("probes="))
            .unwrap_err()
            .contains("at least one"));
        assert!(probe_names(Some("probe=x"))
            .unwrap_err()
            .contains("unknown parameter"));
    }
}
