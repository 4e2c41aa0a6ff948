//! Which pod a network namespace is, by an identity the kernel never reuses.
//!
//! The kernel recycles namespace inodes soon after a namespace is gone, so a count keyed by
//! inode and named at the next sync can land on the next pod that got the same inode. Probes
//! therefore record each namespace's cookie beside its inode (the `struct net` cookie, set
//! when the namespace is made from Linux 5.12), and a topology source reads the cookie of
//! every pod namespace it finds (`SO_NETNS_COOKIE` on a socket made inside it, Linux 5.14).
//! [`NetnsIndex`] then names a namespace by its cookie, also after it is gone: counts that
//! arrive late keep the pod they belong to, for `topology.goneRetention` ([`GONE_RETENTION`] by
//! default); an unknown cookie names no pod, never the pod that now has the same inode. For as
//! long, [`NetnsIndex::workloads`] still counts the pod among those whose series are kept.
//!
//! Where the agent cannot read cookies (before Linux 5.14), or the kernel sets none (5.10),
//! namespaces are named by inode, as before, with the caveat that what happens in a namespace
//! between its end and the next sync may be counted for a newer one with the same inode.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Workload;
pub use ebpf_core::Netns;

/// How long a gone namespace is still named (for counts read after its end) and its pod's
/// series kept, unless `topology.goneRetention` says otherwise.
pub const GONE_RETENTION: Duration = Duration::from_secs(600);

/// `SO_NETNS_COOKIE` (asm-generic/socket.h), from Linux 5.14.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A pod namespace a source found: who it is and where to open it.
#[derive(Debug, Clone)]
pub struct Found {
    pub inode: u32,
    pub workload: Workload,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
struct Live {
    workload: Workload,
    path: PathBuf,
    cookie: Option<u64>,
}

#[derive(Debug, Clone)]
struct Named {
    workload: Workload,
    /// When it was last seen gone; `None` while it lives.
    gone: Option<Instant>,
}

/// The pod namespaces of a topology source, by inode (those alive) and by cookie (those alive
/// and those gone in the last `retention`).
#[derive(Debug)]
pub struct NetnsIndex {
    live: HashMap<u32, Live>,
    by_cookie: HashMap<u64, Named>,
    /// Pods whose namespace went in the last `retention` (by cookie or not), with when.
    gone: HashMap<Workload, Instant>,
    /// Whether this kernel tells the agent namespace cookies.
    cookies: bool,
    retention: Duration,
}

/// An index that names namespaces by inode only.
impl Default for NetnsIndex {
    fn default() -> Self {
        NetnsIndex::new(false)
    }
}

impl NetnsIndex {
    /// An empty index; `cookies`: whether namespaces are named by cookie (see
    /// [`cookies_supported`]).
    pub fn new(cookies: bool) -> Self {
        NetnsIndex {
            live: HashMap::new(),
            by_cookie: HashMap::new(),
            gone: HashMap::new(),
            cookies,
            retention: GONE_RETENTION,
        }
    }

    /// How long a gone namespace is still named, and its pod counted in [`Self::workloads`].
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The pods of the namespaces alive and of those gone in the last retention period: the
    /// pods whose series are kept.
    pub fn workloads(&self) -> HashSet<Workload> {
        self.live
            .values()
            .map(|l| l.workload.clone())
            .chain(self.gone.keys().cloned())
            .collect()
    }

    /// The workload of a namespace: by its cookie when it has one and this index reads them
    /// (alive or gone), else by its inode among those alive.
    pub fn get(&self, netns: Netns) -> Option<Workload> {
        if self.cookies && netns.cookie != 0 {
            if let Some(n) = self.by_cookie.get(&netns.cookie) {
                return Some(n.workload.clone());
            }
            // The namespace with this inode, when its cookie could not be read (it could not
            // be entered): as good as the inode gets.
            return self
                .live
                .get(&netns.inode)
                .filter(|l| l.cookie.is_none())
                .map(|l| l.workload.clone());
        }
        self.live.get(&netns.inode).map(|l| l.workload.clone())
    }

    /// Every namespace alive, with its cookie when known.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Workload, &PathBuf, Option<u64>)> {
        self.live
            .iter()
            .map(|(inode, l)| (*inode, &l.workload, &l.path, l.cookie))
    }

    /// How many namespaces are alive.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Keeps the live namespaces whose workload `keep` accepts. The others stop naming their
    /// pod at once, also by cookie: their pod says it left them (it moved, finished or was
    /// deleted), unlike a namespace that is gone, whose late counts keep their pod.
    pub fn retain(&mut self, keep: impl Fn(&Workload) -> bool) {
        for l in self.live.values().filter(|l| !keep(&l.workload)) {
            if let Some(c) = l.cookie {
                self.by_cookie.remove(&c);
            }
        }
        let mut cookies = HashMap::new();
        let kept: Vec<Found> = self
            .live
            .iter()
            .filter(|(_, l)| keep(&l.workload))
            .map(|(inode, l)| {
                if let Some(c) = l.cookie {
                    cookies.insert(*inode, c);
                }
                Found {
                    inode: *inode,
                    workload: l.workload.clone(),
                    path: l.path.clone(),
                }
            })
            .collect();
        self.update(kept, &cookies);
    }

    /// The namespaces of `found` whose cookie is to be read: those not seen before at that
    /// path with that inode, and those whose cookie could not be read yet.
    pub fn unread(&self, found: &[Found]) -> Vec<Found> {
        if !self.cookies {
            return Vec::new();
        }
        found
            .iter()
            .filter(|f| {
                self.live
                    .get(&f.inode)
                    .is_none_or(|l| l.path != f.path || l.cookie.is_none())
            })
            .cloned()
            .collect()
    }

    /// Makes `found` the namespaces alive, with the cookies just read (`cookies`, by inode)
    /// or known from before; those no longer found are gone from now. Returns whether the set
    /// of live namespaces or their names changed.
    pub fn update(&mut self, found: Vec<Found>, cookies: &HashMap<u32, u64>) -> bool {
        let now = Instant::now();
        let mut live = HashMap::with_capacity(found.len());
        for f in found {
            let cookie = cookies.get(&f.inode).copied().or_else(|| {
                self.live
                    .get(&f.inode)
                    .filter(|l| l.path == f.path)
                    .and_then(|l| l.cookie)
            });
            if let Some(c) = cookie {
                self.by_cookie.insert(
                    c,
                    Named {
                        workload: f.workload.clone(),
                        gone: None,
                    },
                );
            }
            live.insert(
                f.inode,
                Live {
                    workload: f.workload,
                    path: f.path,
                    cookie,
                },
            );
        }
        let alive: HashSet<u64> = live.values().filter_map(|l| l.cookie).collect();
        for (cookie, named) in self.by_cookie.iter_mut() {
            if named.gone.is_none() && !alive.contains(cookie) {
                named.gone = Some(now);
            }
        }
        let kept = |t: &Instant| now.duration_since(*t) < self.retention;
        self.by_cookie
            .retain(|_, n| n.gone.as_ref().is_none_or(kept));
        let pods: HashSet<&Workload> = live.values().map(|l| &l.workload).collect();
        for old in self.live.values() {
            if !pods.contains(&old.workload) {
                self.gone.entry(old.workload.clone()).or_insert(now);
            }
        }
        self.gone.retain(|w, t| !pods.contains(w) && kept(t));
        let changed = live.len() != self.live.len()
            || live
                .iter()
                .any(|(i, l)| self.live.get(i).is_none_or(|o| o.workload != l.workload));
        self.live = live;
        changed
    }
}

/// Whether this kernel tells namespace cookies (`SO_NETNS_COOKIE`, Linux 5.14): asked of a
/// socket in the agent's own namespace.
pub fn cookies_supported() -> bool {
    current_netns_cookie().is_ok()
}

/// The cookie of the namespace the calling thread is in.
pub fn current_netns_cookie() -> std::io::Result<u64> {
    // SAFETY: plain syscalls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

/// Reads the cookie of each namespace on a thread of its own that ends afterwards (so no
/// thread of the agent stays in a pod's namespace, whatever fails). Namespaces that cannot be
/// entered, or whose file now opens another namespace, are left out.
pub fn read_cookies(namespaces: &[Found]) -> HashMap<u32, u64> {
    if namespaces.is_empty() {
        return HashMap::new();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut out = HashMap::new();
                for f in namespaces {
                    let Ok(file) = File::open(&f.path) else {
                        continue;
                    };
                    if !file.metadata().is_ok_and(|m| m.ino() as u32 == f.inode) {
                        continue;
                    }
                    // SAFETY: plain syscall on a valid fd; it moves only this thread.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        continue;
                    }
                    match current_netns_cookie() {
                        Ok(c) => {
                            out.insert(f.inode, c);
                        }
                        Err(e) => {
                            tracing::debug!(path = %f.path.display(), error = %e, "cannot read namespace cookie")
                        }
                    }
                }
                out
            })
            .join()
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pod(name: &str) -> Workload {
        Workload {
            namespace: Arc::from(""),
            pod: Arc::from(name),
        }
    }

    fn found(inode: u32, name: &str) -> Found {
        Found {
            inode,
            workload: pod(name),
            path: PathBuf::from(format!("/run/netns/{name}")),
        }
    }

    #[test]
    fn a_reused_inode_never_names_a_gone_namespace_after_the_new_one() {
        let mut index = NetnsIndex::new(true);
        index.update(vec![found(7, "a")], &HashMap::from([(7, 100)]));
        assert_eq!(index.get(Netns::new(7, 100)), Some(pod("a")));
        // a is gone; b gets its inode.
        index.update(vec![found(7, "b")], &HashMap::from([(7, 200)]));
        assert_eq!(
            index.get(Netns::new(7, 100)),
            Some(pod("a")),
            "late count of a"
        );
        assert_eq!(index.get(Netns::new(7, 200)), Some(pod("b")));
        // A cookie never seen names no pod, whatever its inode.
        assert_eq!(index.get(Netns::new(7, 300)), None);
        // Without a cookie (the kernel sets none): by inode, among those alive.
        assert_eq!(index.get(Netns::inode(7)), Some(pod("b")));
        index.update(vec![], &HashMap::new());
        assert_eq!(index.get(Netns::inode(7)), None);
        assert_eq!(index.get(Netns::new(7, 200)), Some(pod("b")), "b, gone");
    }

    #[test]
    fn cookies_are_read_once_per_namespace_and_kept() {
        let mut index = NetnsIndex::new(true);
        let first = vec![found(7, "a"), found(8, "b")];
        assert_eq!(index.unread(&first).len(), 2);
        // b could not be entered.
        index.update(first.clone(), &HashMap::from([(7, 100)]));
        let unread: Vec<u32> = index.unread(&first).iter().map(|f| f.inode).collect();
        assert_eq!(unread, vec![8]);
        // Until then, b is named by inode; a keeps its cookie without reading it again.
        assert_eq!(index.get(Netns::new(8, 555)), Some(pod("b")));
        index.update(first, &HashMap::new());
        assert_eq!(index.get(Netns::new(7, 100)), Some(pod("a")));
    }

    #[test]
    fn a_namespace_its_pod_left_names_no_pod() {
        let mut index = NetnsIndex::new(true);
        index.update(
            vec![found(7, "a"), found(8, "b")],
            &HashMap::from([(7, 100), (8, 200)]),
        );
        index.retain(|w| &*w.pod == "b");
        assert_eq!(index.get(Netns::new(7, 100)), None);
        assert_eq!(index.get(Netns::new(8, 200)), Some(pod("b")));
    }

    #[test]
    fn without_cookies_namespaces_are_named_by_inode() {
        let mut index = NetnsIndex::new(false);
        let first = vec![found(7, "a")];
        assert!(index.unread(&first).is_empty());
        index.update(first, &HashMap::new());
        assert_eq!(index.get(Netns::new(7, 100)), Some(pod("a")));
    }

    #[test]
    fn gone_pods_keep_their_series_for_the_retention_period() {
        let names = |index: &NetnsIndex| {
            let mut v: Vec<String> = index
                .workloads()
                .iter()
                .map(|w| w.pod.to_string())
                .collect();
            v.sort();
            v
        };
        for cookies in [true, false] {
            let mut index = NetnsIndex::new(cookies);
            index.update(
                vec![found(7, "a"), found(8, "b")],
                &HashMap::from([(7, 100), (8, 200)]),
            );
            // a's namespace is gone, b's pod left its namespace (deleted in the API).
            index.update(vec![found(8, "b")], &HashMap::new());
            index.retain(|w| &*w.pod != "b");
            assert_eq!(names(&index), ["a", "b"], "cookies: {cookies}");
            // a comes back (a pod of the same name): it is alive, not gone.
            index.update(vec![found(9, "a")], &HashMap::from([(9, 300)]));
            assert_eq!(names(&index), ["a", "b"]);
        }
        let mut index = NetnsIndex::new(true).with_retention(Duration::ZERO);
        index.update(vec![found(7, "a")], &HashMap::from([(7, 100)]));
        index.update(vec![], &HashMap::new());
        assert!(index.workloads().is_empty());
        assert_eq!(index.get(Netns::new(7, 100)), None, "named no longer");
    }
}
