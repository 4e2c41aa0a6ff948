//! A Kubernetes API server for the tests, on 127.0.0.1: it keeps Pod, Node and ConfigMap
//! objects as the API serves them and speaks the list and watch protocol clients rely on:
//! list responses carry `metadata.resourceVersion`; `?watch=true&resourceVersion=N` streams
//! newline-delimited `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}` events
//! with chunked encoding from that version on; a version older than the kept history is
//! answered with an `ERROR` event carrying a `410 Gone` Status; field selectors (`a.b=v`,
//! `!=`) and label selectors (`k`, `!k`, `k=v`, `k!=v`) are honoured, and an object that stops
//! (starts) matching a watch's selector is sent to it as `DELETED` (`ADDED`), as the API server
//! does.
//!
//! It also answers the reviews an agent asks when it checks its clients (`api.auth`): a
//! `TokenReview` authenticates the tokens [`KubeApi::add_token`] made, a
//! `SubjectAccessReview` is allowed by what [`KubeApi::grant`] gave the user or one of its
//! groups, with RBAC's matching (`nodes/sonde` is resource `nodes`, subresource `sonde`; `*`
//! matches any verb or resource; a non-resource URL ending in `*` matches its prefix). Both
//! answer `201 Created` with the review's object, as the API server does.
//!
//! Tests change objects with [`KubeApi::apply`] and [`KubeApi::delete`], and break things
//! with [`KubeApi::cut_watches`] (streams end abruptly), [`KubeApi::expire_history`] (resumed
//! watches get 410) and [`KubeApi::hold_lists`] (lists answer 503).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How often an idle watch gets a BOOKMARK (the API server sends one about every minute;
/// sooner here so that tests do not wait).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// One change, as watches replay it.
struct Change {
    rv: u64,
    plural: String,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// By (plural, namespace, name).
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Change>,
    /// Watches from a version below this get 410 Gone.
    oldest: u64,
    /// Bumped to end every open watch.
    cut: u64,
    hold_lists: bool,
    /// Every request answered 503 (the API server away).
    down: bool,
    lists: BTreeMap<String, u32>,
    watches: BTreeMap<String, u32>,
    uids: u64,
    /// Token → (username, uid, groups).
    tokens: BTreeMap<String, (String, String, Vec<String>)>,
    grants: Vec<Grant>,
    token_reviews: u32,
    access_reviews: u32,
}

/// One RBAC rule bound to a user or a group.
struct Grant {
    subject: String,
    verbs: Vec<String>,
    resources: Vec<String>,
    non_resource_urls: Vec<String>,
}

impl Grant {
    fn allows(&self, spec: &Value) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        if let Some(r) = spec.get("resourceAttributes") {
            let verb = r["verb"].as_str().unwrap_or_default();
            let resource = match r["subresource"].as_str().filter(|s| !s.is_empty()) {
                Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or_default()),
                None => r["resource"].as_str().unwrap_or_default().to_string(),
            };
            any(&self.verbs, verb) && any(&self.resources, &resource)
        } else if let Some(n) = spec.get("nonResourceAttributes") {
            let path = n["path"].as_str().unwrap_or_default();
            any(&self.verbs, n["verb"].as_str().unwrap_or_default())
                && self
                    .non_resource_urls
                    .iter()
                    .any(|u| match u.strip_suffix('*') {
                        Some(prefix) => path.starts_with(prefix),
                        None => u == path,
                    })
        } else {
            false
        }
    }
}

struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
    stop: AtomicBool,
}

/// The API server; stopped when dropped.
pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl KubeApi {
    pub fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test API server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1000,
                ..Default::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("kube-api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = Arc::clone(&s);
                    let _ = thread::Builder::new()
                        .name("kube-api-conn".into())
                        .spawn(move || serve(conn, &s));
                }
            })
            .unwrap();
        KubeApi {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server into `dir` and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
                 users:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: test\n  \
                 context:\n    cluster: test\n    user: test\n    namespace: default\n\
                 current-context: test\n",
                self.url()
            ),
        )
        .unwrap();
        path
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap()
    }

    /// Creates or replaces an object (its `kind` says which collection), giving it a new
    /// `resourceVersion`, and a `uid` and `creationTimestamp` when it has none. Returns it.
    pub fn apply(&self, mut obj: Value) -> Value {
        let plural = plural_of(&obj);
        let (ns, name) = ns_name(&obj);
        let key = (plural.clone(), ns, name);
        let mut s = self.store();
        s.rv += 1;
        let rv = s.rv;
        let old = s.objects.get(&key).cloned();
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if !meta.contains_key("uid") {
            let uid = match &old {
                Some(o) => o["metadata"]["uid"].clone(),
                None => {
                    s.uids += 1;
                    json!(format!("00000000-0000-4000-8000-{:012x}", s.uids))
                }
            };
            meta.insert("uid".into(), uid);
        }
        if !meta.contains_key("creationTimestamp") {
            let ts = old
                .as_ref()
                .map(|o| o["metadata"]["creationTimestamp"].clone())
                .unwrap_or_else(|| json!(now_rfc3339()));
            meta.insert("creationTimestamp".into(), ts);
        }
        s.objects.insert(key, obj.clone());
        s.log.push(Change {
            rv,
            plural,
            old,
            new: Some(obj.clone()),
        });
        drop(s);
        self.shared.changed.notify_all();
        obj
    }

    /// Deletes an object (`kind` as in the object's JSON: `Pod`, `Node`, `ConfigMap`).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let plural = format!("{}s", kind.to_ascii_lowercase());
        let mut s = self.store();
        let Some(mut old) = s
            .objects
            .remove(&(plural.clone(), namespace.into(), name.into()))
        else {
            panic!("no {kind} {namespace}/{name} to delete");
        };
        s.rv += 1;
        let rv = s.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.log.push(Change {
            rv,
            plural,
            old: Some(old),
            new: None,
        });
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Ends every open watch abruptly (no final chunk), as a dropped connection does.
    pub fn cut_watches(&self) {
        self.store().cut += 1;
        self.shared.changed.notify_all();
    }

    /// Forgets the history: a watch resumed from any version seen so far is answered 410
    /// Gone, so its client must list again.
    pub fn expire_history(&self) {
        let mut s = self.store();
        s.rv += 1;
        s.oldest = s.rv;
        s.log.clear();
    }

    /// While down, every request (lists, watches, `/version`, reviews) is answered `503
    /// Service Unavailable`; going down ends the open watches.
    pub fn set_down(&self, down: bool) {
        self.store().down = down;
        if down {
            self.cut_watches();
        }
    }

    /// While held, every list is answered `503 Service Unavailable`.
    pub fn hold_lists(&self, hold: bool) {
        self.store().hold_lists = hold;
    }

    /// Lists answered so far for a collection (`pods`, `nodes`, `configmaps`).
    pub fn lists(&self, plural: &str) -> u32 {
        self.store().lists.get(plural).copied().unwrap_or(0)
    }

    /// Makes `token` authenticate as `user` (uid `uid`) in `groups`, as a service account
    /// token does (`system:serviceaccount:NS:NAME`, groups `system:serviceaccounts`, ...).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let mut s = self.store();
        s.uids += 1;
        let uid = format!("00000000-0000-4000-9000-{:012x}", s.uids);
        s.tokens.insert(
            token.into(),
            (
                user.into(),
                uid,
                groups.iter().map(|g| g.to_string()).collect(),
            ),
        );
    }

    /// Grants `subject` (a user or a group) `verbs` on `resources` (`nodes/sonde`) and on
    /// `non_resource_urls` (`/metrics`), as a ClusterRole and its binding would.
    pub fn grant(
        &self,
        subject: &str,
        verbs: &[&str],
        resources: &[&str],
        non_resource_urls: &[&str],
    ) {
        let strings = |l: &[&str]| l.iter().map(|x| x.to_string()).collect();
        self.store().grants.push(Grant {
            subject: subject.into(),
            verbs: strings(verbs),
            resources: strings(resources),
            non_resource_urls: strings(non_resource_urls),
        });
    }

    /// TokenReviews and SubjectAccessReviews answered so far.
    pub fn reviews(&self) -> (u32, u32) {
        let s = self.store();
        (s.token_reviews, s.access_reviews)
    }

    /// Watches opened so far for a collection.
    pub fn watches(&self, plural: &str) -> u32 {
        self.store().watches.get(plural).copied().unwrap_or(0)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.cut_watches();
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A Pod as the API serves it (a running pod with one container), on `node`, with `ip`
/// (none while pending), `labels`, and `phase`.
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    ip: Option<IpAddr>,
    labels: &[(&str, &str)],
    phase: &str,
) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let mut status = json!({
        "phase": phase,
        "conditions": [{"type": "Ready", "status": if phase == "Running" {"True"} else {"False"}}],
        "hostIP": "192.0.2.10",
        "hostIPs": [{"ip": "192.0.2.10"}],
        "startTime": now_rfc3339(),
        "qosClass": "BestEffort",
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "labels": labels,
            "annotations": {"kubernetes.io/config.seen": now_rfc3339()},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}],
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "resources": {}, "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
            "dnsPolicy": "ClusterFirst",
        },
        "status": status,
    })
}

/// A Node as the API serves it, with an InternalIP.
pub fn node(name: &str, internal_ip: IpAddr) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip.to_string()},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

fn plural_of(obj: &Value) -> String {
    let kind = obj["kind"].as_str().expect("an object with a kind");
    format!("{}s", kind.to_ascii_lowercase())
}

fn ns_name(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().expect("metadata.name").to_string(),
    )
}

fn now_rfc3339() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .expect("date");
    // Kubernetes timestamps have whole seconds; the fraction only orders pods made in the
    // same second.
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A parsed request: the collection, its namespace (None: all), and the query.
struct Request {
    plural: String,
    namespace: Option<String>,
    query: BTreeMap<String, String>,
}

fn parse_request(line: &str) -> Option<Request> {
    let target = line.split_whitespace().nth(1)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (namespace, plural) = match parts.as_slice() {
        ["api", "v1", plural] => (None, plural.to_string()),
        ["api", "v1", "namespaces", ns, plural] => (Some(ns.to_string()), plural.to_string()),
        _ => return None,
    };
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect();
    Some(Request {
        plural,
        namespace,
        query,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `obj` is in the request's namespace and matches its selectors.
fn matches(req: &Request, obj: &Value) -> bool {
    if let Some(ns) = &req.namespace {
        if obj["metadata"]["namespace"].as_str() != Some(ns) {
            return false;
        }
    }
    let fields_ok = req.query.get("fieldSelector").is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| {
            let (path, want, equal) = match term.split_once("!=") {
                Some((p, v)) => (p, v, false),
                None => {
                    let (p, v) = term.split_once('=').expect("field selector term");
                    (p, v.trim_start_matches('='), true)
                }
            };
            let got = path
                .split('.')
                .fold(obj, |v, k| &v[k])
                .as_str()
                .unwrap_or_default();
            (got == want) == equal
        })
    });
    let labels = &obj["metadata"]["labels"];
    let labels_ok = req.query.get("labelSelector").is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| {
            if let Some(key) = term.strip_prefix('!') {
                return labels.get(key).is_none();
            }
            if let Some((k, v)) = term.split_once("!=") {
                return labels[k].as_str() != Some(v);
            }
            if let Some((k, v)) = term.split_once('=') {
                return labels[k].as_str() == Some(v.trim_start_matches('='));
            }
            labels.get(term).is_some()
        })
    });
    fields_ok && labels_ok
}

fn serve(conn: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Headers: only a body's length matters here.
    let mut length = 0;
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {
                if let Some((name, value)) = h.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
        }
    }
    let mut conn = conn;
    if shared.store.lock().unwrap().down {
        let _ = respond(
            &mut conn,
            503,
            &status_object(503, "ServiceUnavailable", "the server is away"),
        );
        return;
    }
    if line.split_whitespace().nth(1) == Some("/version") {
        let _ = respond(
            &mut conn,
            200,
            &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.1",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean", "buildDate": "2026-09-01T00:00:00Z",
                    "goVersion": "go1.24.6", "compiler": "gc", "platform": "linux/amd64"}),
        );
        return;
    }
    if line.starts_with("POST ") {
        let mut body = vec![0; length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = line.split_whitespace().nth(1).unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        let answer = match path {
            "/apis/authentication.k8s.io/v1/tokenreviews" => review_token(shared, body),
            "/apis/authorization.k8s.io/v1/subjectaccessreviews" => review_access(shared, body),
            _ => None,
        };
        let _ = match answer {
            Some(a) => respond(&mut conn, 201, &a),
            None => respond(
                &mut conn,
                404,
                &status_object(404, "NotFound", "no such path"),
            ),
        };
        return;
    }
    let Some(req) = parse_request(&line) else {
        let _ = respond(
            &mut conn,
            404,
            &status_object(404, "NotFound", "no such path"),
        );
        return;
    };
    let watch = matches!(
        req.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    if watch {
        watch_stream(conn, shared, &req);
    } else {
        let body = {
            let mut s = shared.store.lock().unwrap();
            if s.hold_lists {
                None
            } else {
                *s.lists.entry(req.plural.clone()).or_default() += 1;
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((p, _, _), o)| *p == req.plural && matches(&req, o))
                    .map(|(_, o)| {
                        // List items carry no kind or apiVersion: the list says them.
                        let mut o = o.clone();
                        let m = o.as_object_mut().unwrap();
                        m.remove("kind");
                        m.remove("apiVersion");
                        o
                    })
                    .collect();
                let kind = list_kind(&req.plural);
                Some(json!({
                    "kind": kind,
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": s.rv.to_string()},
                    "items": items,
                }))
            }
        };
        match body {
            Some(b) => respond(&mut conn, 200, &b),
            None => respond(
                &mut conn,
                503,
                &status_object(503, "ServiceUnavailable", "the server is starting"),
            ),
        }
        .ok();
    }
}

/// A TokenReview answered: `status.user` for a known token, `status.error` otherwise.
fn review_token(shared: &Shared, mut review: Value) -> Option<Value> {
    let token = review["spec"]["token"].as_str()?.to_string();
    let mut s = shared.store.lock().unwrap();
    s.token_reviews += 1;
    review["status"] = match s.tokens.get(&token) {
        Some((user, uid, groups)) => json!({
            "authenticated": true,
            "user": {"username": user, "uid": uid, "groups": groups},
            "audiences": ["https://kubernetes.default.svc.cluster.local"],
        }),
        None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
    };
    review["metadata"] = json!({"creationTimestamp": null});
    Some(review)
}

/// A SubjectAccessReview answered by the grants of its user and groups.
fn review_access(shared: &Shared, mut review: Value) -> Option<Value> {
    let spec = review.get("spec")?.clone();
    let mut subjects: Vec<String> = spec["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    subjects.push(spec["user"].as_str().unwrap_or_default().to_string());
    let mut s = shared.store.lock().unwrap();
    s.access_reviews += 1;
    let granted = s
        .grants
        .iter()
        .find(|g| subjects.contains(&g.subject) && g.allows(&spec));
    review["status"] = match granted {
        Some(g) => json!({
            "allowed": true,
            "reason": format!("RBAC: allowed by ClusterRoleBinding \"test\" of ClusterRole \"test\" to {:?}", g.subject),
        }),
        None => json!({"allowed": false}),
    };
    review["metadata"] = json!({"creationTimestamp": null});
    Some(review)
}

fn list_kind(plural: &str) -> String {
    match plural {
        "pods" => "PodList",
        "nodes" => "NodeList",
        "configmaps" => "ConfigMapList",
        _ => "List",
    }
    .to_string()
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()
}

fn chunk(conn: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write!(conn, "{:x}\r\n{line}\r\n", line.len())?;
    conn.flush()
}

fn watch_stream(mut conn: TcpStream, shared: &Shared, req: &Request) {
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let started = Instant::now();
    let mut s = shared.store.lock().unwrap();
    *s.watches.entry(req.plural.clone()).or_default() += 1;
    let cut_at_start = s.cut;
    if from != 0 && from < s.oldest {
        let status = status_object(
            410,
            "Expired",
            &format!("too old resource version: {from} ({})", s.oldest),
        );
        drop(s);
        let _ = chunk(&mut conn, &json!({"type": "ERROR", "object": status}));
        let _ = conn.write_all(b"0\r\n\r\n");
        return;
    }
    let mut sent = if from == 0 { s.rv } else { from };
    let mut last_bookmark = Instant::now();
    loop {
        if s.cut != cut_at_start || shared.stop.load(Ordering::Relaxed) {
            drop(s);
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        let mut events = Vec::new();
        for c in s
            .log
            .iter()
            .filter(|c| c.rv > sent && c.plural == req.plural)
        {
            let was = c.old.as_ref().is_some_and(|o| matches(req, o));
            let is = c.new.as_ref().is_some_and(|o| matches(req, o));
            let (kind, obj) = match (was, is, &c.new) {
                (false, true, Some(n)) => ("ADDED", n.clone()),
                (true, true, Some(n)) => ("MODIFIED", n.clone()),
                (true, false, Some(n)) => ("DELETED", n.clone()),
                (true, false, None) => ("DELETED", c.old.clone().unwrap()),
                _ => continue,
            };
            events.push(json!({"type": kind, "object": obj}));
        }
        let rv = s.rv;
        sent = rv;
        let bookmark_kind = match req.plural.as_str() {
            "pods" => "Pod",
            "nodes" => "Node",
            _ => "ConfigMap",
        };
        drop(s);
        for e in &events {
            if chunk(&mut conn, e).is_err() {
                return;
            }
        }
        if bookmarks && events.is_empty() && last_bookmark.elapsed() >= BOOKMARK_INTERVAL {
            last_bookmark = Instant::now();
            let bm = json!({"type": "BOOKMARK", "object": {"kind": bookmark_kind, "apiVersion": "v1",
                            "metadata": {"resourceVersion": rv.to_string()}}});
            if chunk(&mut conn, &bm).is_err() {
                return;
            }
        }
        if started.elapsed() >= timeout {
            let _ = conn.write_all(b"0\r\n\r\n");
            return;
        }
        s = shared.store.lock().unwrap();
        if s.rv == sent && s.cut == cut_at_start {
            s = shared
                .changed
                .wait_timeout(s, Duration::from_millis(250))
                .unwrap()
                .0;
        }
    }
}

/// How kubelet names a pod's cgroup: the `cgroupfs` driver (`.../pod<uid>/<container>`) or
/// the `systemd` driver (`...-pod<uid_with_underscores>.slice/<container>.scope`).
#[derive(Clone, Copy, Debug)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// A process standing in for a pod's container: `sleep` inside a network namespace, moved
/// into a cgroup whose path carries the pod's UID as kubelet names it. Killed, and its
/// cgroups removed, when dropped (even while a test panics).
pub struct PodProcess {
    child: std::process::Child,
    /// The cgroups made for it, deepest first.
    cgroups: Vec<PathBuf>,
}

impl PodProcess {
    pub fn start(netns: &crate::Netns, uid: &str, driver: CgroupDriver) -> PodProcess {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", netns.name(), "sleep", "3600"])
            .spawn()
            .expect("start a process in the pod's namespace");
        // The cgroup v2 hierarchy: /sys/fs/cgroup itself, or /sys/fs/cgroup/unified on a
        // hybrid host.
        let root = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/unified")
        };
        let top = format!("sonde-t-{}", crate::unique_suffix());
        let levels: Vec<String> = match driver {
            CgroupDriver::Cgroupfs => vec![
                top,
                "kubepods".into(),
                "besteffort".into(),
                format!("pod{uid}"),
                "0123456789abcdef".into(),
            ],
            CgroupDriver::Systemd => vec![
                format!("{top}.slice"),
                "kubepods-besteffort.slice".into(),
                format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
                "cri-containerd-0123456789abcdef.scope".into(),
            ],
        };
        let mut process = PodProcess {
            child,
            cgroups: Vec::new(),
        };
        let mut dir = root;
        for level in levels {
            dir = dir.join(level);
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
            process.cgroups.insert(0, dir.clone());
        }
        let pid = process.child.id();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move {pid} into {}: {e}", dir.display()));
        let want = netns.inode();
        crate::poll_until(
            Duration::from_secs(10),
            "the pod process to enter its namespace",
            || {
                use std::os::unix::fs::MetadataExt;
                let ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
                (ino == want).then_some(())
            },
        );
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in &self.cgroups {
            // A cgroup is removable once its last process has gone, which the kernel notes
            // a moment after the exit.
            let removed =
                crate::try_poll_until(Duration::from_secs(5), || std::fs::remove_dir(dir).ok());
            if removed.is_none() {
                eprintln!("cannot remove cgroup {}", dir.display());
            }
        }
    }
}
