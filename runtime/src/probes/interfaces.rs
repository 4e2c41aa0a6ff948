//! Interfaces of a probe with TC hooks: a thread follows the agent's network namespace's
//! links over rtnetlink (a dump, then `RTM_NEWLINK` / `RTM_DELLINK` notifications), attaches
//! the probe's programs to each interface whose name matches the probe's `interfaces`
//! patterns as it appears, and detaches them when it goes, is renamed away, or the patterns
//! change. Dropping the watch stops the thread and detaches everything.

use crate::config::Invalid;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ebpf_core::{TcAttach, TcLinks, TcTarget};
use serde::{Deserialize, Deserializer};

use crate::netlink::{self, Link, LinkChange};

/// How long the thread waits for a notification before checking whether it should stop.
const POLL: Duration = Duration::from_millis(200);

/// Names an interface pattern list matches: `veth*` is a prefix, anything else a whole name.
pub fn matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == p,
    })
}

/// Checks an `interfaces` list: `probes.<probe>.interfaces` named in the error.
pub fn validate(probe: &str, patterns: &[String]) -> Result<(), Invalid> {
    for p in patterns {
        let name = p.strip_suffix('*').unwrap_or(p);
        if p.is_empty()
            || name.contains('*')
            || name.len() >= libc::IF_NAMESIZE
            || name.contains(['/', ' '])
        {
            return Err(Invalid::new(
                format!("probes.{probe}.interfaces"),
                format!("{p:?} is not an interface name or a prefix ending in `*`"),
            ));
        }
    }
    Ok(())
}

/// `probes.<probe>.attach`: `auto` (TCX links where the kernel has them, a clsact qdisc and
/// filters otherwise), `tcx` or `clsact`.
pub fn attach<'de, D: Deserializer<'de>>(d: D) -> Result<TcAttach, D::Error> {
    let s = String::deserialize(d)?;
    TcAttach::parse(&s).ok_or_else(|| {
        serde::de::Error::custom(format!("attach: {s:?} is not {}", TcAttach::NAMES))
    })
}

/// The interfaces a probe is attached to (ifindex -> name), and the last attach failure.
#[derive(Debug, Default)]
pub struct Attached {
    pub interfaces: BTreeMap<u32, String>,
    pub error: Option<String>,
}

/// The watcher of one loaded probe.
pub struct InterfaceWatch {
    patterns: Vec<String>,
    tx: mpsc::Sender<Vec<String>>,
    stop: Arc<AtomicBool>,
    attached: Arc<Mutex<Attached>>,
    thread: Option<JoinHandle<()>>,
}

impl InterfaceWatch {
    pub fn start(
        probe: &'static str,
        target: TcTarget,
        patterns: Vec<String>,
    ) -> std::io::Result<InterfaceWatch> {
        // Opened here so that a failure is the probe's, and in the agent's namespace.
        let sock = netlink::Socket::open(netlink::GROUP_LINK)?;
        sock.set_timeout(POLL)?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let attached = Arc::new(Mutex::new(Attached::default()));
        let thread = std::thread::Builder::new()
            .name(format!("{probe} interfaces"))
            .spawn({
                let (stop, attached, patterns) =
                    (Arc::clone(&stop), Arc::clone(&attached), patterns.clone());
                move || {
                    Watcher {
                        probe,
                        target,
                        patterns,
                        links: BTreeMap::new(),
                        known: BTreeMap::new(),
                        attached,
                    }
                    .run(sock, rx, &stop)
                }
            })?;
        Ok(InterfaceWatch {
            patterns,
            tx,
            stop,
            attached,
            thread: Some(thread),
        })
    }

    /// Applies a new pattern list (attaching and detaching at once); no-op when unchanged.
    pub fn set_patterns(&mut self, patterns: &[String]) {
        if self.patterns != patterns {
            self.patterns = patterns.to_vec();
            let _ = self.tx.send(patterns.to_vec());
        }
    }

    /// The names of the interfaces attached now, sorted, and the last attach failure.
    pub fn attached(&self) -> (Vec<String>, Option<String>) {
        let a = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = a.interfaces.values().cloned().collect();
        names.sort();
        (names, a.error.clone())
    }
}

impl Drop for InterfaceWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Watcher {
    probe: &'static str,
    target: TcTarget,
    patterns: Vec<String>,
    /// Attached interfaces.
    links: BTreeMap<u32, (String, TcLinks)>,
    /// Every interface of the namespace, by ifindex.
    known: BTreeMap<u32, String>,
    attached: Arc<Mutex<Attached>>,
}

impl Watcher {
    fn run(
        mut self,
        mut sock: netlink::Socket,
        rx: mpsc::Receiver<Vec<String>>,
        stop: &AtomicBool,
    ) {
        self.resync(&mut sock);
        while !stop.load(Ordering::Relaxed) {
            let mut changed = false;
            while let Ok(p) = rx.try_recv() {
                self.patterns = p;
                changed = true;
            }
            if changed {
                self.reconcile();
            }
            match sock.recv() {
                Ok(msgs) => {
                    for change in msgs.iter().filter_map(netlink::link_change) {
                        match change {
                            LinkChange::New(link) => {
                                self.known.insert(link.ifindex, link.name.clone());
                                self.consider(&link);
                            }
                            LinkChange::Gone(link) => {
                                self.known.remove(&link.ifindex);
                                if self.links.remove(&link.ifindex).is_some() {
                                    tracing::info!(probe = self.probe, interface = %link.name, "interface gone: detached");
                                }
                            }
                        }
                    }
                    self.publish();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // Notifications lost (ENOBUFS) or another failure: start again from a dump.
                Err(e) => {
                    tracing::debug!(probe = self.probe, error = %e, "link notifications: dumping again");
                    self.resync(&mut sock);
                }
            }
        }
    }

    /// Reads every link again and brings the attachments in line.
    fn resync(&mut self, sock: &mut netlink::Socket) {
        match netlink::links(sock) {
            Ok(links) => {
                self.known = links.into_iter().map(|l| (l.ifindex, l.name)).collect();
                self.reconcile();
            }
            Err(e) => {
                tracing::warn!(probe = self.probe, error = %e, "cannot list interfaces");
                self.attached
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .error = Some(format!("cannot list interfaces: {e}"));
            }
        }
    }

    fn reconcile(&mut self) {
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter(|i| !self.known.contains_key(i))
            .copied()
            .collect();
        for i in gone {
            self.links.remove(&i);
        }
        let known: Vec<Link> = self
            .known
            .iter()
            .map(|(i, n)| Link {
                ifindex: *i,
                name: n.clone(),
            })
            .collect();
        for link in &known {
            self.consider(link);
        }
        self.publish();
    }

    /// Attaches to a matching interface not attached yet, detaches from one that no longer
    /// matches (renamed, or the patterns changed).
    fn consider(&mut self, link: &Link) {
        let wanted = matches(&self.patterns, &link.name);
        match self.links.get_mut(&link.ifindex) {
            Some(entry) if wanted => entry.0 = link.name.clone(),
            Some(_) => {
                self.links.remove(&link.ifindex);
                tracing::info!(probe = self.probe, interface = %link.name, "interface no longer matches: detached");
            }
            None if wanted => match self.target.attach(link.ifindex) {
                Ok(links) => {
                    tracing::info!(probe = self.probe, interface = %link.name, mode = self.target.mode().as_str(), "attached");
                    self.links.insert(link.ifindex, (link.name.clone(), links));
                }
                Err(e) => {
                    // Gone between the notification and the attach: not worth a warning.
                    if e.raw_os_error() != Some(libc::ENODEV) {
                        tracing::warn!(probe = self.probe, interface = %link.name, error = %e, "cannot attach");
                        self.attached
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .error = Some(format!("cannot attach to {}: {e}", link.name));
                    }
                }
            },
            None => {}
        }
    }

    fn publish(&self) {
        let mut a = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        a.interfaces = self
            .links
            .iter()
            .map(|(i, (n, _))| (*i, n.clone()))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_names_or_prefixes() {
        let p = vec!["veth*".to_string(), "eth1".to_string()];
        assert!(matches(&p, "veth12ab"));
        assert!(matches(&p, "eth1"));
        assert!(!matches(&p, "eth10"));
        assert!(!matches(&p, "cali1"));
        assert!(validate("flow", &p).is_ok());
        assert!(validate("flow", &["a*b".into()]).is_err());
        assert!(validate("flow", &["".into()]).is_err());
        assert!(validate("flow", &["x".repeat(16)]).is_err());
    }
}
