//! The agent's HTTP server (`/metrics`, `/healthz`, `/readyz`, `/api/v1/`), bounded against
//! clients that hold on to it: at most `api.maxConnections` connections are served at once
//! (more wait in the kernel's accept backlog, costing the agent nothing), and a connection
//! that has not sent its request headers within `api.headerTimeout` is closed, whether it is
//! new or idle between requests.

use crate::config::Invalid;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::units::ByteSize;

/// `api:`: limits of the HTTP server and its event streams. Read at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ApiConfig {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// The time a connection has to send a request's headers (new, or idle between requests).
    #[serde(deserialize_with = "crate::units::duration")]
    pub header_timeout: Duration,
    /// `/api/v1/events` streams open at once; more are answered 503.
    pub max_streams: usize,
    /// How far a stream may fall behind (its queued events, estimated in bytes) before it is
    /// closed and counted in `sonde_api_streams_closed_total{reason="behind"}`.
    pub stream_queue: ByteSize,
    /// The longest a stream may lift its probes' event rate limits (`unlimited=DURATION`).
    #[serde(deserialize_with = "crate::units::duration")]
    pub max_unlimited: Duration,
    /// Who may read the endpoints (`api.auth`).
    pub auth: crate::auth::AuthConfig,
    /// HTTPS (`api.tls`).
    pub tls: crate::tls::TlsConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            max_streams: 8,
            stream_queue: ByteSize(4 << 20),
            max_unlimited: Duration::from_secs(600),
            auth: Default::default(),
            tls: Default::default(),
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_connections == 0 {
            return Err(Invalid::new("api.maxConnections", "must be at least 1"));
        }
        if self.header_timeout.is_zero() {
            return Err(Invalid::new("api.headerTimeout", "must be more than 0"));
        }
        if self.max_streams == 0 {
            return Err(Invalid::new("api.maxStreams", "must be at least 1"));
        }
        if self.stream_queue.0 < 64 << 10 {
            return Err(Invalid::new("api.streamQueue", "must be at least 64Ki"));
        }
        if self.auth.cache_ttl.is_zero() {
            return Err(Invalid::new("api.auth.cacheTtl", "must be more than 0"));
        }
        self.tls.validate()?;
        if self.auth.mode == crate::auth::AuthMode::Mtls && self.tls.client_ca_file.is_empty() {
            return Err(Invalid::new("api.auth.mode", "mtls needs api.tls.clientCaFile (the CA whose client certificates are let through)"));
        }
        Ok(())
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` completes; connections
/// still open then are dropped with the runtime. Each request carries the connection's
/// [`Peer`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ApiConfig,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let tls = tls.map(Arc::new);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let header_timeout = config.header_timeout;
    tokio::pin!(shutdown);
    loop {
        // A slot first: past the cap, connections wait in the backlog, not in the agent.
        let slot = tokio::select! {
            _ = &mut shutdown => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, mostly: wait a little rather than spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_io(stream, app, Peer::default(), header_timeout).await,
                Some(tls) => {
                    // The handshake has the same deadline as a request's headers.
                    let accepted =
                        tokio::time::timeout(header_timeout, tls.acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(stream)) => {
                            let peer = Peer {
                                client_cert: tls.client_certs
                                    && stream.get_ref().1.peer_certificates().is_some(),
                            };
                            serve_io(stream, app, peer, header_timeout).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Who is at the other end of a request's connection, as the connection says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// It presented a certificate `api.tls.clientCaFile` signed (rustls verified it).
    pub client_cert: bool,
}

async fn serve_io<I>(io: I, app: Router, peer: Peer, header_timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = tower::ServiceExt::map_request(
        app,
        move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer);
            req
        },
    );
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    #[test]
    fn api_limits_are_read_and_checked_with_the_key_named() {
        let c = AgentConfig::parse("api:\n  maxStreams: 2\n  streamQueue: 1Mi\n", "t").unwrap();
        assert_eq!(c.api.max_streams, 2);
        assert_eq!(c.api.stream_queue.0, 1 << 20);
        for (yaml, says) in [
            ("api:\n  maxStreams: 0\n", "api.maxStreams"),
            ("api:\n  streamQueue: 1Ki\n", "api.streamQueue"),
            ("api:\n  headerTimeout: 0s\n", "api.headerTimeout"),
            ("api:\n  maxConnections: 0\n", "api.maxConnections"),
            ("api:\n  streams: 3\n", "unknown field `streams`"),
        ] {
            let e = AgentConfig::parse(yaml, "t").unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{yaml}: {e}");
        }
    }
}
