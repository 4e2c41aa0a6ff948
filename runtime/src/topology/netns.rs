//! Standalone topology: every named network namespace under `/run/netns` is a pod of that
//! name, with an empty Kubernetes namespace; the host namespace carries no pod.
//!
//! The directory is rescanned whenever the mount table changes (`ip netns add` and `del`
//! mount and unmount the namespace there), at once when asked about a namespace it does not
//! know (at most every 100 ms for the same namespace), so a namespace created just before its
//! first packet is still named, and every 10 s in any case (every second where the mount
//! table cannot be watched). Each namespace's cookie is read when it is first found, and
//! names it after it is gone (see [`super::index`]).
//!
//! Addresses name pods too: each namespace's addresses are dumped over rtnetlink by a short
//! thread that enters it. A namespace is read when it is first seen, and that thread leaves
//! an rtnetlink socket behind in it, subscribed to its address changes: one thread polls those
//! sockets and has a namespace read again as soon as an address comes or goes there, so a pod
//! is known by its address from the moment a CNI gives it one, however short its life. The
//! socket holds the namespace alive: it is closed as soon as the namespace leaves the
//! directory. Without a subscription (it failed, or the thread could not start) a namespace
//! without an address is read again after 1, 2, 4 and 8 s, then every 10 s, and at once
//! (at most every 100 ms) when the agent is asked about an address it does not know; in any
//! case one with an address every 60 s. Nothing here grows with the pods
//! every second: a node of idle pods costs a read of each every 10 or 60 s.
//!
//! Who had an address is kept with when (as the agent saw it), for `goneRetention` after
//! the pod left it: counts read after a pod is gone, and counts of an address that a newer
//! pod has since taken, are named by the time they happened ([`Topology::workload_of_ip_at`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::index::{self, Found, Netns, NetnsIndex};
use super::{PodNetns, Topology, Workload};
use crate::netlink;

const MISS_RESCAN_INTERVAL: Duration = Duration::from_millis(100);
/// How often the directory is rescanned while the mount table is watched (the watch sees
/// `ip netns add` and `del` at once; this catches what it cannot, a file renamed say).
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// How old a namespace's addresses may get before they are read again.
const ADDRESSES_MAX_AGE: Duration = Duration::from_secs(60);
/// The first wait before a namespace without an address is read again; it doubles after
/// every read that finds none, up to [`ADDRESSLESS_MAX_WAIT`].
const ADDRESSLESS_FIRST_WAIT: Duration = Duration::from_secs(1);
const ADDRESSLESS_MAX_WAIT: Duration = Duration::from_secs(10);

/// What is known of one namespace's addresses.
struct NetnsAddresses {
    addresses: Vec<IpAddr>,
    read: Instant,
    /// How long after `read` it is due again.
    wait: Duration,
    /// Whether the address watch follows it.
    subscribed: bool,
}

impl NetnsAddresses {
    /// Whether it is to be read again: when due, or (`eager`, asked about an unknown address)
    /// at once if it has no address yet and no subscription would have told of one.
    fn due(&self, eager: bool) -> bool {
        let age = self.read.elapsed();
        age >= self.wait
            || (eager
                && !self.subscribed
                && self.addresses.is_empty()
                && age >= MISS_RESCAN_INTERVAL)
    }

    /// The wait after a read that found `addresses`, following one that waited `previous`
    /// (`None` for a namespace read the first time).
    fn next_wait(addresses: &[IpAddr], previous: Option<Duration>) -> Duration {
        if !addresses.is_empty() {
            return ADDRESSES_MAX_AGE;
        }
        match previous {
            Some(w) if w < ADDRESSES_MAX_AGE => (w * 2).min(ADDRESSLESS_MAX_WAIT),
            _ => ADDRESSLESS_FIRST_WAIT,
        }
    }
}

/// A pod's time with an address: from when the agent saw it there, to when the agent saw it
/// gone (the pod or the address).
#[derive(Debug, Clone)]
struct Owner {
    workload: Workload,
    inode: u32,
    since: Instant,
    until: Option<Instant>,
}

/// Who had the address at `at`, of its owners (oldest first): the earliest of those that had
/// not left it by then (the agent sees a new owner late, so a newer one may have `since`
/// after `at` and still be the one); if all had left, the last to leave (the agent sees a
/// departure late too).
fn owner_at(owners: &[Owner], at: Instant) -> Option<&Owner> {
    owners
        .iter()
        .filter(|o| o.until.is_none_or(|u| u >= at))
        .min_by_key(|o| o.since)
        .or_else(|| owners.iter().max_by_key(|o| o.until))
}

/// The thread that polls the namespaces' address subscriptions. Only it closes them (so no
/// fd it polls is closed and reused under it): others hand it changes and wake it.
struct AddressWatch {
    changes: std::sync::mpsc::Sender<WatchChange>,
    wake: std::os::fd::OwnedFd,
}

enum WatchChange {
    Add(u32, netlink::Subscription),
    Remove(u32),
}

impl AddressWatch {
    fn send(&self, change: WatchChange) {
        if self.changes.send(change).is_ok() {
            let one = 1u64;
            // SAFETY: an eventfd takes 8 bytes.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
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
    /// Whether the mount table is watched (then the periodic rescan can be slow).
    watching: std::sync::atomic::AtomicBool,
    /// Each pod namespace's addresses, by inode.
    addresses: Mutex<HashMap<u32, NetnsAddresses>>,
    /// Who had each address, oldest first (see [`Owner`]).
    by_ip: RwLock<HashMap<IpAddr, Vec<Owner>>>,
    /// How long a gone pod's addresses still name it.
    retention: Duration,
    /// The address watch thread, when it runs.
    watch: Mutex<Option<AddressWatch>>,
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
            watching: std::sync::atomic::AtomicBool::new(false),
            addresses: Mutex::new(HashMap::new()),
            by_ip: RwLock::new(HashMap::new()),
            retention,
            watch: Mutex::new(None),
            ip_miss: Mutex::new(None),
        });
        // Before the first read, so that each namespace is read (and subscribed to) once.
        topo.spawn_address_watch();
        topo.rescan();
        topo.refresh_addresses(false);
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
        let changed = self
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .update(found, &cookies);
        if changed {
            tracing::debug!(pods, "network namespaces changed");
            // New namespaces are read (and subscribed to) now, gone ones leave their
            // addresses now: a pod that lives a tenth of a second is still named by them.
            self.refresh_addresses(false);
        }
    }

    /// Starts the thread that polls the namespaces' address subscriptions.
    fn spawn_address_watch(self: &Arc<Self>) {
        // SAFETY: plain syscall; the fd is owned at once.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot follow pods' addresses: they are read periodically");
            return;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let wake = unsafe { std::os::fd::OwnedFd::from_raw_fd(wake) };
        let Ok(theirs) = wake.try_clone() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let topo = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("netns-addresses".into())
            .spawn(move || watch_addresses(topo, rx, theirs));
        match spawned {
            Ok(_) => {
                *self.watch.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(AddressWatch { changes: tx, wake })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow pods' addresses: they are read periodically")
            }
        }
    }

    /// A namespace's subscription failed: its addresses are read periodically from now on.
    fn unsubscribed(&self, inode: u32) {
        if let Some(k) = self
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&inode)
        {
            k.subscribed = false;
        }
    }

    /// Marks namespaces due for a read of their addresses, and reads them.
    fn addresses_changed(&self, inodes: &[u32]) {
        {
            let mut known = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
            for inode in inodes {
                if let Some(k) = known.get_mut(inode) {
                    k.wait = Duration::ZERO;
                }
            }
        }
        self.refresh_addresses(false);
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
                let set = |on: bool| {
                    if let Some(t) = topo.upgrade() {
                        t.watching.store(on, std::sync::atomic::Ordering::Relaxed);
                    }
                };
                set(true);
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
                        t.watching
                            .store(false, std::sync::atomic::Ordering::Relaxed);
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
            let mut rescanned = Instant::now();
            loop {
                tick.tick().await;
                let rescan = !topo.watching.load(std::sync::atomic::Ordering::Relaxed)
                    || rescanned.elapsed() >= RESCAN_INTERVAL;
                if rescan {
                    rescanned = Instant::now();
                }
                let t = Arc::clone(&topo);
                let _ = tokio::task::spawn_blocking(move || {
                    if rescan {
                        t.rescan();
                    }
                    t.refresh_addresses(false);
                })
                .await;
            }
        })
    }

    /// Brings the addresses up to date: reads the namespaces new since the last call and those
    /// due (see [`NetnsAddresses::due`]); `eager` when asked about an address no pod has.
    pub fn refresh_addresses(&self, eager: bool) {
        let mut known = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        // The namespaces as they are now, under the lock: a list taken before it could be
        // older than what another call just recorded, and undo it.
        let pods = self.pod_netns();
        let watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let before = known.len();
        known.retain(|inode, _| {
            let live = pods.iter().any(|p| p.inode == *inode);
            if !live {
                if let Some(w) = watch.as_ref() {
                    w.send(WatchChange::Remove(*inode));
                }
            }
            live
        });
        let mut changed = known.len() != before;
        let due: Vec<&PodNetns> = pods
            .iter()
            .filter(|p| known.get(&p.inode).is_none_or(|k| k.due(eager)))
            .collect();
        if !due.is_empty() {
            let now = Instant::now();
            let subscribe: HashSet<u32> = match watch.as_ref() {
                Some(_) => due
                    .iter()
                    .filter(|p| !known.contains_key(&p.inode))
                    .map(|p| p.inode)
                    .collect(),
                None => HashSet::new(),
            };
            for read in read_addresses(&due, &subscribe) {
                let previous = known.get(&read.inode).map(|k| k.wait);
                let subscribed = read.subscription.is_some()
                    || known.get(&read.inode).is_some_and(|k| k.subscribed);
                if let (Some(fd), Some(w)) = (read.subscription, watch.as_ref()) {
                    w.send(WatchChange::Add(read.inode, fd));
                }
                let old = known.insert(
                    read.inode,
                    NetnsAddresses {
                        // Followed: read again when told, else at the longest wait.
                        wait: if subscribed {
                            ADDRESSES_MAX_AGE
                        } else {
                            NetnsAddresses::next_wait(&read.addresses, previous)
                        },
                        subscribed,
                        addresses: read.addresses.clone(),
                        read: now,
                    },
                );
                changed |= old.is_none_or(|o| o.addresses != read.addresses);
            }
        }
        drop(watch);
        if changed {
            self.record_owners(&pods, &known);
        }
    }

    /// Brings the owners of addresses up to date with what each live pod has now.
    fn record_owners(&self, pods: &[PodNetns], known: &HashMap<u32, NetnsAddresses>) {
        let now = Instant::now();
        let mut current: HashMap<IpAddr, &PodNetns> = HashMap::new();
        for p in pods {
            if let Some(state) = known.get(&p.inode) {
                for ip in &state.addresses {
                    current.insert(*ip, p);
                }
            }
        }
        let same = |o: &Owner, p: &PodNetns| o.inode == p.inode && o.workload == p.workload;
        let mut by_ip = self.by_ip.write().unwrap_or_else(|e| e.into_inner());
        for (ip, owners) in by_ip.iter_mut() {
            for o in owners.iter_mut().filter(|o| o.until.is_none()) {
                if !current.get(ip).is_some_and(|p| same(o, p)) {
                    o.until = Some(now);
                }
            }
        }
        for (ip, p) in current {
            let owners = by_ip.entry(ip).or_default();
            if !owners.iter().any(|o| o.until.is_none() && same(o, p)) {
                owners.push(Owner {
                    workload: p.workload.clone(),
                    inode: p.inode,
                    since: now,
                    until: None,
                });
            }
        }
        let retention = self.retention;
        by_ip.retain(|_, owners| {
            owners.retain(|o| o.until.is_none_or(|u| now.duration_since(u) < retention));
            !owners.is_empty()
        });
    }

    /// Who had `ip` at `at`, looking the namespaces' addresses up again (at most every
    /// 100 ms) when nobody ever had it.
    fn owner_of_ip(&self, ip: IpAddr, at: Option<Instant>) -> Option<Workload> {
        let lookup = || {
            let by_ip = self.by_ip.read().unwrap_or_else(|e| e.into_inner());
            let owners = by_ip.get(&ip)?;
            match at {
                Some(at) => owner_at(owners, at),
                // Now: whoever has it, else whoever had it last.
                None => owners
                    .iter()
                    .find(|o| o.until.is_none())
                    .or_else(|| owners.iter().max_by_key(|o| o.until)),
            }
            .map(|o| o.workload.clone())
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
            self.refresh_addresses(true);
            return lookup();
        }
        None
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
        self.owner_of_ip(ip, None)
    }

    fn workload_of_ip_at(&self, ip: IpAddr, at: Instant) -> Option<Workload> {
        self.owner_of_ip(ip, Some(at))
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

/// What [`read_addresses`] found in one namespace.
struct AddressRead {
    inode: u32,
    addresses: Vec<IpAddr>,
    /// A socket subscribed to its address changes, when asked for.
    subscription: Option<netlink::Subscription>,
}

/// Reads the addresses of each namespace on a thread of its own that ends afterwards (so no
/// thread of the agent stays in a pod's namespace, whatever fails); in those of `subscribe`
/// it first opens a socket subscribed to their address changes (first, so that no change
/// between the read and the subscription is missed). Namespaces that cannot be entered are
/// left out, for the next call.
fn read_addresses(namespaces: &[&PodNetns], subscribe: &HashSet<u32>) -> Vec<AddressRead> {
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
                let subscription = if subscribe.contains(&p.inode) {
                    netlink::subscribe_addresses()
                        .inspect_err(|e| tracing::debug!(path = %p.path.display(), error = %e, "cannot follow the namespace's addresses"))
                        .ok()
                } else {
                    None
                };
                match netlink::addresses() {
                    Ok(addresses) => out.push(AddressRead {
                        inode: p.inode,
                        addresses,
                        subscription,
                    }),
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

/// The address watch thread: polls every subscription and the wake-up eventfd; reads a
/// namespace's addresses again when its socket has news. Ends when the topology is dropped.
fn watch_addresses(
    topo: std::sync::Weak<NetnsTopology>,
    changes: std::sync::mpsc::Receiver<WatchChange>,
    wake: std::os::fd::OwnedFd,
) {
    let mut sockets: HashMap<u32, netlink::Subscription> = HashMap::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        while let Ok(change) = changes.try_recv() {
            match change {
                WatchChange::Add(inode, fd) => {
                    sockets.insert(inode, fd);
                }
                WatchChange::Remove(inode) => {
                    sockets.remove(&inode);
                }
            }
        }
        let order: Vec<u32> = sockets.keys().copied().collect();
        let mut fds: Vec<libc::pollfd> = std::iter::once(wake.as_raw_fd())
            .chain(order.iter().map(|i| sockets[i].as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: valid pollfds for their count; the kernel writes only their revents.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10_000) };
        let Some(t) = topo.upgrade() else {
            return;
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %std::io::Error::last_os_error(), "the address watch stopped: addresses are read periodically");
            return;
        }
        if fds[0].revents != 0 {
            let mut count = 0u64;
            // SAFETY: an eventfd gives 8 bytes; it is non-blocking.
            unsafe { libc::read(wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        }
        let mut news = Vec::new();
        for (inode, fd) in order.iter().zip(&fds[1..]) {
            if fd.revents == 0 {
                continue;
            }
            netlink::drain(&sockets[inode], &mut buf);
            // Whatever it says (news, an overrun, an error), the namespace is read again; a
            // socket in error is dropped, and the namespace read periodically from then on.
            if fd.revents & (libc::POLLERR | libc::POLLNVAL | libc::POLLHUP) != 0 {
                sockets.remove(inode);
                t.unsubscribed(*inode);
            }
            news.push(*inode);
        }
        if !news.is_empty() {
            t.addresses_changed(&news);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without an address, a namespace is read again after 1, 2, 4, 8 s, then every 10 s;
    /// with one, every 60 s; losing it starts over at 1 s.
    #[test]
    fn namespaces_without_an_address_are_read_less_often_as_they_age() {
        let none: &[IpAddr] = &[];
        let some = &["10.0.0.1".parse::<IpAddr>().unwrap()];
        let mut wait = None;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let w = NetnsAddresses::next_wait(none, wait);
            waits.push(w.as_secs());
            wait = Some(w);
        }
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        let with = NetnsAddresses::next_wait(some, wait);
        assert_eq!(with, ADDRESSES_MAX_AGE);
        assert_eq!(NetnsAddresses::next_wait(none, Some(with)).as_secs(), 1);
    }

    /// Asked about an unknown address, a namespace without one is read at once (after
    /// 100 ms) unless its subscription follows it; one with an address only when due.
    #[test]
    fn an_unknown_address_reads_addressless_namespaces_at_once() {
        let read = Instant::now() - Duration::from_millis(200);
        let addressless = NetnsAddresses {
            addresses: Vec::new(),
            read,
            wait: ADDRESSLESS_MAX_WAIT,
            subscribed: false,
        };
        assert!(!addressless.due(false));
        assert!(addressless.due(true));
        // Followed: its subscription tells when it gets an address.
        let followed = NetnsAddresses {
            subscribed: true,
            addresses: Vec::new(),
            read,
            wait: ADDRESSES_MAX_AGE,
        };
        assert!(!followed.due(true));
        let addressed = NetnsAddresses {
            addresses: vec!["10.0.0.1".parse().unwrap()],
            read,
            wait: ADDRESSES_MAX_AGE,
            subscribed: false,
        };
        assert!(!addressed.due(true));
    }

    /// An address pod a had, then b: a count at a time a had it is a's, one after a left it
    /// b's, even before the agent saw b take it; once both left, the last to leave.
    #[test]
    fn counts_are_named_by_who_had_the_address_then() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let pod = |name: &str| Workload {
            namespace: Arc::from(""),
            pod: Arc::from(name),
        };
        let mut owners = vec![
            Owner {
                workload: pod("a"),
                inode: 1,
                since: at(0),
                until: Some(at(100)),
            },
            Owner {
                workload: pod("b"),
                inode: 1,
                since: at(150),
                until: None,
            },
        ];
        let who =
            |owners: &[Owner], ms| owner_at(owners, at(ms)).map(|o| o.workload.pod.to_string());
        assert_eq!(who(&owners, 50).as_deref(), Some("a"));
        assert_eq!(who(&owners, 100).as_deref(), Some("a"));
        // After a left, before the agent saw b: b's.
        assert_eq!(who(&owners, 120).as_deref(), Some("b"));
        assert_eq!(who(&owners, 500).as_deref(), Some("b"));
        owners[1].until = Some(at(300));
        assert_eq!(who(&owners, 200).as_deref(), Some("b"));
        assert_eq!(who(&owners, 400).as_deref(), Some("b"), "the last to leave");
        assert_eq!(owner_at(&[], at(0)).map(|o| o.inode), None);
    }
}
