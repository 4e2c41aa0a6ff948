//! The reading thread: enters each namespace in turn, reads what the config asks for, and
//! returns to the agent's namespace before the next one.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

use super::counters::{Section, Selection};
use super::series::{Sample, Series, F};
use super::{procfs, qdisc, setns, Config, Group, NAME};

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
) -> Result<(), String> {
    let host = File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|e| format!("cannot open /proc/thread-self/ns/net: {e}"))?;
    let mut selections = Selections::new(&config);
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
        let (mut pods_read, mut host_read) = (false, false);
        for t in &targets {
            let selection = match t.path {
                Some(_) => &selections.pods,
                None => &selections.host,
            };
            match read_target(t, &config, selection, &host)? {
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

/// Reads one namespace: `Ok(None)` when it cannot be entered (gone since the topology saw
/// it, or refused), `Err` only when the thread could not return to `host`.
fn read_target(
    t: &Target,
    config: &Config,
    selection: &Selection,
    host: &OwnedFd,
) -> Result<Option<Vec<Sample>>, String> {
    if config.groups.iter().all(|g| !selection.reads(*g)) {
        // Nothing of it would be exported: not even entered.
        return Ok(Some(Vec::new()));
    }
    let Some(path) = &t.path else {
        return Ok(Some(read_netns(config, selection)));
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
    match file.metadata() {
        Ok(m) if m.ino() as u32 == t.inode => {}
        _ => return Ok(None),
    }
    let ns = OwnedFd::from(file);
    if let Err(e) = setns(&ns) {
        tracing::warn!(probe = NAME, path = %path.display(), error = %e, "cannot enter namespace");
        return Ok(None);
    }
    let samples = read_netns(config, selection);
    setns(host).map_err(|e| {
        format!(
            "cannot return to the agent's network namespace after reading {}: {e}",
            path.display()
        )
    })?;
    Ok(Some(samples))
}

/// Everything `config` asks for that `selection` exports, in the calling thread's namespace.
fn read_netns(config: &Config, selection: &Selection) -> Vec<Sample> {
    let net = Path::new("/proc/thread-self/net");
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
                    // entries is the table size (exported from the sysctl below); chainlength
                    // a gauge of the longest hash chain.
                    if name != "entries"
                        && name != "chainlength"
                        && wants(Section::Conntrack, &name)
                    {
                        out.push(named(F::Conntrack, &name, v as f64));
                    }
                }
                let sysctl = |name: &str| {
                    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                };
                if wants(Section::Conntrack, "entries") {
                    if let Some(v) = sysctl("nf_conntrack_count") {
                        out.push((F::ConntrackEntries, Vec::new(), v as f64));
                    }
                }
                if wants(Section::Conntrack, "entries_limit") {
                    if let Some(v) = sysctl("nf_conntrack_max") {
                        out.push((F::ConntrackLimit, Vec::new(), v as f64));
                    }
                }
            }
            Group::Qdisc => match qdisc::dump() {
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
            },
        }
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
