//! Who a network namespace or an address belongs to: the `node`, `namespace` and `pod` labels.
//!
//! Collectors ask a [`Topology`] before fanning events out, so every consumer sees enriched
//! events. The standalone source ([`netns::NetnsTopology`]) treats each named network
//! namespace as a pod; the Kubernetes source implements the same trait.

pub mod netns;

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
    /// The workload whose network namespace has this inode; `None` for the host namespace
    /// and for namespaces it does not know.
    fn workload_of_netns(&self, netns: u32) -> Option<Workload>;

    /// The workload that owns an address, when known.
    fn workload_of_ip(&self, ip: IpAddr) -> Option<Workload>;

    /// Whether the source has completed its first view of the world.
    fn ready(&self) -> bool;

    /// Every pod network namespace it knows, with a path that opens it: for probes that read
    /// a namespace's own counters (netstat). Sources that cannot open namespaces know none.
    fn pod_netns(&self) -> Vec<PodNetns> {
        Vec::new()
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
    /// Directory of named network namespaces (as `ip netns add` makes them); each is a pod.
    pub netns_dir: String,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            netns_dir: "/run/netns".into(),
        }
    }
}
