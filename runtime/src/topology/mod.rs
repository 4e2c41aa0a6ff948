//! Who a network namespace or an address belongs to: the `node`, `namespace` and `pod` labels.
//!
//! Collectors ask a [`Topology`] before fanning events out, so every consumer sees enriched
//! events. The standalone source ([`netns::NetnsTopology`]) treats each named network
//! namespace as a pod; the Kubernetes source ([`kube::KubeTopology`]) asks the API server.

pub mod index;
pub mod kube;
pub mod labels;
pub mod netns;

pub use index::Netns;

use crate::config::Invalid;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

/// The workload a namespace or address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// Kubernetes namespace; empty without Kubernetes.
    pub namespace: Arc<str>,
    /// Pod name (the netns name in standalone mode).
    pub pod: Arc<str>,
}

/// Resolves network namespaces and addresses to workloads.
pub trait Topology: Send + Sync {
    /// The workload whose network namespace this is (by cookie where the kernel gives one,
    /// also shortly after the namespace is gone; else by inode: see [`index`]); `None` for
    /// the host namespace and for namespaces it does not know.
    fn workload_of_netns(&self, netns: Netns) -> Option<Workload>;

    /// The workload (pod) that owns an address, when known. Addresses of host-network pods
    /// are their node's: see [`Topology::node_of_ip`].
    fn workload_of_ip(&self, ip: IpAddr) -> Option<Workload>;

    /// The workload that owned an address at `at` (a count that happened then, read later):
    /// a pod that has since gone, or left the address to a newer pod, is still the one. Sources
    /// that keep no history answer who owns it now.
    fn workload_of_ip_at(&self, ip: IpAddr, _at: std::time::Instant) -> Option<Workload> {
        self.workload_of_ip(ip)
    }

    /// The node that owns an address (its own addresses, which host-network pods share).
    fn node_of_ip(&self, _ip: IpAddr) -> Option<Arc<str>> {
        None
    }

    /// Whether the source has completed its first view of the world.
    fn ready(&self) -> bool;

    /// `Err` with the reason while the source is not ready (for `/readyz`).
    /// Why what the topology knows may be out of date (the API server has not answered for
    /// `topology.staleAfter`); `None` while it is current.
    fn stale(&self) -> Option<String> {
        None
    }

    fn readiness(&self) -> Result<(), NotReady> {
        if self.ready() {
            Ok(())
        } else {
            Err(NotReady::FirstView)
        }
    }

    /// The values of `topology.additionalLabels` for a workload (in their order), when the
    /// source knows its pod's labels.
    fn label_values(&self, _workload: &Workload) -> Option<Arc<[String]>> {
        None
    }

    /// Every pod network namespace it knows, with a path that opens it: for probes that read
    /// a namespace's own counters (netstat). Sources that cannot open namespaces know none.
    fn pod_netns(&self) -> Vec<PodNetns> {
        Vec::new()
    }

    /// The workloads whose series are kept: those alive and those gone in the last
    /// `topology.goneRetention`; the series of any other pod are removed. `None` (keep every
    /// series) while the source is not ready, and for sources that cannot tell.
    fn workloads(&self) -> Option<HashSet<Workload>> {
        None
    }
}

/// A pod's network namespace and how to enter it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetns {
    pub inode: u32,
    pub workload: Workload,
    /// Opens the namespace: `/run/netns/<name>` (standalone) or `/proc/<pid>/ns/net` (a pod's
    /// process).
    pub path: PathBuf,
}

/// `topology:` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TopologyConfig {
    /// Where pods come from: `auto` (Kubernetes when credentials are found, else
    /// standalone), `kubernetes` or `standalone`.
    pub source: Source,
    /// Directory of named network namespaces (as `ip netns add` makes them); each is a pod
    /// (standalone).
    pub netns_dir: String,
    /// Kubeconfig file for the API server; empty = `$KUBECONFIG`, `~/.kube/config`, else the
    /// in-cluster service account.
    pub kubeconfig: String,
    /// Where the pods' processes are found (the host's /proc: the agent runs with hostPID).
    pub proc_dir: String,
    /// Labels made from pod labels, `NAME=TEMPLATE` with `${labels:KEY}` (see [`labels`]),
    /// added to workload-labelled metrics and to events.
    pub additional_labels: Vec<String>,
    /// Distinct values each additional label takes at most; later ones are `_other`.
    pub max_label_values: usize,
    /// How long a gone pod's namespace is still named (for counts read after its end) and
    /// its series are kept; then they are removed from `/metrics`.
    #[serde(deserialize_with = "crate::units::duration")]
    pub gone_retention: std::time::Duration,
    /// Kubernetes: after this long without an answer from the API server, the topology is
    /// said to be stale (`/readyz`'s body, `sonde_topology_stale`).
    #[serde(deserialize_with = "crate::units::duration")]
    pub stale_after: std::time::Duration,
}

impl TopologyConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_label_values == 0 {
            return Err(Invalid::new(
                "topology.maxLabelValues",
                "must be at least 1",
            ));
        }
        if self.gone_retention < std::time::Duration::from_secs(1) {
            return Err(Invalid::new(
                "topology.goneRetention",
                "must be at least 1s",
            ));
        }
        if self.stale_after < std::time::Duration::from_secs(1) {
            return Err(Invalid::new("topology.staleAfter", "must be at least 1s"));
        }
        self.additional_labels().map(|_| ())
    }

    /// The additional labels, parsed.
    pub fn additional_labels(&self) -> Result<labels::AdditionalLabels, Invalid> {
        labels::AdditionalLabels::parse(&self.additional_labels, self.max_label_values)
    }
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            source: Source::Auto,
            netns_dir: "/run/netns".into(),
            kubeconfig: String::new(),
            proc_dir: "/proc".into(),
            additional_labels: Vec::new(),
            max_label_values: 100,
            gone_retention: index::GONE_RETENTION,
            stale_after: std::time::Duration::from_secs(120),
        }
    }
}

/// `topology.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Auto,
    Kubernetes,
    Standalone,
}

/// The topology the agent runs with, and the API client when it is Kubernetes'.
pub struct Started {
    pub topology: Arc<dyn Topology>,
    pub client: Option<::kube::Client>,
    /// Keeps the standalone source's refresh running.
    _refresh: Option<tokio::task::JoinHandle<()>>,
}

/// Why the topology is not ready (`/readyz` says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("first view not complete")]
    FirstView,
    /// The Kubernetes watches that have not listed yet, each with its last error if any.
    #[error("kubernetes: waiting for the first list of {}", .0.join(", "))]
    Lists(Vec<String>),
}

/// Why the Kubernetes source cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("no Kubernetes credentials: {0}")]
    Credentials(#[source] ::kube::config::InferConfigError),
    #[error("topology.kubeconfig: {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
}

/// Starts the configured source for node `node`. `auto` picks Kubernetes when
/// [`kube::credentials`] finds some; a Kubernetes source whose client cannot be made is an
/// error (with `auto`, the agent falls back to standalone and says why).
pub async fn start(
    config: &TopologyConfig,
    node: &str,
    labels: Arc<labels::AdditionalLabels>,
) -> Result<Started, TopologyError> {
    let kubernetes = match config.source {
        Source::Standalone => false,
        Source::Kubernetes => true,
        Source::Auto => match kube::credentials(config) {
            Some(found) => {
                tracing::info!(credentials = %found, "topology: auto found Kubernetes");
                true
            }
            None => false,
        },
    };
    if kubernetes {
        match kube::client(config).await {
            Ok(client) => {
                let topology = kube::KubeTopology::start(client.clone(), node, config, labels);
                return Ok(Started {
                    topology,
                    client: Some(client),
                    _refresh: None,
                });
            }
            Err(e) if config.source == Source::Kubernetes => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "topology: auto falls back to standalone");
            }
        }
    }
    tracing::info!(dir = %config.netns_dir, "topology: standalone (named network namespaces)");
    let topology = netns::NetnsTopology::new(&config.netns_dir, config.gone_retention);
    let refresh = topology.spawn_refresh();
    Ok(Started {
        topology,
        client: None,
        _refresh: Some(refresh),
    })
}
