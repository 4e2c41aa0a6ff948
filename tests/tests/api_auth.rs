//! `api.auth: {mode: kubernetes}`: every endpoint but `/healthz` and `/readyz` needs a bearer
//! token that the API server authenticates (TokenReview) and allows what the request does
//! (SubjectAccessReview), against the test API server's tokens and grants. A real Prometheus
//! scrapes with a token file, as the chart's ServiceMonitor makes it, and `sonde trace
//! --agent` sends its token.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::kube_api::KubeApi;
use sonde_tests::{
    free_local_addr, http_get, http_get_with, poll_until, run_sonde, run_sonde_env, Agent, TempDir,
    READY_TIMEOUT,
};

const NODE: &str = "auth-node";
const PROMETHEUS: &str = "system:serviceaccount:monitoring:prometheus";
const SA_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:monitoring",
    "system:authenticated",
];

/// The API server with four tokens: Prometheus's (may get `/metrics`), a reader's (get and
/// watch `nodes/sonde`), an operator's (and update, for `unlimited`), and one with no grant.
fn api_server() -> KubeApi {
    let api = KubeApi::start();
    api.add_token("prometheus-token", PROMETHEUS, SA_GROUPS);
    api.grant(PROMETHEUS, &["get"], &[], &["/metrics"]);
    api.add_token("reader-token", "jane", &["system:authenticated", "sre"]);
    api.grant("sre", &["get", "watch"], &["nodes/sonde"], &[]);
    api.add_token("operator-token", "olga", &["system:authenticated"]);
    api.grant("olga", &["get", "watch", "update"], &["nodes/sonde"], &[]);
    api.add_token("nobody-token", "bob", &["system:authenticated"]);
    api
}

fn agent(api: &KubeApi, dir: &TempDir) -> Agent {
    let kubeconfig = api.kubeconfig(dir.path());
    let agent = Agent::spawn_yaml(&format!(
        "node: {NODE}\ntopology:\n  source: standalone\n  kubeconfig: {}\n\
         api:\n  auth:\n    mode: kubernetes\n",
        kubeconfig.display()
    ));
    agent.wait_ready(READY_TIMEOUT);
    agent
}

/// Status and body of `GET path` with `token` (none: no Authorization header).
fn get(agent: &Agent, path: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    let header = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("Authorization", h)])
        .unwrap_or_default();
    let r = http_get_with(agent.addr(), path, &headers).expect("the agent answers");
    let challenge = r.header("www-authenticate").map(String::from);
    (
        r.status,
        String::from_utf8_lossy(&r.body).into_owned(),
        challenge,
    )
}

/// The status line's code of an event stream's answer (the stream itself is not read).
fn stream_status(agent: &Agent, query: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(agent.addr()).expect("connect to the agent");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/events?{query} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        agent.addr()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).expect("a status line");
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    if code == 200 {
        return (code, String::new());
    }
    // The refusal's body is one line, after the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        if line == "\r\n" {
            line.clear();
            reader.read_line(&mut line).ok();
            break;
        }
        line.clear();
    }
    (code, line.trim().to_string())
}

#[test]
fn every_endpoint_but_health_needs_a_token_allowed_what_it_does() {
    let api = api_server();
    let dir = TempDir::new();
    let agent = agent(&api, &dir);

    // Health needs nothing.
    assert_eq!(get(&agent, "/healthz", None).0, 200);
    assert_eq!(get(&agent, "/readyz", None).0, 200);

    // No token: 401 with the challenge; a token the API server does not know: 401.
    let (status, body, challenge) = get(&agent, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"sonde\""));
    assert!(body.starts_with("no bearer token"), "{body}");
    let (status, body, _) = get(&agent, "/api/v1/probes", Some("made-up"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("did not authenticate the token"), "{body}");

    // Known, but not granted: 403 naming the user and what it may not do.
    let (status, body, _) = get(&agent, "/metrics", Some("nobody-token"));
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body.trim(),
        "user \"bob\" may not get the non-resource URL /metrics"
    );
    let (status, body, _) = get(&agent, "/api/v1/probes", Some("nobody-token"));
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body.trim(),
        format!("user \"bob\" may not get nodes/sonde of node {NODE}")
    );

    // Prometheus may scrape, and nothing else.
    let (status, body, _) = get(&agent, "/metrics", Some("prometheus-token"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sonde_probe_up"), "{body}");
    assert_eq!(
        get(&agent, "/api/v1/probes", Some("prometheus-token")).0,
        403
    );

    // The reader gets the API (by its group) and may watch events, but not lift limits.
    let (status, body, _) = get(&agent, "/api/v1/probes", Some("reader-token"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&agent, "/metrics", Some("reader-token")).0, 403);
    assert_eq!(
        stream_status(&agent, "probes=packet_drop", "reader-token").0,
        200
    );
    let (status, body) = stream_status(&agent, "probes=packet_drop&unlimited=1m", "reader-token");
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        format!("user \"jane\" may not update nodes/sonde of node {NODE}")
    );
    assert_eq!(
        stream_status(&agent, "probes=packet_drop&unlimited=1m", "operator-token").0,
        200
    );
    assert_eq!(
        stream_status(&agent, "probes=packet_drop", "nobody-token").0,
        403
    );

    // Answers are kept: asking again costs the API server nothing.
    let before = api.reviews();
    for _ in 0..5 {
        assert_eq!(get(&agent, "/metrics", Some("prometheus-token")).0, 200);
        assert_eq!(get(&agent, "/metrics", Some("nobody-token")).0, 403);
    }
    assert_eq!(api.reviews(), before, "cached answers were asked again");
}

#[test]
fn an_api_server_that_cannot_be_asked_gets_503_and_health_still_answers() {
    let api = api_server();
    let dir = TempDir::new();
    let agent = agent(&api, &dir);
    assert_eq!(get(&agent, "/metrics", Some("prometheus-token")).0, 200);
    drop(api);
    // A token not yet answered cannot be checked: 503 with the reason, never 200.
    let (status, body, _) = get(&agent, "/metrics", Some("reader-token"));
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("cannot check the token with the API server"),
        "{body}"
    );
    assert_eq!(get(&agent, "/healthz", None).0, 200);
}

#[test]
fn off_is_refused_on_an_address_that_is_not_loopback() {
    let dir = TempDir::new();
    let config = dir.write("sonde.yaml", "api:\n  auth:\n    mode: off\n");
    let listen = format!("0.0.0.0:{}", free_local_addr().port());
    let done = run_sonde(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &listen,
        ],
        Duration::from_secs(60),
    );
    assert!(!done.status.success(), "the agent ran: {}", done.stderr);
    assert!(
        done.stderr.contains(&format!(
            "api.auth.mode: off is only for a loopback listen address, and {listen} is not one"
        )),
        "{}",
        done.stderr
    );
}

/// The rules of the chart's ClusterRole `name` (release `sonde`, deploy/manifests/sonde.yaml),
/// given to `subject`.
fn grant_charts_role(api: &KubeApi, name: &str, subject: &str) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/manifests/sonde.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let role = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ClusterRole {name} in {}", path.display()));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    for rule in role["rules"].as_array().unwrap() {
        let (verbs, resources, urls) = (
            strings(&rule["verbs"]),
            strings(&rule["resources"]),
            strings(&rule["nonResourceURLs"]),
        );
        api.grant(subject, &refs(&verbs), &refs(&resources), &refs(&urls));
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The chart's roles allow what the README says they do, as the agent asks: the metrics
/// reader `/metrics` only, the reader the API and streams but not `unlimited`.
#[test]
fn the_charts_roles_allow_what_they_are_for() {
    let api = KubeApi::start();
    api.add_token(
        "scraper",
        "system:serviceaccount:monitoring:prometheus-k8s",
        SA_GROUPS,
    );
    grant_charts_role(
        &api,
        "sonde-metrics-reader",
        "system:serviceaccount:monitoring:prometheus-k8s",
    );
    api.add_token("person", "jane", &["system:authenticated"]);
    grant_charts_role(&api, "sonde-reader", "jane");
    let dir = TempDir::new();
    let agent = agent(&api, &dir);
    assert_eq!(get(&agent, "/metrics", Some("scraper")).0, 200);
    assert_eq!(get(&agent, "/api/v1/probes", Some("scraper")).0, 403);
    assert_eq!(get(&agent, "/api/v1/flows", Some("person")).0, 200);
    assert_eq!(get(&agent, "/metrics", Some("person")).0, 403);
    assert_eq!(stream_status(&agent, "probes=packet_drop", "person").0, 200);
    assert_eq!(
        stream_status(&agent, "probes=packet_drop&unlimited=1m", "person").0,
        403
    );
}

/// A Prometheus scraping the agent three ways: with a token allowed `/metrics` (as the
/// chart's ServiceMonitor does, `bearerTokenFile`), with one that is not, with none.
#[test]
fn prometheus_scrapes_with_its_token_and_only_with_it() {
    let api = api_server();
    let dir = TempDir::new();
    let agent = agent(&api, &dir);
    let allowed = dir.write("prometheus-token", "prometheus-token\n");
    let forbidden = dir.write("nobody-token", "nobody-token\n");
    let target = agent.addr();
    let config = dir.write(
        "prometheus.yml",
        &format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n\
             - job_name: allowed\n  authorization: {{credentials_file: {}}}\n  \
               static_configs: [{{targets: ['{target}']}}]\n\
             - job_name: forbidden\n  authorization: {{credentials_file: {}}}\n  \
               static_configs: [{{targets: ['{target}']}}]\n\
             - job_name: anonymous\n  static_configs: [{{targets: ['{target}']}}]\n",
            allowed.display(),
            forbidden.display()
        ),
    );
    let web = free_local_addr();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run prometheus (apt-get install prometheus)"),
    );
    let targets = poll_until(Duration::from_secs(60), "every target scraped", || {
        let (status, body) = http_get(web, "/api/v1/targets").ok()?;
        if status != 200 {
            return None;
        }
        let doc: Value = serde_json::from_str(&body).ok()?;
        let targets: Vec<(String, String, String)> = doc["data"]["activeTargets"]
            .as_array()?
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        (targets.len() == 3 && targets.iter().all(|(_, h, _)| h != "unknown")).then_some(targets)
    });
    let of = |job: &str| targets.iter().find(|(j, _, _)| j == job).unwrap().clone();
    assert_eq!(of("allowed").1, "up", "{targets:?}");
    let (_, health, error) = of("forbidden");
    assert!(health == "down" && error.contains("403"), "{targets:?}");
    let (_, health, error) = of("anonymous");
    assert!(health == "down" && error.contains("401"), "{targets:?}");
}

/// Prometheus, stopped when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sonde_trace_sends_its_token() {
    let api = api_server();
    let dir = TempDir::new();
    let agent = agent(&api, &dir);
    let url = format!("http://{}", agent.addr());
    let script = "fn on_packet_drop(e) { count(\"drops\"); }";
    let trace = |extra: &[&str], kubeconfig: &str| {
        let mut args = vec!["trace", "--agent", &url, "-e", script, "--duration", "1s"];
        args.extend_from_slice(extra);
        run_sonde_env(
            &args,
            &[("KUBECONFIG", kubeconfig)],
            Duration::from_secs(60),
        )
    };
    // Without a token (and no kubeconfig): refused, with the agent's reason.
    let done = trace(&[], "/nonexistent");
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("401") && done.stderr.contains("no bearer token"),
        "{}",
        done.stderr
    );
    // A token file.
    let token = dir.write("token", "reader-token\n");
    let done = trace(&["--token-file", token.to_str().unwrap()], "/nonexistent");
    assert!(done.status.success(), "{}", done.stderr);
    // The kubeconfig's current user's token.
    let kubeconfig = dir.write(
        "reader.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n\
             users:\n- name: jane\n  user:\n    token: reader-token\ncontexts:\n- name: c\n  \
             context:\n    cluster: c\n    user: jane\ncurrent-context: c\n",
            api.url()
        ),
    );
    let done = trace(&[], kubeconfig.to_str().unwrap());
    assert!(done.status.success(), "{}", done.stderr);
    // A token without the grant.
    let nobody = dir.write("nobody", "nobody-token\n");
    let done = trace(&["--token-file", nobody.to_str().unwrap()], "/nonexistent");
    assert!(
        !done.status.success() && done.stderr.contains("may not watch nodes/sonde"),
        "{}",
        done.stderr
    );
}
