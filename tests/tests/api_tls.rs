//! `api.tls`: the endpoints over HTTPS with a certificate from files, replaced when the files
//! change (as cert-manager renews a Secret) and kept when the new pair does not load; a
//! certificate generated at start; and client certificates (`api.auth.mode: mtls`) in place
//! of tokens, for the API and for `sonde trace --agent https://`.

use std::time::Duration;

use sonde_tests::pki::{https_get, TestCa};
use sonde_tests::{http_get, poll_until, run_sonde, Agent, TempDir, READY_TIMEOUT};

const RELOADS: &str = "sonde_tls_certificate_reloads_total";

/// Polls an HTTPS endpoint until the agent answers (it has no plain-HTTP /readyz to wait on).
fn wait_https(
    agent: &Agent,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) {
    poll_until(READY_TIMEOUT, "the agent to answer over HTTPS", || {
        let a = https_get(agent.addr(), "127.0.0.1", "/readyz", ca, client).ok()?;
        (a.status == 200).then_some(())
    });
}

fn reloads(agent: &Agent, ca: &std::path::Path, result: &str) -> Option<f64> {
    let a = https_get(agent.addr(), "127.0.0.1", "/metrics", ca, None).ok()?;
    sonde_tests::metric_value(&a.body, RELOADS, &[("result", result)])
}

#[test]
fn https_from_files_follows_a_renewed_certificate() {
    let dir = TempDir::new();
    let ca = TestCa::new("sonde test CA");
    let ca_pem = ca.write_cert(&dir.path().join("ca.crt"));
    let first = ca.issue(dir.path(), "tls", &["127.0.0.1", "localhost"]);
    let agent = Agent::spawn_yaml(&format!(
        "api:\n  tls:\n    certFile: {}\n    keyFile: {}\n",
        first.cert.display(),
        first.key.display()
    ));
    wait_https(&agent, &ca_pem, None);
    let a = https_get(agent.addr(), "127.0.0.1", "/metrics", &ca_pem, None).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.server_cert, first.der);
    assert_eq!(reloads(&agent, &ca_pem, "ok"), Some(0.0));
    // Plain HTTP gets no answer on the HTTPS port.
    assert!(!matches!(http_get(agent.addr(), "/healthz"), Ok((200, _))));

    // Renewed in place: the next handshakes get the new certificate.
    let renewed = ca.issue(dir.path(), "tls", &["127.0.0.1", "localhost"]);
    assert_ne!(renewed.der, first.der);
    poll_until(
        Duration::from_secs(30),
        "the renewed certificate served",
        || {
            let a = https_get(agent.addr(), "127.0.0.1", "/healthz", &ca_pem, None).ok()?;
            (a.server_cert == renewed.der).then_some(())
        },
    );
    assert_eq!(reloads(&agent, &ca_pem, "ok"), Some(1.0));

    // A key that does not belong to the certificate: counted, and the renewed pair stays.
    let other = ca.issue(dir.path(), "other", &["127.0.0.1"]);
    std::fs::copy(&other.key, &renewed.key).unwrap();
    poll_until(Duration::from_secs(30), "the broken pair counted", || {
        (reloads(&agent, &ca_pem, "error")? == 1.0).then_some(())
    });
    let a = https_get(agent.addr(), "127.0.0.1", "/healthz", &ca_pem, None).unwrap();
    assert_eq!(a.server_cert, renewed.der);
    assert!(
        agent
            .stderr_text()
            .contains("is not the key of api.tls.certFile"),
        "{}",
        agent.stderr_text()
    );
}

#[test]
fn a_self_signed_certificate_names_the_node_and_its_address() {
    let dir = TempDir::new();
    let agent = Agent::spawn_yaml("node: tls-node\napi:\n  tls:\n    selfSigned: true\n");
    // Trust the certificate it presents (taken from a first handshake that trusts nothing).
    let first = poll_until(READY_TIMEOUT, "a TLS handshake", || {
        let captured = dir.path().join("served.crt");
        let served = sonde_tests::pki::served_certificate(agent.addr())?;
        std::fs::write(&captured, served).ok()?;
        Some(captured)
    });
    for name in ["127.0.0.1", "localhost", "tls-node"] {
        let a = https_get(agent.addr(), name, "/healthz", &first, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.status, 200, "{name}");
    }
    assert!(https_get(agent.addr(), "elsewhere", "/healthz", &first, None).is_err());
}

#[test]
fn client_certificates_stand_in_for_tokens() {
    let dir = TempDir::new();
    let server_ca = TestCa::new("server CA");
    let server_ca_pem = server_ca.write_cert(&dir.path().join("server-ca.crt"));
    let server = server_ca.issue(dir.path(), "server", &["127.0.0.1"]);
    let client_ca = TestCa::new("client CA");
    let client_ca_pem = client_ca.write_cert(&dir.path().join("client-ca.crt"));
    let client = client_ca.issue(dir.path(), "prometheus", &["prometheus"]);
    let stranger = TestCa::new("someone else").issue(dir.path(), "stranger", &["stranger"]);
    let agent = Agent::spawn_yaml(&format!(
        "api:\n  auth:\n    mode: mtls\n  tls:\n    certFile: {}\n    keyFile: {}\n    clientCaFile: {}\n",
        server.cert.display(),
        server.key.display(),
        client_ca_pem.display()
    ));
    let me = Some((client.cert.as_path(), client.key.as_path()));
    wait_https(&agent, &server_ca_pem, None);
    let get = |path: &str, who| https_get(agent.addr(), "127.0.0.1", path, &server_ca_pem, who);

    assert_eq!(get("/metrics", me).unwrap().status, 200);
    assert_eq!(get("/api/v1/probes", me).unwrap().status, 200);
    // Health needs no certificate; the rest does.
    assert_eq!(get("/healthz", None).unwrap().status, 200);
    let a = get("/metrics", None).unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.starts_with("no client certificate"), "{}", a.body);
    // A certificate another CA signed ends the handshake.
    assert!(get(
        "/metrics",
        Some((stranger.cert.as_path(), stranger.key.as_path()))
    )
    .is_err());

    // sonde trace takes the stream with its certificate.
    let url = format!("https://{}", agent.addr());
    let script = "fn on_packet_drop(e) { count(\"drops\"); }";
    let mut args = vec![
        "trace",
        "--agent",
        &url,
        "--ca-file",
        server_ca_pem.to_str().unwrap(),
        "-e",
        script,
        "--duration",
        "1s",
    ];
    let refused = run_sonde(&args, Duration::from_secs(60));
    assert!(
        !refused.status.success() && refused.stderr.contains("no client certificate"),
        "{}",
        refused.stderr
    );
    args.extend([
        "--cert",
        client.cert.to_str().unwrap(),
        "--key",
        client.key.to_str().unwrap(),
    ]);
    let done = run_sonde(&args, Duration::from_secs(60));
    assert!(done.status.success(), "{}", done.stderr);
}
