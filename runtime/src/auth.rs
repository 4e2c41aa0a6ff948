//! Who may read the agent's endpoints (`api.auth`). With `mode: kubernetes` every request
//! but `/healthz` and `/readyz` carries a bearer token (a Kubernetes service account token,
//! or any token the API server authenticates); the agent asks the API server who it is
//! (TokenReview) and whether that user may do what the request does (SubjectAccessReview),
//! as the kubelet and kube-rbac-proxy do:
//!
//! | request | asked as |
//! |---|---|
//! | `GET /metrics` | non-resource URL `/metrics`, verb `get` (what Prometheus's RBAC grants) |
//! | `GET /api/v1/...` | `get` on `nodes/sonde` of this node |
//! | `GET /api/v1/events` | `watch` on `nodes/sonde` of this node |
//! | ... with `unlimited=D` | and `update` on `nodes/sonde` of this node |
//!
//! Answers are kept for `api.auth.cacheTtl` (refusals at most 10 s), keyed by a SHA-256 of
//! the token: the agent never keeps a token it was sent. An API server that cannot be asked
//! gets 503, not cached.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

/// `api.auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `kubernetes` where the listen address is not loopback, `off` where it is.
    Auto,
    Kubernetes,
    /// Client certificates signed by `api.tls.clientCaFile`, and nothing else.
    Mtls,
    /// Only with a loopback listen address.
    Off,
}

impl AuthMode {
    const NAMES: &'static str = "auto, kubernetes, mtls or off";

    fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "auto" => Some(AuthMode::Auto),
            "kubernetes" => Some(AuthMode::Kubernetes),
            "mtls" => Some(AuthMode::Mtls),
            "off" => Some(AuthMode::Off),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for AuthMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AuthMode::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("mode: {s:?} is not {}", AuthMode::NAMES))
        })
    }
}

/// `api.auth`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// How long an answer of the API server is kept (refusals at most [`DENIED_TTL`]).
    #[serde(deserialize_with = "crate::units::duration")]
    pub cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Auto,
            cache_ttl: Duration::from_secs(60),
        }
    }
}

/// The longest a refusal is kept: a grant made after it counts within this.
pub const DENIED_TTL: Duration = Duration::from_secs(10);
/// Answers kept at most (tokens a client makes up cost the agent no more than this).
const CACHE_ENTRIES: usize = 4096;

impl AuthConfig {
    /// Whether requests to `listen` are checked: `off` is refused unless `listen` is a
    /// loopback address.
    pub fn enabled_for(&self, listen: SocketAddr) -> Result<bool, crate::config::Invalid> {
        let loopback = listen.ip().is_loopback();
        match self.mode {
            AuthMode::Kubernetes | AuthMode::Mtls => Ok(true),
            AuthMode::Auto => Ok(!loopback),
            AuthMode::Off if loopback => Ok(false),
            AuthMode::Off => Err(crate::config::Invalid::new(
                "api.auth.mode",
                format!(
                    "off is only for a loopback listen address, and {listen} is not \
                 one: anyone who reaches it would read every pod's events (use kubernetes, or \
                 listen on 127.0.0.1)"
                ),
            )),
        }
    }
}

/// What a request does, as authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `/metrics`.
    Metrics,
    /// The JSON API.
    Read,
    /// An event stream.
    Watch,
    /// An event stream that lifts rate limits (`unlimited=D`).
    Unlimited,
}

impl Access {
    /// What a request for `path?query` needs: nothing for the health endpoints.
    pub fn of(path: &str, query: Option<&str>) -> &'static [Access] {
        match path {
            "/healthz" | "/readyz" => &[],
            "/metrics" => &[Access::Metrics],
            "/api/v1/events" => {
                let unlimited = query
                    .unwrap_or_default()
                    .split('&')
                    .any(|p| p == "unlimited" || p.starts_with("unlimited="));
                if unlimited {
                    &[Access::Watch, Access::Unlimited]
                } else {
                    &[Access::Watch]
                }
            }
            _ => &[Access::Read],
        }
    }

    /// The verb and what it applies to, as RBAC says them.
    pub fn describe(self) -> &'static str {
        match self {
            Access::Metrics => "get the non-resource URL /metrics",
            Access::Read => "get nodes/sonde",
            Access::Watch => "watch nodes/sonde",
            Access::Unlimited => "update nodes/sonde",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Access::Metrics | Access::Read => "get",
            Access::Watch => "watch",
            Access::Unlimited => "update",
        }
    }
}

/// An answer about one token and one access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// 401: the token is not one the API server knows (or there is none).
    Unauthenticated(String),
    /// 403: the user may not.
    Forbidden(String),
}

/// Kept answers: by the token's SHA-256 and the access, with when each stops counting.
type Answers = HashMap<([u8; 32], Access), (Decision, Instant)>;

/// The API server could not be asked (the request is refused with 503, not 401 or 403).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("TokenReview: {0}")]
    TokenReview(#[source] kube::Error),
    #[error("SubjectAccessReview: {0}")]
    AccessReview(#[source] kube::Error),
}

/// Checks requests against the API server, and keeps its answers.
pub struct Authorizer {
    client: kube::Client,
    node: String,
    ttl: Duration,
    cache: Mutex<Answers>,
}

impl Authorizer {
    pub fn new(client: kube::Client, node: &str, config: &AuthConfig) -> Arc<Authorizer> {
        Arc::new(Authorizer {
            client,
            node: node.to_string(),
            ttl: config.cache_ttl,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `token` may do `access`; `Err` when the API server could not be asked.
    pub async fn check(&self, token: &str, access: Access) -> Result<Decision, AuthError> {
        let key = (<[u8; 32]>::from(Sha256::digest(token.as_bytes())), access);
        if let Some((d, until)) = self.lock().get(&key) {
            if Instant::now() < *until {
                return Ok(d.clone());
            }
        }
        let decision = self.ask(token, access).await?;
        let ttl = match decision {
            Decision::Allowed => self.ttl,
            _ => self.ttl.min(DENIED_TTL),
        };
        let mut cache = self.lock();
        if cache.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (decision.clone(), Instant::now() + ttl));
        Ok(decision)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ask(&self, token: &str, access: Access) -> Result<Decision, AuthError> {
        let reviews: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = reviews
            .create(&Default::default(), &review)
            .await
            .map_err(AuthError::TokenReview)?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                return Ok(Decision::Unauthenticated(match status.error {
                    Some(e) if !e.is_empty() => {
                        format!("the API server did not authenticate the token: {e}")
                    }
                    _ => "the API server did not authenticate the token".into(),
                }))
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let (resource_attributes, non_resource_attributes) = match access {
            Access::Metrics => (
                None,
                Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
            ),
            _ => (
                Some(ResourceAttributes {
                    group: Some(String::new()),
                    resource: Some("nodes".into()),
                    subresource: Some("sonde".into()),
                    name: Some(self.node.clone()),
                    verb: Some(access.verb().into()),
                    ..Default::default()
                }),
                None,
            ),
        };
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                resource_attributes,
                non_resource_attributes,
            },
            ..Default::default()
        };
        let reviews: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let answer = reviews
            .create(&Default::default(), &sar)
            .await
            .map_err(AuthError::AccessReview)?;
        let status = answer.status.unwrap_or_default();
        Ok(if status.allowed && status.denied != Some(true) {
            Decision::Allowed
        } else {
            let node = match access {
                Access::Metrics => String::new(),
                _ => format!(" of node {}", self.node),
            };
            Decision::Forbidden(format!("user {name:?} may not {}{node}", access.describe()))
        })
    }
}

/// Why a command has no token to send.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `what`: `--token-file` or the kubeconfig's `tokenFile`.
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--token-file {0}: the file is empty")]
    Empty(String),
}

/// The token a command sends to an agent: the contents of `token_file`, else the static
/// token (`token` or `tokenFile`) of the kubeconfig's current user (`$KUBECONFIG` or
/// `~/.kube/config`), else none (an agent listening on loopback asks for none).
pub fn client_token(token_file: Option<&std::path::Path>) -> Result<Option<String>, TokenError> {
    use secrecy::ExposeSecret;
    let read = |path: &std::path::Path, what: &'static str| {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|source| TokenError::Read {
                what,
                path: path.display().to_string(),
                source,
            })
    };
    if let Some(path) = token_file {
        let token = read(path, "--token-file")?;
        if token.is_empty() {
            return Err(TokenError::Empty(path.display().to_string()));
        }
        return Ok(Some(token));
    }
    let Ok(kubeconfig) = kube::config::Kubeconfig::read() else {
        return Ok(None);
    };
    let user = kubeconfig
        .current_context
        .as_ref()
        .and_then(|c| kubeconfig.contexts.iter().find(|n| &n.name == c))
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone());
    let Some(info) = user
        .and_then(|u| kubeconfig.auth_infos.iter().find(|a| a.name == u))
        .and_then(|a| a.auth_info.as_ref())
    else {
        return Ok(None);
    };
    if let Some(token) = &info.token {
        return Ok(Some(token.expose_secret().to_string()));
    }
    match &info.token_file {
        Some(f) => read(std::path::Path::new(f), "the kubeconfig's tokenFile").map(Some),
        None => Ok(None),
    }
}

/// The bearer token of a request's `Authorization` header.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn refuse(status: StatusCode, why: &str) -> Response {
    let mut response = (status, format!("{why}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sonde\""),
        );
    }
    response
}

/// How requests are checked: tokens with the API server (`kubernetes`), client
/// certificates (when `api.tls.clientCaFile` is set), or both.
pub struct Checks {
    pub tokens: Option<Arc<Authorizer>>,
    pub client_certs: bool,
}

/// The middleware in front of every route: lets health checks through, and the rest only
/// with a client certificate the configured CA signed or a token allowed what the request
/// does.
pub async fn layer(State(checks): State<Arc<Checks>>, req: Request, next: Next) -> Response {
    let needs = Access::of(req.uri().path(), req.uri().query());
    if needs.is_empty() {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<crate::server::Peer>()
        .copied()
        .unwrap_or_default();
    if checks.client_certs && peer.client_cert {
        return next.run(req).await;
    }
    let Some(auth) = &checks.tokens else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no client certificate: this agent takes clients with a certificate that \
             api.tls.clientCaFile signed",
        );
    };
    let Some(token) = bearer(&req) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no bearer token: send Authorization: Bearer TOKEN (a Kubernetes service account \
             token; see api.auth in the README)",
        );
    };
    for &access in needs {
        match auth.check(token, access).await {
            Ok(Decision::Allowed) => {}
            Ok(Decision::Unauthenticated(why)) => return refuse(StatusCode::UNAUTHORIZED, &why),
            Ok(Decision::Forbidden(why)) => return refuse(StatusCode::FORBIDDEN, &why),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a request's token with the API server");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cannot check the token with the API server: {e}"),
                );
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    #[test]
    fn off_is_only_for_loopback_and_auto_follows_the_address() {
        let on = |yaml: &str, listen: &str| {
            AgentConfig::parse(yaml, "t")
                .unwrap()
                .api
                .auth
                .enabled_for(listen.parse().unwrap())
        };
        assert_eq!(on("", "127.0.0.1:9990"), Ok(false));
        assert_eq!(on("", "[::1]:9990"), Ok(false));
        assert_eq!(on("", "10.0.0.7:9990"), Ok(true));
        assert_eq!(on("", "0.0.0.0:9990"), Ok(true));
        let kube = "api:\n  auth:\n    mode: kubernetes\n";
        assert_eq!(on(kube, "127.0.0.1:9990"), Ok(true));
        let off = "api:\n  auth:\n    mode: off\n";
        assert_eq!(on(off, "127.0.0.1:9990"), Ok(false));
        let e = on(off, "10.0.0.7:9990").unwrap_err();
        assert_eq!(e.field, "api.auth.mode");
        assert!(e.reason.starts_with("off is only for a loopback"), "{e}");
        let e = AgentConfig::parse("api:\n  auth:\n    mode: open\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"open\" is not auto, kubernetes, mtls or off"),
            "{e}"
        );
    }

    #[test]
    fn each_request_needs_what_it_does() {
        assert!(Access::of("/healthz", None).is_empty());
        assert!(Access::of("/readyz", None).is_empty());
        assert_eq!(Access::of("/metrics", None), [Access::Metrics]);
        assert_eq!(Access::of("/api/v1/probes", None), [Access::Read]);
        assert_eq!(Access::of("/nowhere", None), [Access::Read]);
        assert_eq!(
            Access::of("/api/v1/events", Some("probes=packet_drop")),
            [Access::Watch]
        );
        assert_eq!(
            Access::of("/api/v1/events", Some("probes=packet_drop&unlimited=1m")),
            [Access::Watch, Access::Unlimited]
        );
    }
}
