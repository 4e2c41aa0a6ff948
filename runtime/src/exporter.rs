//! HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and the JSON
//! API under `/api/v1/`.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
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

async fn metrics(State(s): State<ApiState>) -> Response {
    let probes = Arc::clone(&s.probes);
    // Reading kernel maps is a few syscalls per key: keep it off the async workers.
    let _ = tokio::task::spawn_blocking(move || {
        probes.lock().unwrap_or_else(|e| e.into_inner()).sync()
    })
    .await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(
            s.plugins
                .as_ref()
                .map(|p| p.host().host.gather())
                .unwrap_or_default(),
        ),
    )
        .into_response()
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if let Err(why) = s.topology.readiness() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("topology: {why}\n"),
        )
            .into_response();
    }
    let probes = s.probes.lock().unwrap_or_else(|e| e.into_inner());
    let failed: Vec<String> = probes
        .status()
        .into_iter()
        .filter(|p| p.state == "failed")
        .map(|p| format!("{}: {}", p.name, p.error.unwrap_or_default()))
        .collect();
    if failed.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("probes failed: {}\n", failed.join("; ")),
        )
            .into_response()
    }
}

async fn probes(State(s): State<ApiState>) -> Response {
    let status = s.probes.lock().unwrap_or_else(|e| e.into_inner()).status();
    Json(status).into_response()
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
        probes.lock().unwrap_or_else(|e| e.into_inner()).flows()
    })
    .await;
    json_rows(rows)
}

fn json_rows<T: serde::Serialize>(
    rows: Result<Result<Vec<T>, String>, tokio::task::JoinError>,
) -> Response {
    match rows {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
