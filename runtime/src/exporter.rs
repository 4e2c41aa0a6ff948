//! HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and the JSON
//! API under `/api/v1/`.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::Metrics;
use crate::plugin_host::PluginDirs;
use crate::probes::Probes;
use crate::topology::Topology;

#[derive(Clone)]
pub struct ApiState {
    pub probes: Arc<Mutex<Probes>>,
    pub metrics: Arc<Metrics>,
    pub topology: Arc<dyn Topology>,
    pub plugins: Option<Arc<PluginDirs>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/probes", get(probes))
        .route("/api/v1/plugins", get(plugins))
        .route("/api/v1/tcp_rtt", get(tcp_rtt))
        .route("/api/v1/flows", get(flows))
        .with_state(state)
}

/// The content type of the text exposition format.
const EXPOSITION_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let gzip = accepts_gzip(&headers);
    // Reading kernel maps is a few syscalls per key, encoding thousands of series is
    // milliseconds of CPU: keep both off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        s.probes.lock().unwrap_or_else(|e| e.into_inner()).sync();
        let extra = s
            .plugins
            .as_ref()
            .map(|p| p.host().host.gather())
            .unwrap_or_default();
        let text = s.metrics.encode(extra);
        let body = match gzip.then(|| compress(text.as_bytes())) {
            Some(Ok(gz)) => Body::Gzip(gz),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "compressing /metrics failed; sent plain");
                Body::Plain(text)
            }
            None => Body::Plain(text),
        };
        // The exposition is built afresh each scrape in many small allocations, on whichever
        // thread of the blocking pool runs it: hand what was freed back to the system, or
        // every thread's allocator arena keeps the peak of its largest scrape for good.
        crate::memory::release_freed_memory();
        body
    })
    .await;
    let mut response = match body {
        Ok(Body::Gzip(gz)) => (
            [
                (header::CONTENT_TYPE, EXPOSITION_TYPE),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            gz,
        )
            .into_response(),
        Ok(Body::Plain(text)) => ([(header::CONTENT_TYPE, EXPOSITION_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    };
    response.headers_mut().insert(
        header::VARY,
        header::HeaderValue::from_static("accept-encoding"),
    );
    response
}

enum Body {
    Gzip(Vec<u8>),
    Plain(String),
}

/// Whether the client takes a gzip body (`Accept-Encoding: gzip`, as Prometheus sends, and
/// not `gzip;q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// gzip at the fastest level: the exposition is repetitive text, which it shrinks about
/// tenfold for a millisecond or two of CPU per megabyte.
fn compress(text: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 8),
        flate2::Compression::fast(),
    );
    gz.write_all(text)?;
    gz.finish()
}

/// The probes' states, read off the async workers: the probes' lock is held for the length
/// of a sync or a probe's load.
async fn probe_status(s: &ApiState) -> Vec<crate::probes::ProbeStatus> {
    let probes = Arc::clone(&s.probes);
    tokio::task::spawn_blocking(move || probes.lock().unwrap_or_else(|e| e.into_inner()).status())
        .await
        .unwrap_or_default()
}

/// Ready means serving: the topology has its first view and the bundles present at start
/// were loaded or refused. Probes that failed to load are said (they are tried again with
/// backoff, and `sonde_probe_up` and `/api/v1/probes` show them) but do not hold it.
async fn readyz(State(s): State<ApiState>) -> Response {
    if let Err(why) = s.topology.readiness() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("topology: {why}\n"),
        )
            .into_response();
    }
    if let Some(Err(why)) = s.plugins.as_ref().map(|p| p.readiness()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("plugins: {why}\n")).into_response();
    }
    let mut body = String::from("ready\n");
    if let Some(stale) = s.topology.stale() {
        body.push_str(&format!("topology: {stale}\n"));
    }
    let failed: Vec<String> = probe_status(&s)
        .await
        .into_iter()
        .filter(|p| p.state == "failed")
        .map(|p| {
            let retry = p
                .retry_in_seconds
                .map_or(String::new(), |r| format!(" (tried again in {r}s)"));
            format!("{}: {}{retry}", p.name, p.error.unwrap_or_default())
        })
        .collect();
    if !failed.is_empty() {
        body.push_str(&format!("probes failed: {}\n", failed.join("; ")));
    }
    (StatusCode::OK, body).into_response()
}

async fn probes(State(s): State<ApiState>) -> Response {
    Json(probe_status(&s).await).into_response()
}

async fn plugins(State(s): State<ApiState>) -> Response {
    let status = s.plugins.as_ref().map(|p| p.status()).unwrap_or_default();
    Json(status).into_response()
}

/// The tcp_rtt probe's live flows: srtt, cwnd and windows per connection.
async fn tcp_rtt(State(s): State<ApiState>) -> Response {
    let probes = Arc::clone(&s.probes);
    let rows = tokio::task::spawn_blocking(move || {
        probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .table("tcp_rtt")
    })
    .await;
    json_rows(rows)
}

/// The flow probe's table: packets and bytes per 5-tuple with the pods at both ends, and the
/// RTT of TCP flows `tcp_rtt` tracks.
async fn flows(State(s): State<ApiState>) -> Response {
    let probes = Arc::clone(&s.probes);
    let rows = tokio::task::spawn_blocking(move || {
        crate::probes::flow::flows(&probes.lock().unwrap_or_else(|e| e.into_inner()))
    })
    .await;
    json_rows(rows)
}

fn json_rows<T: serde::Serialize>(
    rows: Result<Result<Vec<T>, crate::probes::ControlError>, tokio::task::JoinError>,
) -> Response {
    match rows {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT_ENCODING, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn gzip_only_when_asked_for_and_not_refused() {
        // What Prometheus sends.
        assert!(accepts_gzip(&with(&["gzip"])));
        assert!(accepts_gzip(&with(&["deflate, GZIP;q=0.5"])));
        assert!(accepts_gzip(&with(&["identity", "gzip"])));
        assert!(accepts_gzip(&with(&["*"])));
        assert!(!accepts_gzip(&with(&[])));
        assert!(!accepts_gzip(&with(&["identity"])));
        assert!(!accepts_gzip(&with(&["gzip;q=0"])));
        assert!(!accepts_gzip(&with(&["gzip; q=0.0, identity"])));
        assert!(!accepts_gzip(&with(&["x-gzip-not"])));
    }

    #[test]
    fn compressed_exposition_reads_back() {
        use std::io::Read;
        let text = "sonde_x_total{pod=\"a\"} 1\n".repeat(1000);
        let gz = compress(text.as_bytes()).unwrap();
        assert!(gz.len() * 10 < text.len());
        let mut back = String::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
    }
}
