//! The reading thread: reads what the config asks for of each namespace in turn. A pod's
//! namespace found through one of its processes is read through `/proc/<pid>/net` (the
//! process's namespace's files) without entering it; only its qdiscs (a netlink dump) and a
//! namespace known by a file alone (standalone's `/run/netns/<name>`) need the thread to enter
//! it (`setns`, CAP_SYS_ADMIN), and it returns to the agent's namespace before the next.
//! Without CAP_SYS_ADMIN those are left out, said once.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

use super::counters::{Section, Selection};
use super::series::{Sample, Series, F};
use super::{procfs, qdisc, setns, Config, Group, NetstatError, NAME};

/// A namespace to read: its labels and how to enter it (`None`: the agent's own).
struct Target {
    namespace: String,
    pod: String,
    inode: u32,
    path: Option<PathBuf>,
}

/// The reading thread: a round now, then one every interval, until the channel closes.
/// Returns an error only when it cannot get back to the agent's namespace (the thread ends
/// then, so nothing else ever runs in a pod's namespace).
pub(super) fn read_loop(
    mut config: Config,
    rx: mpsc::Receiver<Config>,
    series: &Series,
    topology: &dyn crate::topology::Topology,
) -> Result<(), NetstatError> {
    let host = File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(NetstatError::OwnNamespace)?;
    let mut selections = Selections::new(&config);
    let mut enter = Enter::Untried;
    loop {
        let start = Instant::now();
        let mut targets: Vec<Target> = topology
            .pod_netns()
            .into_iter()
            .map(|p| Target {
                namespace: p.workload.namespace.to_string(),
                pod: p.workload.pod.to_string(),
                inode: p.inode,
                path: Some(p.path),
            })
            .collect();
        targets.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        if config.include_host {
            targets.insert(
                0,
                Target {
                    namespace: String::new(),
                    pod: String::new(),
                    inode: 0,
                    path: None,
                },
            );
        }
        let mut by_workload = BTreeMap::new();
        let mut failures = 0;
        // Looked for at most once a round, when a namespace known by its file alone cannot
        // be entered.
        let mut processes: Option<HashMap<u32, PathBuf>> = None;
        let (mut pods_read, mut host_read) = (false, false);
        for t in &targets {
            let selection = match t.path {
                Some(_) => &selections.pods,
                None => &selections.host,
            };
            match read_target(t, &config, selection, &host, &mut enter, &mut processes)? {
                Some(samples) => {
                    match t.path {
                        Some(_) => pods_read = true,
                        None => host_read = true,
                    }
                    by_workload
                        .entry((t.namespace.clone(), t.pod.clone()))
                        .or_insert_with(Vec::new)
                        .extend(samples);
                }
                None => failures += 1,
            }
        }
        if config.groups.contains(&Group::Softnet) && selections.host.reads(Group::Softnet) {
            if let Ok(text) = std::fs::read_to_string("/proc/net/softnet_stat") {
                let host = by_workload
                    .entry((String::new(), String::new()))
                    .or_insert_with(Vec::new);
                for s in procfs::softnet(&text) {
                    for (f, name, v) in [
                        (F::SoftnetProcessed, "processed", s.processed),
                        (F::SoftnetDropped, "dropped", s.dropped),
                        (F::SoftnetSqueezed, "times_squeezed", s.time_squeeze),
                    ] {
                        if selections.host.wants(Section::Softnet, name, None) {
                            host.push((f, vec![s.cpu.to_string()], v as f64));
                        }
                    }
                }
            }
        }
        series.publish(
            by_workload,
            targets.len() - failures as usize,
            start.elapsed(),
            failures,
        );
        selections.warn_unmatched(pods_read, host_read);
        let wait = config.interval.saturating_sub(start.elapsed());
        match rx.recv_timeout(wait) {
            Ok(new) => config = new,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // Only the latest of several queued configs matters.
        while let Ok(new) = rx.try_recv() {
            config = new;
        }
        selections = Selections::new(&config);
    }
}

/// What is exported of the pods' namespaces and of the host's, and whether the counters
/// each names one by one that matched nothing were said (pods', host's).
struct Selections {
    pods: Selection,
    host: Selection,
    said: (bool, bool),
}

impl Selections {
    fn new(config: &Config) -> Self {
        Selections {
            pods: Selection::new(&config.counters),
            host: Selection::new(&config.host_counters),
            said: (false, false),
        }
    }

    /// Says once (per config), after the first round that read such a namespace, which
    /// counters named one by one matched no series: a name this kernel does not have, or a
    /// group with nothing to read (conntrack not loaded).
    fn warn_unmatched(&mut self, pods_read: bool, host_read: bool) {
        for (key, selection, read, said) in [
            ("counters", &self.pods, pods_read, &mut self.said.0),
            ("hostCounters", &self.host, host_read, &mut self.said.1),
        ] {
            if *said || !read {
                continue;
            }
            *said = true;
            let unmatched = selection.unmatched();
            if !unmatched.is_empty() {
                tracing::warn!(
                    probe = NAME,
                    "probes.netstat.{key}: {} matched no series in the namespaces read \
                     (not a counter of this kernel, or nothing to read there)",
                    unmatched.join(", ")
                );
            }
        }
    }
}

/// Whether this thread may enter other network namespaces (`setns` needs CAP_SYS_ADMIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enter {
    Untried,
    Allowed,
    Refused,
}

/// `/proc/<pid>/net` for a namespace opened as `/proc/<pid>/ns/net`.
fn proc_net_dir(ns: &Path) -> Option<PathBuf> {
    if !ns.ends_with("ns/net") {
        return None;
    }
    let pid_dir = ns.parent()?.parent()?;
    let pid = pid_dir.file_name()?.to_str()?;
    pid.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| pid_dir.join("net"))
}

/// `/proc/<pid>/ns/net` of one process in each network namespace, by the namespace's inode.
fn processes_by_namespace() -> HashMap<u32, PathBuf> {
    let mut found = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let ns = entry.path().join("ns/net");
        if let Ok(m) = std::fs::metadata(&ns) {
            found.entry(m.ino() as u32).or_insert(ns);
        }
    }
    found
}

/// Enters `ns`, runs `read`, and returns to `host`. `Ok(None)` when it may not enter (said
/// once: what is left out without CAP_SYS_ADMIN); `Err` only when it could not return.
fn inside<T>(
    ns: &OwnedFd,
    host: &OwnedFd,
    what: &Path,
    enter: &mut Enter,
    read: impl FnOnce() -> T,
) -> Result<Option<T>, NetstatError> {
    if *enter == Enter::Refused {
        return Ok(None);
    }
    if let Err(e) = setns(ns) {
        if e.raw_os_error() == Some(libc::EPERM) {
            *enter = Enter::Refused;
            tracing::warn!(
                probe = NAME,
                "cannot enter pods' network namespaces (setns needs CAP_SYS_ADMIN): pods' qdisc \
                 series and namespaces without a process (standalone /run/netns) are not read; \
                 the rest is read through /proc/<pid>/net"
            );
        } else {
            tracing::warn!(probe = NAME, path = %what.display(), error = %e, "cannot enter namespace");
        }
        return Ok(None);
    }
    *enter = Enter::Allowed;
    let out = read();
    setns(host).map_err(|source| NetstatError::Return {
        path: what.display().to_string(),
        source,
    })?;
    Ok(Some(out))
}

/// Reads one namespace: `Ok(None)` when it cannot be read (gone since the topology saw it,
/// or it can only be entered and entering is refused), `Err` only when the thread could not
/// return to `host`.
fn read_target(
    t: &Target,
    config: &Config,
    selection: &Selection,
    host: &OwnedFd,
    enter: &mut Enter,
    processes: &mut Option<HashMap<u32, PathBuf>>,
) -> Result<Option<Vec<Sample>>, NetstatError> {
    if config.groups.iter().all(|g| !selection.reads(*g)) {
        // Nothing of it would be exported: not even entered.
        return Ok(Some(Vec::new()));
    }
    let Some(path) = &t.path else {
        let mut samples = read_procfs(config, selection, Path::new("/proc/thread-self/net"));
        samples.extend(read_qdiscs(config, selection));
        return Ok(Some(samples));
    };
    // Holding the fd keeps the namespace alive while it is read, even if it is deleted now.
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(probe = NAME, path = %path.display(), error = %e, "namespace gone");
            return Ok(None);
        }
    };
    // The file may now be another namespace (deleted and made again): skip it this round.
    let same = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.ino() as u32 == t.inode);
    match file.metadata() {
        Ok(m) if m.ino() as u32 == t.inode => {}
        _ => return Ok(None),
    }
    let ns = OwnedFd::from(file);
    let Some(net_dir) = proc_net_dir(path) else {
        // A namespace known by its file alone: read from inside, or else through a process
        // that lives in it.
        let read = inside(&ns, host, path, enter, || {
            let mut samples = read_procfs(config, selection, Path::new("/proc/thread-self/net"));
            samples.extend(read_qdiscs(config, selection));
            samples
        })?;
        if read.is_some() || *enter != Enter::Refused {
            return Ok(read);
        }
        let by_inode = processes.get_or_insert_with(processes_by_namespace);
        let Some(pid_ns) = by_inode.get(&t.inode) else {
            return Ok(None);
        };
        let Some(net_dir) = proc_net_dir(pid_ns) else {
            return Ok(None);
        };
        let samples = read_procfs(config, selection, &net_dir);
        return Ok(same(pid_ns).then_some(samples));
    };
    let mut samples = read_procfs(config, selection, &net_dir);
    // The process may have ended, and its pid gone to a process elsewhere, while it was read.
    if !same(path) {
        return Ok(None);
    }
    if config.groups.contains(&Group::Qdisc) && selection.reads(Group::Qdisc) {
        if let Some(q) = inside(&ns, host, path, enter, || read_qdiscs(config, selection))? {
            samples.extend(q);
        }
    }
    Ok(Some(samples))
}

/// Everything `config` asks for that `selection` exports of the calling thread's namespace.
#[cfg(test)]
fn read_netns(config: &Config, selection: &Selection) -> Vec<Sample> {
    let mut samples = read_procfs(config, selection, Path::new("/proc/thread-self/net"));
    samples.extend(read_qdiscs(config, selection));
    samples
}

/// Everything `config` asks for that `selection` exports of the namespace whose `/proc/net`
/// files are in `net` (`/proc/thread-self/net`, or a process's `/proc/<pid>/net`), but its
/// qdiscs.
fn read_procfs(config: &Config, selection: &Selection, net: &Path) -> Vec<Sample> {
    let read = |file: &str| std::fs::read_to_string(net.join(file)).ok();
    let mut out: Vec<Sample> = Vec::new();
    let wants = |section: Section, name: &str| selection.wants(section, name, None);
    let named = |f: F, name: &str, v: f64| (f, vec![name.to_string()], v);
    for group in config.groups.iter().filter(|g| selection.reads(**g)) {
        match group {
            Group::Snmp => {
                for (section, name, v) in read("snmp")
                    .map(|t| procfs::sections(&t))
                    .unwrap_or_default()
                {
                    let (f, sec) = match (section.as_str(), name.as_str()) {
                        // Settings, not counters.
                        ("Ip", "Forwarding" | "DefaultTTL") => continue,
                        ("Tcp", "RtoAlgorithm" | "RtoMin" | "RtoMax" | "MaxConn") => continue,
                        ("Tcp", "CurrEstab") => {
                            if wants(Section::Tcp, &name) {
                                out.push((F::TcpEstablished, Vec::new(), v as f64));
                            }
                            continue;
                        }
                        ("Ip", _) => (F::Ip, Section::Ip),
                        ("Icmp", _) => (F::Icmp, Section::Icmp),
                        ("Tcp", _) => (F::Tcp, Section::Tcp),
                        ("Udp", _) => (F::Udp, Section::Udp),
                        ("UdpLite", _) => (F::UdpLite, Section::UdpLite),
                        _ => continue,
                    };
                    if wants(sec, &name) {
                        out.push(named(f, &name, v as f64));
                    }
                }
            }
            Group::Snmp6 => {
                for (section, name, v) in
                    read("snmp6").map(|t| procfs::snmp6(&t)).unwrap_or_default()
                {
                    let (f, sec) = match section.as_str() {
                        "Ip6" => (F::Ip6, Section::Ip6),
                        "Icmp6" => (F::Icmp6, Section::Icmp6),
                        "Udp6" => (F::Udp6, Section::Udp6),
                        _ => (F::UdpLite6, Section::UdpLite6),
                    };
                    if wants(sec, &name) {
                        out.push(named(f, &name, v as f64));
                    }
                }
            }
            Group::Netstat => {
                for (section, name, v) in read("netstat")
                    .map(|t| procfs::sections(&t))
                    .unwrap_or_default()
                {
                    let (f, sec) = match section.as_str() {
                        "TcpExt" => (F::TcpExt, Section::TcpExt),
                        "IpExt" => (F::IpExt, Section::IpExt),
                        _ => continue,
                    };
                    if wants(sec, &name) {
                        out.push(named(f, &name, v as f64));
                    }
                }
            }
            Group::Dev => {
                for d in read("dev").map(|t| procfs::dev(&t)).unwrap_or_default() {
                    for (f, name, v) in [
                        (F::RxBytes, "receive_bytes", d.rx_bytes),
                        (F::RxPackets, "receive_packets", d.rx_packets),
                        (F::RxErrors, "receive_errors", d.rx_errors),
                        (F::RxDrops, "receive_drops", d.rx_drops),
                        (F::TxBytes, "transmit_bytes", d.tx_bytes),
                        (F::TxPackets, "transmit_packets", d.tx_packets),
                        (F::TxErrors, "transmit_errors", d.tx_errors),
                        (F::TxDrops, "transmit_drops", d.tx_drops),
                    ] {
                        if selection.wants(Section::Dev, name, Some(&d.device)) {
                            out.push(named(f, &d.device, v as f64));
                        }
                    }
                }
            }
            Group::Sockstat => {
                let page = page_size();
                for (proto, key, v) in read("sockstat")
                    .map(|t| procfs::sockstat(&t))
                    .unwrap_or_default()
                {
                    match key.as_str() {
                        "mem" | "memory" => {
                            if wants(Section::Sockstat, &format!("{proto}_memory")) {
                                let bytes = if key == "mem" { v * page } else { v };
                                out.push(named(F::SocketMemory, &proto, bytes as f64));
                            }
                        }
                        _ => {
                            if wants(Section::Sockstat, &format!("{proto}_{key}")) {
                                out.push((F::Sockets, vec![proto, key], v as f64));
                            }
                        }
                    }
                }
            }
            // Read once per round for the host: see read_loop.
            Group::Softnet => {}
            Group::Conntrack => {
                for (name, v) in read("stat/nf_conntrack")
                    .map(|t| procfs::conntrack_stat(&t))
                    .unwrap_or_default()
                {
                    match name.as_str() {
                        // The namespace's table size (nf_conntrack_count), the same on every
                        // CPU's row.
                        "entries" => {
                            if wants(Section::Conntrack, "entries") {
                                out.push((F::ConntrackEntries, Vec::new(), v as f64));
                            }
                        }
                        // A gauge of the longest hash chain.
                        "chainlength" => {}
                        _ => {
                            if wants(Section::Conntrack, &name) {
                                out.push(named(F::Conntrack, &name, v as f64));
                            }
                        }
                    }
                }
                // The same in every namespace: the initial one's.
                let sysctl = |name: &str| {
                    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                };
                if wants(Section::Conntrack, "entries_limit") {
                    if let Some(v) = sysctl("nf_conntrack_max") {
                        out.push((F::ConntrackLimit, Vec::new(), v as f64));
                    }
                }
            }
            // Through netlink, in the namespace: see read_qdiscs.
            Group::Qdisc => {}
        }
    }
    out
}

/// The qdiscs of the calling thread's namespace that `selection` exports, if `config` reads
/// them.
fn read_qdiscs(config: &Config, selection: &Selection) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    if !config.groups.contains(&Group::Qdisc) || !selection.reads(Group::Qdisc) {
        return out;
    }
    match qdisc::dump() {
        Ok(qdiscs) => {
            for q in qdiscs {
                let Some(device) = qdisc::interface_name(q.ifindex) else {
                    continue;
                };
                let stats = [
                    (F::QdiscBytes, "bytes", q.bytes),
                    (F::QdiscPackets, "packets", q.packets),
                    (F::QdiscDrops, "drops", q.drops.into()),
                    (F::QdiscRequeues, "requeues", q.requeues.into()),
                    (F::QdiscOverlimits, "overlimits", q.overlimits.into()),
                    (F::QdiscBacklogBytes, "backlog_bytes", q.backlog.into()),
                    (F::QdiscBacklogPackets, "backlog_packets", q.qlen.into()),
                ];
                let labels = vec![device, q.kind, q.handle, q.parent];
                for (f, name, v) in stats {
                    if selection.wants(Section::Qdisc, name, Some(&labels[0])) {
                        out.push((f, labels.clone(), v as f64));
                    }
                }
            }
        }
        Err(e) => tracing::debug!(probe = NAME, error = %e, "qdisc dump failed"),
    }
    out
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_namespace_is_read_through_its_proc_net() {
        assert_eq!(
            proc_net_dir(Path::new("/proc/4242/ns/net")),
            Some(PathBuf::from("/proc/4242/net"))
        );
        assert_eq!(
            proc_net_dir(Path::new("/host/proc/7/ns/net")),
            Some(PathBuf::from("/host/proc/7/net"))
        );
        assert_eq!(proc_net_dir(Path::new("/run/netns/pod-a")), None);
        assert_eq!(proc_net_dir(Path::new("/proc/self/ns/net")), None);
    }

    #[test]
    fn reads_the_agents_own_namespace() {
        let config = Config::default();
        let samples = read_netns(&config, &Selection::new(&config.host_counters));
        // Every Linux has these.
        assert!(samples
            .iter()
            .any(|(f, l, _)| *f == F::TcpExt && l[0] == "ListenOverflows"));
        assert!(samples
            .iter()
            .any(|(f, l, _)| *f == F::RxBytes && l[0] == "lo"));
        assert!(samples.iter().any(|(f, _, _)| *f == F::Ip6));
    }

    #[test]
    fn the_curated_set_reads_only_what_it_exports() {
        let config = Config::default();
        let samples = read_netns(&config, &Selection::new(&config.counters));
        let has = |f: F, label: &str| samples.iter().any(|(x, l, _)| *x == f && l[0] == label);
        assert!(has(F::TcpExt, "ListenOverflows") && has(F::Tcp, "OutSegs"));
        assert!(!has(F::TcpExt, "TCPOFODrop") && !has(F::Tcp, "InSegs"));
        // Not the loopback's interface counters, no IPv6 table, no memory.
        assert!(!samples
            .iter()
            .any(|(f, l, _)| *f == F::RxBytes && l[0] == "lo"));
        assert!(!samples
            .iter()
            .any(|(f, _, _)| matches!(f, F::Ip6 | F::Icmp6 | F::SocketMemory | F::IpExt)));
        assert!(samples
            .iter()
            .any(|(f, l, _)| *f == F::Sockets && l[..] == ["tcp".to_string(), "inuse".into()]));
    }
}
