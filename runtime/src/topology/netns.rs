//! Standalone topology: every named network namespace under `/run/netns` is a pod of that
//! name, with an empty Kubernetes namespace; the host namespace carries no pod.
//!
//! The directory is rescanned every second, whenever the mount table changes (`ip netns add`
//! and `del` mount and unmount the namespace there), and at once when asked about a namespace
//! it does not know (at most every 100 ms for the same namespace), so a namespace created just
//! before its first packet is still named. Each namespace's cookie is read when it is first
//! found, and names it after it is gone (see [`super::index`]).
//!
//! Addresses name pods too: each namespace's addresses are dumped over rtnetlink by a short
//! thread that enters it (nothing is kept open in it afterwards). A namespace is read when it
//! is first seen, again while it has no address (a CNI adds the pod's address after making
//! its namespace), and every 10 s in any case; the check runs every second and, when asked
//! about an address it does not know, at most every 100 ms. A pod's address does not change
//! during its life, so the 10 s only matter to namespaces renumbered by hand.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::index::{self, Found, Netns, NetnsIndex};
use super::{PodNetns, Topology, Workload};
use crate::netlink;

const MISS_RESCAN_INTERVAL: Duration = Duration::from_millis(100);
/// How old a namespace's addresses may get before they are read again.
const ADDRESSES_MAX_AGE: Duration = Duration::from_secs(10);

/// What is known of one namespace's addresses.
struct NetnsAddresses {
    addresses: Vec<IpAddr>,
    read: Instant,
}

pub struct NetnsTopology {
    dir: PathBuf,
    index: RwLock<NetnsIndex>,
    /// One rescan at a time (each may enter new namespaces to read their cookies).
    scanning: Mutex<()>,
    /// When each unknown namespace last caused a rescan.
    misses: Mutex<HashMap<Netns, Instant>>,
    host_netns: Option<u32>,
    /// The device of namespace files (nsfs): a file in the directory on another one is not
    /// (or no longer) a namespace's mount point.
    nsfs_dev: Option<u64>,
    /// Each pod namespace's addresses, by inode.
    addresses: Mutex<HashMap<u32, NetnsAddresses>>,
    by_ip: RwLock<HashMap<IpAddr, Workload>>,
    /// When an unknown address last caused a check.
    ip_miss: Mutex<Option<Instant>>,
}

impl NetnsTopology {
    /// The pods of `dir`; a gone one is still named, and its series kept, for `retention`.
    pub fn new(dir: impl Into<PathBuf>, retention: Duration) -> Arc<Self> {
        let host = std::fs::metadata("/proc/self/ns/net").ok();
        let cookies = index::cookies_supported();
        if !cookies {
            tracing::info!("this kernel tells no network namespace cookies (SO_NETNS_COOKIE, Linux 5.14): pods are named by namespace inode");
        }
        let topo = Arc::new(NetnsTopology {
            dir: dir.into(),
            index: RwLock::new(NetnsIndex::new(cookies).with_retention(retention)),
            scanning: Mutex::new(()),
            misses: Mutex::new(HashMap::new()),
            host_netns: host.as_ref().map(|m| m.ino() as u32),
            nsfs_dev: host.as_ref().map(|m| m.dev()),
            addresses: Mutex::new(HashMap::new()),
            by_ip: RwLock::new(HashMap::new()),
            ip_miss: Mutex::new(None),
        });
        topo.rescan();
        topo.refresh_addresses();
        topo
    }

    /// Re-reads the namespace directory (a missing directory means no pods), and the cookies
    /// of the namespaces new there.
    pub fn rescan(&self) {
        let _one = self.scanning.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                // A mount point bound to a namespace: its inode is the namespace's.
                let Ok(meta) = std::fs::metadata(entry.path()) else {
                    continue;
                };
                let inode = meta.ino() as u32;
                if Some(inode) == self.host_netns
                    || self.nsfs_dev.is_some_and(|dev| dev != meta.dev())
                {
                    continue;
                }
                found.push(Found {
                    inode,
                    workload: Workload {
                        namespace: Arc::from(""),
                        pod: Arc::from(name),
                    },
                    path: entry.path(),
                });
            }
        }
        let unread = self.read_index().unread(&found);
        let cookies = index::read_cookies(&unread);
        let pods = found.len();
        if self
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .update(found, &cookies)
        {
            tracing::debug!(pods, "network namespaces changed");
        }
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, NetnsIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Rescans whenever the mount table changes, until the topology is dropped: `ip netns
    /// add` binds the namespace onto its file, so a namespace is named (and its cookie read)
    /// before its first packet, however short its life.
    fn spawn_mount_watch(self: &Arc<Self>) {
        let topo = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("netns-watch".into())
            .spawn(move || {
                let Ok(mounts) = File::open("/proc/self/mountinfo") else {
                    return;
                };
                loop {
                    let mut fd = libc::pollfd {
                        fd: mounts.as_raw_fd(),
                        events: libc::POLLPRI,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the kernel writes only its revents.
                    let n = unsafe { libc::poll(&mut fd, 1, 1000) };
                    let Some(t) = topo.upgrade() else {
                        return;
                    };
                    if n > 0 && fd.revents & (libc::POLLPRI | libc::POLLERR) != 0 {
                        t.rescan();
                    } else if n < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch the mount table for new namespaces");
        }
    }

    /// Keeps the view fresh until the returned task is dropped or aborted.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.spawn_mount_watch();
        let topo = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let t = Arc::clone(&topo);
                let _ = tokio::task::spawn_blocking(move || {
                    t.rescan();
                    t.refresh_addresses();
                })
                .await;
            }
        })
    }

    /// Brings the addresses up to date: reads the namespaces new since the last call, those
    /// without an address yet (at most every 100 ms each), and those read more than
    /// [`ADDRESSES_MAX_AGE`] ago.
    pub fn refresh_addresses(&self) {
        let pods = self.pod_netns();
        let mut known = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let before = known.len();
        known.retain(|inode, _| pods.iter().any(|p| p.inode == *inode));
        let mut changed = known.len() != before;
        let due: Vec<&PodNetns> = pods
            .iter()
            .filter(|p| {
                known.get(&p.inode).is_none_or(|k| {
                    let age = k.read.elapsed();
                    (k.addresses.is_empty() && age >= MISS_RESCAN_INTERVAL)
                        || age >= ADDRESSES_MAX_AGE
                })
            })
            .collect();
        if !due.is_empty() {
            let now = Instant::now();
            for (inode, addresses) in read_addresses(&due) {
                let old = known.insert(
                    inode,
                    NetnsAddresses {
                        addresses: addresses.clone(),
                        read: now,
                    },
                );
                changed |= old.is_none_or(|o| o.addresses != addresses);
            }
        }
        if !changed {
            return;
        }
        let mut by_ip = HashMap::new();
        for p in &pods {
            if let Some(state) = known.get(&p.inode) {
                for ip in &state.addresses {
                    by_ip.insert(*ip, p.workload.clone());
                }
            }
        }
        *self.by_ip.write().unwrap_or_else(|e| e.into_inner()) = by_ip;
    }

    fn lookup(&self, netns: Netns) -> Option<Workload> {
        self.read_index().get(netns)
    }
}

impl Topology for NetnsTopology {
    fn workload_of_netns(&self, netns: Netns) -> Option<Workload> {
        if netns.inode == 0 || Some(netns.inode) == self.host_netns {
            return None;
        }
        if let Some(w) = self.lookup(netns) {
            return Some(w);
        }
        let due = {
            let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Namespaces no name will ever be found for (containers without one) stay here;
            // keep the table small.
            if misses.len() > 4096 {
                misses.retain(|_, t| now.duration_since(*t) < MISS_RESCAN_INTERVAL);
            }
            match misses.get(&netns) {
                Some(t) if now.duration_since(*t) < MISS_RESCAN_INTERVAL => false,
                _ => {
                    misses.insert(netns, now);
                    true
                }
            }
        };
        if due {
            self.rescan();
            return self.lookup(netns);
        }
        None
    }

    fn workload_of_ip(&self, ip: IpAddr) -> Option<Workload> {
        let lookup = || {
            self.by_ip
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ip)
                .cloned()
        };
        if let Some(w) = lookup() {
            return Some(w);
        }
        let due = {
            let mut last = self.ip_miss.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match *last {
                Some(t) if now.duration_since(t) < MISS_RESCAN_INTERVAL => false,
                _ => {
                    *last = Some(now);
                    true
                }
            }
        };
        if due {
            self.rescan();
            self.refresh_addresses();
            return lookup();
        }
        None
    }

    fn ready(&self) -> bool {
        true
    }

    fn workloads(&self) -> Option<HashSet<Workload>> {
        Some(self.read_index().workloads())
    }

    fn pod_netns(&self) -> Vec<PodNetns> {
        self.read_index()
            .live()
            .map(|(inode, workload, path, _)| PodNetns {
                inode,
                workload: workload.clone(),
                path: path.clone(),
            })
            .collect()
    }
}

/// Reads the addresses of each namespace on a thread of its own that ends afterwards (so no
/// thread of the agent stays in a pod's namespace, whatever fails). Namespaces that cannot be
/// entered are left out, for the next call.
fn read_addresses(namespaces: &[&PodNetns]) -> Vec<(u32, Vec<IpAddr>)> {
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut out = Vec::new();
            for p in namespaces {
                let Ok(file) = File::open(&p.path) else {
                    continue;
                };
                // The file may now be another namespace (deleted and made again).
                if !file.metadata().is_ok_and(|m| m.ino() as u32 == p.inode) {
                    continue;
                }
                // SAFETY: plain syscall on a valid fd; it moves only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    tracing::debug!(path = %p.path.display(), error = %std::io::Error::last_os_error(), "cannot enter namespace to read its addresses");
                    continue;
                }
                match netlink::addresses() {
                    Ok(addresses) => out.push((p.inode, addresses)),
                    Err(e) => {
                        tracing::debug!(path = %p.path.display(), error = %e, "cannot read addresses")
                    }
                }
            }
            out
        });
        reader.join().unwrap_or_default()
    })
}
