//! Kubernetes topology: the pods of this node come from the API server (a watch with a field
//! selector on `spec.nodeName`) and their network namespaces from /proc (the processes whose
//! cgroup path carries the pod's UID); remote addresses resolve to pods and nodes through a
//! cluster-wide watch that keeps only names and addresses.
//!
//! Watches recover on their own: a cut stream is resumed, a `410 Gone` (or any failure to
//! resume) starts over with a fresh list, with exponential backoff between failures. Lookups
//! only read maps the watches fill, so nothing on the data path ever waits for the API server.
//! Until every watch has completed its first list, [`Topology::readiness`] says which ones are
//! still waiting and why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::index::{self, Found, Netns, NetnsIndex};
use super::labels::AdditionalLabels;
use super::{NotReady, PodNetns, Topology, TopologyConfig, TopologyError, Workload};

/// How often /proc is read again to follow pods' processes (a pod's namespace is also looked
/// for at once when its pod appears, and when an unknown namespace shows up in a probe).
const PROC_SCAN_INTERVAL: Duration = Duration::from_secs(5);
/// At most this often for unknown namespaces seen by probes.
const MISS_RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The client for the API server: `topology.kubeconfig` when set, else what kubectl would
/// use (`$KUBECONFIG`, `~/.kube/config`), else the in-cluster service account.
pub async fn client(config: &TopologyConfig) -> Result<Client, TopologyError> {
    let cfg = if config.kubeconfig.is_empty() {
        kube::Config::infer()
            .await
            .map_err(TopologyError::Credentials)?
    } else {
        let kubeconfig = |source| TopologyError::Kubeconfig {
            path: config.kubeconfig.clone(),
            source,
        };
        let kc = kube::config::Kubeconfig::read_from(&config.kubeconfig).map_err(kubeconfig)?;
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(kubeconfig)?
    };
    Client::try_from(cfg).map_err(TopologyError::Client)
}

/// Where `topology: {source: auto}` finds Kubernetes credentials, if anywhere: the configured
/// kubeconfig, in-cluster credentials (`KUBERNETES_SERVICE_HOST` and the service account
/// token), `$KUBECONFIG`, or `~/.kube/config`.
pub fn credentials(config: &TopologyConfig) -> Option<String> {
    if !config.kubeconfig.is_empty() {
        return Some(format!("kubeconfig {}", config.kubeconfig));
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    if env("KUBERNETES_SERVICE_HOST").is_some() && Path::new(TOKEN).is_file() {
        return Some("in-cluster service account".into());
    }
    if let Some(paths) = env("KUBECONFIG") {
        if let Some(p) = std::env::split_paths(&paths).find(|p| p.is_file()) {
            return Some(format!("kubeconfig {}", p.display()));
        }
    }
    let home = env("HOME").map(|h| Path::new(&h).join(".kube/config"))?;
    home.is_file()
        .then(|| format!("kubeconfig {}", home.display()))
}

// --- What the agent reads of API objects: names, UIDs, addresses, labels; the rest of each
// object is skipped while it is parsed.

/// The metadata fields the agent uses; `managedFields`, annotations and the rest are skipped.
fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        creation_timestamp: Option<Time>,
        deletion_timestamp: Option<Time>,
        labels: Option<BTreeMap<String, String>>,
    }
    let s = Slim::deserialize(d)?;
    Ok(ObjectMeta {
        name: s.name,
        namespace: s.namespace,
        uid: s.uid,
        resource_version: s.resource_version,
        creation_timestamp: s.creation_timestamp,
        deletion_timestamp: s.deletion_timestamp,
        labels: s.labels,
        ..Default::default()
    })
}

/// A pod as the topology sees it.
#[derive(Clone, Debug, Deserialize)]
pub struct PodView {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpecView,
    #[serde(default)]
    pub status: PodStatusView,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub host_network: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatusView {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIpView>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodIpView {
    #[serde(default)]
    pub ip: String,
}

/// A node's name and addresses.
#[derive(Clone, Debug, Deserialize)]
pub struct NodeView {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NodeStatusView,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct NodeStatusView {
    #[serde(default)]
    pub addresses: Option<Vec<NodeAddressView>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct NodeAddressView {
    #[serde(default)]
    pub address: String,
}

macro_rules! api_resource {
    ($ty:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = "v1";
            const GROUP: &'static str = "";
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }
        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
api_resource!(PodView, "Pod", "pods", k8s_openapi::NamespaceResourceScope);
api_resource!(NodeView, "Node", "nodes", k8s_openapi::ClusterResourceScope);

impl PodView {
    fn uid(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or_default()
    }

    fn workload(&self) -> Workload {
        Workload {
            namespace: Arc::from(self.metadata.namespace.as_deref().unwrap_or_default()),
            pod: Arc::from(self.metadata.name.as_deref().unwrap_or_default()),
        }
    }

    /// A pod whose containers have all terminated (`Succeeded`, `Failed`) owns no address
    /// and no namespace any more.
    fn finished(&self) -> bool {
        matches!(
            self.status.phase.as_deref(),
            Some("Succeeded") | Some("Failed")
        )
    }

    fn host_network(&self) -> bool {
        self.spec.host_network == Some(true)
    }

    fn ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if let Some(ip) = self.status.pod_ip.as_deref().and_then(|s| s.parse().ok()) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        ips
    }
}

// --- The view of the world the watches keep.

/// A pod of this node that has its own network namespace.
#[derive(Debug, Clone)]
struct LocalPod {
    workload: Workload,
    /// Its values of the additional labels.
    label_values: Arc<[String]>,
}

/// A pod that says it has an address.
#[derive(Debug, Clone)]
struct Claim {
    uid: String,
    created: Option<Time>,
    /// When the agent first saw the pod with the address.
    seen: Instant,
    workload: Workload,
}

#[derive(Default)]
struct State {
    /// Claims that ended (the pod deleted, finished, or relisted without the address), with
    /// when the agent saw them end, kept for `retention`: counts read later for what happened
    /// before are named by them ([`State::owner_at`]).
    left_ips: HashMap<IpAddr, Vec<(Claim, Instant)>>,
    /// Running pods of this node with their own network namespace, by UID.
    local: HashMap<String, LocalPod>,
    /// Namespaces found for them (entered at `/proc/<pid>/ns/net` of a process in each), and
    /// those gone lately.
    netns: NetnsIndex,
    /// Their values of the additional labels.
    label_values: HashMap<Workload, Arc<[String]>>,
    /// Every pod's addresses, by UID, as last seen.
    pod_ips: HashMap<String, Vec<IpAddr>>,
    /// The pods that claim each address. Several can for a while (an address reused before
    /// the old pod's deletion arrives): the most recently created one wins.
    ips: HashMap<IpAddr, Vec<Claim>>,
    /// Node addresses, by node.
    node_ips: HashMap<String, Vec<IpAddr>>,
    nodes_by_ip: HashMap<IpAddr, Arc<str>>,
    /// Pods whose addresses went (deleted, finished, relisted without them), with when: their
    /// flow series are kept for `topology.goneRetention` (`retention`).
    departed: HashMap<Workload, Instant>,
    retention: Duration,
}

impl State {
    fn unclaim(&mut self, uid: &str) {
        self.release(uid, &[]);
    }

    /// Removes the claims of `uid`; those on addresses not in `keep` ended now (recorded for
    /// late counts and for the series kept after a pod left).
    fn release(&mut self, uid: &str, keep: &[IpAddr]) {
        let now = Instant::now();
        for ip in self.pod_ips.remove(uid).unwrap_or_default() {
            if let Some(claims) = self.ips.get_mut(&ip) {
                if !keep.contains(&ip) {
                    for c in claims.iter().filter(|c| c.uid == uid) {
                        self.departed.insert(c.workload.clone(), now);
                        self.left_ips.entry(ip).or_default().push((c.clone(), now));
                    }
                }
                claims.retain(|c| c.uid != uid);
                if claims.is_empty() {
                    self.ips.remove(&ip);
                }
            }
        }
    }

    /// The pods that claim an address now.
    fn claimants(&self) -> impl Iterator<Item = &Workload> {
        self.ips.values().flatten().map(|c| &c.workload)
    }

    /// The workloads whose series are kept: those with a namespace on this node or an address
    /// now, and those that lost theirs in the last retention period.
    fn workloads(&self) -> HashSet<Workload> {
        let mut out = self.netns.workloads();
        out.extend(self.local.values().map(|p| p.workload.clone()));
        out.extend(self.claimants().cloned());
        out.extend(
            self.departed
                .iter()
                .filter(|(_, t)| t.elapsed() < self.retention)
                .map(|(w, _)| w.clone()),
        );
        out
    }

    /// A pod of the cluster-wide watch, added or changed.
    fn claim(&mut self, pod: &PodView) {
        let retention = self.retention;
        self.departed.retain(|_, t| t.elapsed() < retention);
        self.left_ips.retain(|_, left| {
            left.retain(|(_, t)| t.elapsed() < retention);
            !left.is_empty()
        });
        let uid = pod.uid().to_string();
        let ips = match pod.finished() || pod.host_network() {
            true => Vec::new(),
            false => pod.ips(),
        };
        // An update keeps the claims it still makes as they were seen first.
        let seen: HashMap<IpAddr, Instant> = ips
            .iter()
            .filter_map(|ip| {
                let c = self.ips.get(ip)?.iter().find(|c| c.uid == uid)?;
                Some((*ip, c.seen))
            })
            .collect();
        self.release(&uid, &ips);
        if ips.is_empty() {
            return;
        }
        let now = Instant::now();
        for ip in &ips {
            self.ips.entry(*ip).or_default().push(Claim {
                uid: uid.clone(),
                created: pod.metadata.creation_timestamp.clone(),
                seen: seen.get(ip).copied().unwrap_or(now),
                workload: pod.workload(),
            });
        }
        self.pod_ips.insert(uid, ips);
    }

    /// The pod an address belonged to at `at`, by what the agent saw and when: of the claims
    /// it had seen by then and that had not ended, the pod created last (an address reused
    /// before the old pod's deletion arrived is the new pod's); if it had seen none by then,
    /// the first seen of those that had not ended; when every claim ended before `at`, the
    /// last to end (a count the agent read late).
    fn owner_at(&self, ip: &IpAddr, at: Instant) -> Option<&Claim> {
        let left = self.left_ips.get(ip).map(Vec::as_slice).unwrap_or_default();
        let open: Vec<&Claim> = self
            .ips
            .get(ip)
            .into_iter()
            .flatten()
            .chain(left.iter().filter(|(_, t)| *t >= at).map(|(c, _)| c))
            .collect();
        open.iter()
            .filter(|c| c.seen <= at)
            .max_by_key(|c| (c.created.as_ref().map(|t| t.0), c.seen))
            .or_else(|| open.iter().min_by_key(|c| c.seen))
            .copied()
            .or_else(|| left.iter().max_by_key(|(_, t)| *t).map(|(c, _)| c))
    }

    /// The pod an address belongs to now: of the pods that claim it, the most recently
    /// created one (among equals, the last one seen).
    fn owner(&self, ip: &IpAddr) -> Option<&Claim> {
        self.ips
            .get(ip)?
            .iter()
            .max_by_key(|c| c.created.as_ref().map(|t| t.0))
    }

    fn set_node(&mut self, node: &NodeView) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.remove_node(&name);
        let ips: Vec<IpAddr> = node
            .status
            .addresses
            .iter()
            .flatten()
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let shared: Arc<str> = Arc::from(name.as_str());
        for ip in &ips {
            self.nodes_by_ip.insert(*ip, Arc::clone(&shared));
        }
        self.node_ips.insert(name, ips);
    }

    fn remove_node(&mut self, name: &str) {
        for ip in self.node_ips.remove(name).unwrap_or_default() {
            if self.nodes_by_ip.get(&ip).is_some_and(|n| &**n == name) {
                self.nodes_by_ip.remove(&ip);
            }
        }
    }
}

/// The three watches, in the order readiness names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    LocalPods,
    Pods,
    Nodes,
}

impl Watch {
    const ALL: [Watch; 3] = [Watch::LocalPods, Watch::Pods, Watch::Nodes];

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
struct WatchState {
    listed: bool,
    last_error: Option<String>,
}

/// The Kubernetes topology source.
pub struct KubeTopology {
    node: String,
    host_netns: Option<u32>,
    proc_dir: PathBuf,
    state: RwLock<State>,
    labels: Arc<AdditionalLabels>,
    watches: Mutex<[WatchState; 3]>,
    /// Asks the /proc scanner to look now.
    rescan: SyncSender<()>,
    last_miss_rescan: Mutex<Option<Instant>>,
    /// When the API server last answered (a watch event, or `/version`), and how long
    /// without one makes the topology stale.
    last_answer: Mutex<Instant>,
    stale_after: Duration,
}

impl KubeTopology {
    /// Starts the watches and the /proc scanner for `node`; they run until the process ends.
    pub fn start(
        client: Client,
        node: &str,
        config: &super::TopologyConfig,
        labels: Arc<AdditionalLabels>,
    ) -> Arc<Self> {
        let (tx, rx) = sync_channel(1);
        let proc_dir = PathBuf::from(&config.proc_dir);
        let topo = Arc::new(KubeTopology {
            node: node.to_string(),
            host_netns: std::fs::metadata(proc_dir.join("self/ns/net"))
                .ok()
                .map(|m| m.ino() as u32),
            proc_dir,
            state: RwLock::new(State {
                netns: NetnsIndex::new(index::cookies_supported())
                    .with_retention(config.gone_retention),
                retention: config.gone_retention,
                ..State::default()
            }),
            labels,
            watches: Mutex::new(Default::default()),
            rescan: tx,
            last_miss_rescan: Mutex::new(None),
            last_answer: Mutex::new(Instant::now()),
            stale_after: config.stale_after,
        });
        topo.spawn_contact(client.clone());
        let local = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        topo.spawn_watch(
            Api::<PodView>::all(client.clone()),
            local,
            Watch::LocalPods,
            Self::local_pods_changed,
        );
        topo.spawn_watch(
            Api::<PodView>::all(client.clone()),
            watcher::Config::default(),
            Watch::Pods,
            Self::pods_changed,
        );
        topo.spawn_watch(
            Api::<NodeView>::all(client),
            watcher::Config::default(),
            Watch::Nodes,
            Self::nodes_changed,
        );
        let scanner = Arc::downgrade(&topo);
        let spawned = std::thread::Builder::new()
            .name("pod-netns".into())
            .spawn(move || scan_loop(scanner, rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the pod namespace scanner");
        }
        tracing::info!(node, "topology: Kubernetes");
        topo
    }

    /// Asks the API server for `/version` a few times per `staleAfter`: idle watches say
    /// nothing for minutes, and a watch cut and resumed says nothing either.
    fn spawn_contact(self: &Arc<Self>, client: Client) {
        let topo = Arc::downgrade(self);
        let every =
            (self.stale_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let answered = tokio::time::timeout(every, client.apiserver_version()).await;
                let Some(topo) = topo.upgrade() else {
                    return;
                };
                if matches!(answered, Ok(Ok(_))) {
                    topo.answered();
                }
            }
        });
    }

    fn answered(&self) {
        *self.last_answer.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn spawn_watch<K>(
        self: &Arc<Self>,
        api: Api<K>,
        config: watcher::Config,
        which: Watch,
        apply: fn(&Self, Change<K>),
    ) where
        K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let topo = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, config).default_backoff().boxed();
            let mut listing: Vec<K> = Vec::new();
            while let Some(item) = stream.next().await {
                let Some(topo) = topo.upgrade() else {
                    return;
                };
                if item.is_ok() {
                    topo.answered();
                }
                match item {
                    Ok(Event::Init) => listing.clear(),
                    Ok(Event::InitApply(obj)) => listing.push(obj),
                    Ok(Event::InitDone) => {
                        apply(&topo, Change::Relisted(std::mem::take(&mut listing)));
                        let mut w = topo.watches.lock().unwrap_or_else(|e| e.into_inner());
                        let w = &mut w[which.index()];
                        if !w.listed {
                            tracing::info!(watch = ?which, "topology: first list complete");
                        }
                        w.listed = true;
                        w.last_error = None;
                    }
                    Ok(Event::Apply(obj)) => apply(&topo, Change::Applied(obj)),
                    Ok(Event::Delete(obj)) => apply(&topo, Change::Deleted(obj)),
                    Err(e) => {
                        tracing::warn!(watch = ?which, error = %e, "topology: watch failed; retrying with backoff");
                        topo.watches.lock().unwrap_or_else(|e| e.into_inner())[which.index()]
                            .last_error = Some(e.to_string());
                    }
                }
            }
        });
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn local_pods_changed(&self, change: Change<PodView>) {
        let owns_netns = |p: &PodView| {
            !p.finished()
                && !p.host_network()
                && p.spec.node_name.as_deref() == Some(self.node.as_str())
        };
        let no_labels = BTreeMap::new();
        let local = |p: &PodView| LocalPod {
            workload: p.workload(),
            label_values: if self.labels.is_empty() {
                Arc::from([])
            } else {
                Arc::from(
                    self.labels
                        .values(p.metadata.labels.as_ref().unwrap_or(&no_labels)),
                )
            },
        };
        {
            let mut s = self.write();
            match change {
                Change::Relisted(pods) => {
                    s.local = pods
                        .iter()
                        .filter(|p| owns_netns(p))
                        .map(|p| (p.uid().to_string(), local(p)))
                        .collect();
                }
                Change::Applied(p) if owns_netns(&p) => {
                    s.local.insert(p.uid().to_string(), local(&p));
                }
                Change::Applied(p) | Change::Deleted(p) => {
                    s.local.remove(p.uid());
                }
            }
            // Namespaces of pods that are gone (or changed name) go at once; new ones are
            // found by the scan asked for below.
            let State {
                local,
                netns,
                label_values,
                ..
            } = &mut *s;
            let current: HashSet<&Workload> = local.values().map(|p| &p.workload).collect();
            netns.retain(|w| current.contains(w));
            *label_values = local
                .values()
                .map(|p| (p.workload.clone(), Arc::clone(&p.label_values)))
                .collect();
        }
        let _ = self.rescan.try_send(());
    }

    // A relist builds the new view aside and swaps it in, so lookups never wait for a whole
    // cluster's worth of objects.
    fn pods_changed(&self, change: Change<PodView>) {
        match change {
            Change::Relisted(pods) => {
                let mut fresh = State::default();
                pods.iter().for_each(|p| fresh.claim(p));
                let mut s = self.write();
                // Claims that were there before keep when they were first seen.
                for (ip, claims) in fresh.ips.iter_mut() {
                    for c in claims.iter_mut() {
                        if let Some(old) = s
                            .ips
                            .get(ip)
                            .and_then(|o| o.iter().find(|o| o.uid == c.uid))
                        {
                            c.seen = old.seen;
                        }
                    }
                }
                let now = Instant::now();
                let kept: HashSet<&Workload> = fresh.claimants().collect();
                let left: Vec<Workload> = s
                    .claimants()
                    .filter(|w| !kept.contains(w))
                    .cloned()
                    .collect();
                s.departed.extend(left.into_iter().map(|w| (w, now)));
                let ended: Vec<(IpAddr, Claim)> = s
                    .ips
                    .iter()
                    .flat_map(|(ip, claims)| claims.iter().map(move |c| (*ip, c)))
                    .filter(|(ip, c)| {
                        !fresh
                            .ips
                            .get(ip)
                            .is_some_and(|f| f.iter().any(|n| n.uid == c.uid))
                    })
                    .map(|(ip, c)| (ip, c.clone()))
                    .collect();
                for (ip, c) in ended {
                    s.left_ips.entry(ip).or_default().push((c, now));
                }
                s.pod_ips = fresh.pod_ips;
                s.ips = fresh.ips;
            }
            Change::Applied(p) => self.write().claim(&p),
            Change::Deleted(p) => self.write().unclaim(p.uid()),
        }
    }

    fn nodes_changed(&self, change: Change<NodeView>) {
        match change {
            Change::Relisted(nodes) => {
                let mut fresh = State::default();
                nodes.iter().for_each(|n| fresh.set_node(n));
                let mut s = self.write();
                s.node_ips = fresh.node_ips;
                s.nodes_by_ip = fresh.nodes_by_ip;
            }
            Change::Applied(n) => self.write().set_node(&n),
            Change::Deleted(n) => self
                .write()
                .remove_node(n.metadata.name.as_deref().unwrap_or_default()),
        }
    }

    /// Reads /proc for the namespaces of this node's pods.
    fn scan(&self) {
        let uids: HashSet<String> = self.read().local.keys().cloned().collect();
        let found = if uids.is_empty() {
            HashMap::new()
        } else {
            find_pod_netns(&self.proc_dir, &uids, self.host_netns)
        };
        let found: Vec<Found> = {
            let s = self.read();
            found
                .into_iter()
                .filter_map(|(uid, (inode, pid))| {
                    Some(Found {
                        inode,
                        workload: s.local.get(&uid)?.workload.clone(),
                        path: self.proc_dir.join(format!("{pid}/ns/net")),
                    })
                })
                .collect()
        };
        let unread = self.read().netns.unread(&found);
        let cookies = index::read_cookies(&unread);
        let pods = found.len();
        if self.write().netns.update(found, &cookies) {
            tracing::debug!(pods, "pod network namespaces changed");
        }
    }
}

/// What a watch saw.
enum Change<K> {
    /// A complete list (the first, or after a watch had to start over).
    Relisted(Vec<K>),
    Applied(K),
    Deleted(K),
}

fn scan_loop(topo: std::sync::Weak<KubeTopology>, rx: Receiver<()>) {
    loop {
        match rx.recv_timeout(PROC_SCAN_INTERVAL) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        match topo.upgrade() {
            Some(t) => t.scan(),
            None => return,
        }
    }
}

/// The pod UID in a process's `/proc/<pid>/cgroup`, as either kubelet cgroup driver writes
/// it: cgroupfs `.../pod<uid>/<container>`, systemd `...-pod<uid_with_underscores>.slice/...`.
pub fn pod_uid_in_cgroup(text: &str) -> Option<String> {
    const LEN: usize = 36;
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("pod") {
        let start = from + at + 3;
        from = start;
        let Some(cand) = b.get(start..start + LEN) else {
            break;
        };
        let dashes = [8, 13, 18, 23];
        let sep = cand[8];
        if !(sep == b'-' || sep == b'_') {
            continue;
        }
        let ok = cand.iter().enumerate().all(|(i, c)| {
            if dashes.contains(&i) {
                *c == sep
            } else {
                c.is_ascii_hexdigit()
            }
        });
        // The UID ends there: a path separator, `.slice`, or the line's end.
        let end_ok = matches!(b.get(start + LEN), None | Some(b'/' | b'.' | b'\n'));
        if ok && end_ok {
            return Some(
                String::from_utf8_lossy(cand)
                    .replace('_', "-")
                    .to_ascii_lowercase(),
            );
        }
    }
    None
}

/// For each pod UID of `uids` that has a process under `proc_dir`: its network namespace's
/// inode and the lowest such process id. Pods in the host's namespace are left out.
fn find_pod_netns(
    proc_dir: &Path,
    uids: &HashSet<String>,
    host_netns: Option<u32>,
) -> HashMap<String, (u32, u32)> {
    let mut found: HashMap<String, (u32, u32)> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        let Some(uid) = pod_uid_in_cgroup(&cgroup) else {
            continue;
        };
        if !uids.contains(&uid) || found.get(&uid).is_some_and(|(_, p)| *p < pid) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        let inode = meta.ino() as u32;
        if Some(inode) != host_netns {
            found.insert(uid, (inode, pid));
        }
    }
    found
}

impl Topology for KubeTopology {
    fn workload_of_netns(&self, netns: Netns) -> Option<Workload> {
        if netns.inode == 0 || Some(netns.inode) == self.host_netns {
            return None;
        }
        let s = self.read();
        if let Some(w) = s.netns.get(netns) {
            return Some(w);
        }
        // A namespace not known yet while some pod's is missing: look again soon (never from
        // here: the scan reads /proc, and this is the data path).
        if s.local.len() > s.netns.live_count() {
            drop(s);
            let mut last = self
                .last_miss_rescan
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| t.elapsed() >= MISS_RESCAN_INTERVAL) {
                *last = Some(Instant::now());
                let _ = self.rescan.try_send(());
            }
        }
        None
    }

    fn workload_of_ip(&self, ip: IpAddr) -> Option<Workload> {
        self.read().owner(&ip).map(|c| c.workload.clone())
    }

    fn workload_of_ip_at(&self, ip: IpAddr, at: Instant) -> Option<Workload> {
        self.read().owner_at(&ip, at).map(|c| c.workload.clone())
    }

    fn label_values(&self, workload: &Workload) -> Option<Arc<[String]>> {
        self.read().label_values.get(workload).cloned()
    }

    fn node_of_ip(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.read().nodes_by_ip.get(&ip).cloned()
    }

    fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    fn stale(&self) -> Option<String> {
        let silent = self
            .last_answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        (silent > self.stale_after).then(|| {
            format!(
                "stale: no answer from the API server for {}s (topology.staleAfter: {}s); pods and addresses are named as last seen",
                silent.as_secs(),
                self.stale_after.as_secs()
            )
        })
    }

    fn readiness(&self) -> Result<(), NotReady> {
        let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let waiting: Vec<String> = Watch::ALL
            .iter()
            .filter(|w| !watches[w.index()].listed)
            .map(|w| {
                let what = match w {
                    Watch::LocalPods => format!("pods on node {}", self.node),
                    Watch::Pods => "pods of the cluster".to_string(),
                    Watch::Nodes => "nodes".to_string(),
                };
                match &watches[w.index()].last_error {
                    Some(e) => format!("{what} (last error: {e})"),
                    None => what,
                }
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(NotReady::Lists(waiting))
        }
    }

    fn workloads(&self) -> Option<HashSet<Workload>> {
        self.ready().then(|| self.read().workloads())
    }

    fn pod_netns(&self) -> Vec<PodNetns> {
        self.read()
            .netns
            .live()
            .map(|(inode, workload, path, _)| PodNetns {
                inode,
                workload: workload.clone(),
                path: path.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agent keeps of a pod from the API is its names, UIDs, node, phase and
    /// addresses: containers, their env and the rest of the spec are skipped while parsing.
    #[test]
    fn a_parsed_pod_holds_no_spec_beyond_what_the_topology_needs() {
        let json = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-1","namespace":"shop",
            "uid":"u1","labels":{"app":"web"},"annotations":{"note":"annotation-value"},
            "managedFields":[{"manager":"kubectl"}]},
            "spec":{"nodeName":"node-1","containers":[{"name":"web","image":"registry/web:1",
            "env":[{"name":"DB_PASSWORD","value":"hunter2"}],"args":["--token=s3cr3t"]}],
            "volumes":[{"name":"creds","secret":{"secretName":"db"}}]},
            "status":{"phase":"Running","podIP":"10.0.1.7","podIPs":[{"ip":"10.0.1.7"}]}}"#;
        let pod: PodView = serde_json::from_str(json).unwrap();
        let kept = format!("{pod:?}");
        assert!(kept.contains("web-1") && kept.contains("10.0.1.7") && kept.contains("node-1"));
        for secret in [
            "hunter2",
            "DB_PASSWORD",
            "s3cr3t",
            "registry/web",
            "creds",
            "kubectl",
            "annotation-value",
        ] {
            assert!(!kept.contains(secret), "{secret} kept: {kept}");
        }
    }

    #[test]
    fn pod_uids_from_both_cgroup_drivers() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let cgroupfs =
            format!("12:pids:/kubepods/besteffort/pod{uid}/4f2c9e\n0::/kubepods/besteffort/pod{uid}/4f2c9e\n");
        assert_eq!(pod_uid_in_cgroup(&cgroupfs).as_deref(), Some(uid));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-ab12.scope\n",
            uid.replace('-', "_")
        );
        assert_eq!(pod_uid_in_cgroup(&systemd).as_deref(), Some(uid));
        // Guaranteed pods sit right under kubepods.
        let guaranteed = format!("0::/kubepods/pod{uid}\n");
        assert_eq!(pod_uid_in_cgroup(&guaranteed).as_deref(), Some(uid));
        for other in [
            "0::/\n",
            "0::/system.slice/podman.service\n",
            "0::/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796\n",
            "0::/kubepods/podzz1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/x\n",
        ] {
            assert_eq!(pod_uid_in_cgroup(other), None, "{other}");
        }
    }

    fn pod(uid: &str, name: &str, ip: &str, created: &str, phase: &str) -> PodView {
        serde_json::from_value(serde_json::json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": "1",
                         "creationTimestamp": created,
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn deleted_pods_keep_their_series_for_the_retention_period() {
        let names = |s: &State| {
            let mut v: Vec<String> = s.workloads().iter().map(|w| w.pod.to_string()).collect();
            v.sort();
            v
        };
        let mut s = State {
            retention: Duration::from_secs(600),
            ..State::default()
        };
        s.claim(&pod(
            "u1",
            "a",
            "10.1.0.7",
            "2026-01-01T00:00:00Z",
            "Running",
        ));
        s.claim(&pod(
            "u2",
            "b",
            "10.1.0.8",
            "2026-01-01T00:00:00Z",
            "Running",
        ));
        s.unclaim("u1");
        // b finished: it no longer claims its address.
        s.claim(&pod(
            "u2",
            "b",
            "10.1.0.8",
            "2026-01-01T00:00:00Z",
            "Succeeded",
        ));
        assert_eq!(names(&s), ["a", "b"]);
        s.retention = Duration::ZERO;
        assert!(names(&s).is_empty(), "{:?}", names(&s));
    }

    /// A pod deleted after its count: the count is still its own, also once a newer pod took
    /// its address; a count after the old pod left is the newer pod's, even before the agent
    /// saw the newer pod; a newer pod seen before the old one's deletion takes the address.
    #[test]
    fn counts_are_named_by_who_had_the_address_then() {
        let mut s = State {
            retention: Duration::from_secs(600),
            ..State::default()
        };
        let ip: IpAddr = "10.1.0.9".parse().unwrap();
        let who = |s: &State, at| s.owner_at(&ip, at).map(|c| c.workload.pod.to_string());
        let tick = || {
            std::thread::sleep(Duration::from_millis(2));
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(2));
            t
        };
        let before_any = tick();
        s.claim(&pod(
            "u1",
            "a",
            "10.1.0.9",
            "2026-01-01T00:00:00Z",
            "Running",
        ));
        let during_a = tick();
        // An update of a keeps its claim as first seen.
        s.claim(&pod(
            "u1",
            "a",
            "10.1.0.9",
            "2026-01-01T00:00:00Z",
            "Running",
        ));
        assert!(s.left_ips.is_empty(), "an update ends no claim");
        s.unclaim("u1");
        let after_a = tick();
        // Read after the deletion: still a's, and so is a count while nobody has it.
        assert_eq!(s.owner(&ip).map(|c| c.uid.as_str()), None);
        assert_eq!(who(&s, during_a).as_deref(), Some("a"));
        assert_eq!(who(&s, after_a).as_deref(), Some("a"));
        s.claim(&pod(
            "u2",
            "b",
            "10.1.0.9",
            "2026-01-01T00:05:00Z",
            "Running",
        ));
        let during_b = tick();
        assert_eq!(who(&s, before_any).as_deref(), Some("a"));
        assert_eq!(who(&s, during_a).as_deref(), Some("a"));
        // After a left, before the agent saw b: b's.
        assert_eq!(who(&s, after_a).as_deref(), Some("b"));
        assert_eq!(who(&s, during_b).as_deref(), Some("b"));
        // c takes the address before b's deletion arrives: counts from then are c's.
        s.claim(&pod(
            "u3",
            "c",
            "10.1.0.9",
            "2026-01-01T00:09:00Z",
            "Running",
        ));
        let during_c = tick();
        s.unclaim("u2");
        assert_eq!(who(&s, during_b).as_deref(), Some("b"));
        assert_eq!(who(&s, during_c).as_deref(), Some("c"));
        // Finished: c's claim ends; its counts stay its own.
        s.claim(&pod(
            "u3",
            "c",
            "10.1.0.9",
            "2026-01-01T00:09:00Z",
            "Succeeded",
        ));
        assert_eq!(who(&s, during_c).as_deref(), Some("c"));
        assert_eq!(who(&s, during_a).as_deref(), Some("a"));
    }

    #[test]
    fn reused_addresses_belong_to_the_newest_running_pod() {
        let mut s = State::default();
        let ip: IpAddr = "10.1.0.7".parse().unwrap();
        let old = pod("u1", "old", "10.1.0.7", "2026-01-01T00:00:00Z", "Running");
        let new = pod("u2", "new", "10.1.0.7", "2026-01-01T00:05:00Z", "Running");
        s.claim(&old);
        s.claim(&new);
        let best = |s: &State| s.owner(&ip).map(|c| c.workload.pod.to_string());
        assert_eq!(best(&s).as_deref(), Some("new"));
        // A late update of the old pod does not take the address back.
        s.claim(&old);
        assert_eq!(best(&s).as_deref(), Some("new"));
        // The old pod's deletion leaves the new one's claim alone.
        s.unclaim("u1");
        assert_eq!(best(&s).as_deref(), Some("new"));
        // A finished pod owns nothing.
        s.claim(&pod(
            "u2",
            "new",
            "10.1.0.7",
            "2026-01-01T00:05:00Z",
            "Succeeded",
        ));
        assert_eq!(best(&s), None);
    }
}
