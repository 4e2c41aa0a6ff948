//! HTTPS for the agent's endpoints (`api.tls`): a certificate and key from PEM files, read
//! again when they change (cert-manager renews a Secret in place; the agent looks every
//! [`RELOAD_INTERVAL`] and keeps serving the old pair if the new one does not load), or one
//! generated at start (`selfSigned`, for the node's name and addresses, as the kubelet's own
//! serving certificate is). With `clientCaFile`, clients may present a certificate that CA
//! signed ([`crate::auth`] lets such a client through); the handshake does not demand one, so
//! that health checks need none.

use crate::config::Invalid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// `api.tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Without files: a certificate generated at start.
    pub self_signed: bool,
    /// PEM CA certificates whose client certificates are accepted (mTLS).
    pub client_ca_file: String,
}

impl TlsConfig {
    /// Whether the endpoints are served over HTTPS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() || self.self_signed
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(Invalid::new(
                "api.tls.certFile and api.tls.keyFile",
                "give both or neither",
            ));
        }
        if self.self_signed && !self.cert_file.is_empty() {
            return Err(Invalid::new(
                "api.tls.selfSigned",
                "not with api.tls.certFile, which is the certificate",
            ));
        }
        if !self.client_ca_file.is_empty() && !self.enabled() {
            return Err(Invalid::new(
                "api.tls.clientCaFile",
                "needs HTTPS (api.tls.certFile and keyFile, or selfSigned)",
            ));
        }
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS cannot be set up, naming the setting (a config field or a command's flag).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file a setting names cannot be used.
    #[error("{setting} {path}: {reason}")]
    File {
        setting: &'static str,
        path: String,
        reason: String,
    },
    /// Settings that do not go together, or a step of the TLS library that failed.
    #[error("{setting}: {reason}")]
    Setting {
        setting: &'static str,
        reason: String,
    },
}

impl TlsError {
    fn file(setting: &'static str, path: &Path, reason: impl std::fmt::Display) -> Self {
        TlsError::File {
            setting,
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn setting(setting: &'static str, reason: impl std::fmt::Display) -> Self {
        TlsError::Setting {
            setting,
            reason: reason.to_string(),
        }
    }
}

/// The certificates in a PEM file, at least one.
fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| TlsError::file(setting, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::file(setting, path, "no certificate in it"));
    }
    Ok(certs)
}

/// The pair in `cert` and `key`, checked to belong together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates("api.tls.certFile", cert)?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::file("api.tls.keyFile", key, e))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::file("api.tls.keyFile", key, e))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        let reason = format!("is not the key of api.tls.certFile {}: {e}", cert.display());
        TlsError::file("api.tls.keyFile", key, reason)
    })?;
    Ok(pair)
}

/// A certificate generated for `names` (DNS names or addresses).
fn self_signed(names: Vec<String>) -> Result<CertifiedKey, TlsError> {
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| {
        TlsError::setting(
            "api.tls.selfSigned",
            format!("cannot make a certificate: {e}"),
        )
    })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::setting("api.tls.selfSigned", e))?;
    Ok(CertifiedKey::new(
        vec![generated.cert.der().clone()],
        signing,
    ))
}

/// The certificate every handshake gets: replaced when its files change.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// What the server needs for HTTPS.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// Whether clients may present certificates (`clientCaFile`).
    pub client_certs: bool,
}

/// The acceptor for `config` (which is enabled), for a server on `listen` of node `node`.
/// With files, a thread watches them and counts each reload in `reloads{result}`.
pub fn start(
    config: &TlsConfig,
    node: &str,
    listen: SocketAddr,
    reloads: prometheus::IntCounterVec,
) -> Result<Tls, TlsError> {
    let first = if config.self_signed {
        let mut names = vec![node.to_string(), "localhost".to_string()];
        if !listen.ip().is_unspecified() {
            names.push(listen.ip().to_string());
        }
        self_signed(names)?
    } else {
        load_pair(Path::new(&config.cert_file), Path::new(&config.key_file))?
    };
    let current = Arc::new(Current(RwLock::new(Arc::new(first))));
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::setting("api.tls", e))?;
    let builder = if config.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let path = Path::new(&config.client_ca_file);
        let cas = certificates("api.tls.clientCaFile", path)?;
        let (added, _) = roots.add_parsable_certificates(cas);
        if added == 0 {
            return Err(TlsError::file(
                "api.tls.clientCaFile",
                path,
                "no CA certificate in it",
            ));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::file("api.tls.clientCaFile", path, e))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server =
        builder.with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    for result in ["ok", "error"] {
        reloads.with_label_values(&[result]);
    }
    if !config.self_signed {
        let files = (
            PathBuf::from(&config.cert_file),
            PathBuf::from(&config.key_file),
        );
        std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || watch(files, &current, &reloads))
            .map_err(|e| {
                TlsError::setting("api.tls", format!("cannot start the reload thread: {e}"))
            })?;
    }
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        client_certs: !config.client_ca_file.is_empty(),
    })
}

/// Reloads the pair when either file's contents change; a pair that does not load is logged
/// once and counted, and the one in use stays.
fn watch((cert, key): (PathBuf, PathBuf), current: &Current, reloads: &prometheus::IntCounterVec) {
    let read = || (std::fs::read(&cert).ok(), std::fs::read(&key).ok());
    let mut seen = read();
    loop {
        std::thread::sleep(RELOAD_INTERVAL);
        let now = read();
        if now == seen {
            continue;
        }
        seen = now;
        match load_pair(&cert, &key) {
            Ok(pair) => {
                *current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                reloads.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one");
            }
        }
    }
}

/// How a command (`sonde trace --agent https://...`) reaches an agent over HTTPS: whom it
/// trusts (`ca_file`, else the system's roots; `insecure`: anyone, as `curl -k`, for a
/// self-signed agent) and the client certificate it presents (mTLS).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    pub fn connector(&self) -> Result<tokio_rustls::TlsConnector, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::setting("TLS", e))?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(any_server())
        } else {
            let mut roots = rustls::RootCertStore::empty();
            let certs = match &self.ca_file {
                Some(path) => certificates("--ca-file", path)?,
                None => rustls_native_certs::load_native_certs().certs,
            };
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(match &self.ca_file {
                    Some(path) => TlsError::file("--ca-file", path, "no CA certificate in it"),
                    None => TlsError::setting("--ca-file", "no CA certificates on this system"),
                });
            }
            builder.with_root_certificates(roots)
        };
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates("--cert", cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| TlsError::file("--key", key, e))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    TlsError::file("--key", key, format!("not the key of --cert: {e}"))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::setting(
                    "--cert and --key",
                    "give both or neither",
                ))
            }
        };
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// A verifier for `--insecure` (and for tests that must see a self-signed certificate
/// first): any server certificate, its handshake signatures still checked.
pub fn any_server() -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(AnyServer(provider()))
}

#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    #[test]
    fn tls_settings_are_checked_with_the_key_named() {
        let c = AgentConfig::parse("api:\n  tls:\n    selfSigned: true\n", "t").unwrap();
        assert!(c.api.tls.enabled());
        for (yaml, says) in [
            (
                "api:\n  tls:\n    certFile: a.pem\n",
                "api.tls.certFile and api.tls.keyFile",
            ),
            (
                "api:\n  tls:\n    certFile: a.pem\n    keyFile: k.pem\n    selfSigned: true\n",
                "api.tls.selfSigned",
            ),
            (
                "api:\n  tls:\n    clientCaFile: ca.pem\n",
                "api.tls.clientCaFile: needs HTTPS",
            ),
            (
                "api:\n  auth:\n    mode: mtls\n",
                "api.auth.mode: mtls needs api.tls.clientCaFile",
            ),
        ] {
            let e = AgentConfig::parse(yaml, "t").unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{yaml}: {e}");
        }
    }
}
