//! The reading thread: enters each namespace in turn, reads what the config asks for, and
//! returns to the agent's namespace before the next one.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

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
        for t in &targets {
            match read_target(t, &config, &host)? {
                Some(samples) => {
                    by_workload
                        .entry((t.namespace.clone(), t.pod.clone()))
                        .or_insert_with(Vec::new)
                        .extend(samples);
                }
                None => failures += 1,
            }
        }
        if config.groups.contains(&Group::Softnet) {
            if let Ok(text) = std::fs::read_to_string("/proc/net/softnet_stat") {
                let host = by_workload
                    .entry((String::new(), String::new()))
                    .or_insert_with(Vec::new);
                for s in procfs::softnet(&text) {
                    let cpu = vec![s.cpu.to_string()];
                    host.push((F::SoftnetProcessed, cpu.clone(), s.processed as f64));
                    host.push((F::SoftnetDropped, cpu.clone(), s.dropped as f64));
                    host.push((F::SoftnetSqueezed, cpu, s.time_squeeze as f64));
                }
            }
        }
        series.publish(
            by_workload,
            targets.len() - failures as usize,
            start.elapsed(),
            failures,
        );
        let wait = config.interval.saturating_sub(start.elapsed());
        match rx.recv_timeout(wait) {
            Ok(new) => config = new,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // Only the latest of several queued configs matters.
        while let Ok(new) = rx.try_recv() {
            config = new;
        }
    }
}

/// Reads one namespace: `Ok(None)` when it cannot be entered (gone since the topology saw
/// it, or refused), `Err` only when the thread could not return to `host`.
fn read_target(t: &Target, config: &Config, host: &OwnedFd) -> Result<Option<Vec<Sample>>, String> {
    let Some(path) = &t.path else {
        return Ok(Some(read_netns(config)));
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
    let samples = read_netns(config);
    setns(host).map_err(|e| {
        format!(
            "cannot return to the agent's network namespace after reading {}: {e}",
            path.display()
        )
    })?;
    Ok(Some(samples))
}

/// Everything `config` asks for, in the calling thread's namespace.
fn read_netns(config: &Config) -> Vec<Sample> {
    let net = Path::new("/proc/thread-self/net");
    let read = |file: &str| std::fs::read_to_string(net.join(file)).ok();
    let mut out: Vec<Sample> = Vec::new();
    let named = |f: F, name: &str, v: f64| (f, vec![name.to_string()], v);
    for group in &config.groups {
        match group {
            Group::Snmp => {
                for (section, name, v) in read("snmp")
                    .map(|t| procfs::sections(&t))
                    .unwrap_or_default()
                {
                    let f = match (section.as_str(), name.as_str()) {
                        // Settings, not counters.
                        ("Ip", "Forwarding" | "DefaultTTL") => continue,
                        ("Tcp", "RtoAlgorithm" | "RtoMin" | "RtoMax" | "MaxConn") => continue,
                        ("Tcp", "CurrEstab") => {
                            out.push((F::TcpEstablished, Vec::new(), v as f64));
                            continue;
                        }
                        ("Ip", _) => F::Ip,
                        ("Icmp", _) => F::Icmp,
                        ("Tcp", _) => F::Tcp,
                        ("Udp", _) => F::Udp,
                        ("UdpLite", _) => F::UdpLite,
                        _ => continue,
                    };
                    out.push(named(f, &name, v as f64));
                }
            }
            Group::Snmp6 => {
                for (section, name, v) in
                    read("snmp6").map(|t| procfs::snmp6(&t)).unwrap_or_default()
                {
                    let f = match section.as_str() {
                        "Ip6" => F::Ip6,
                        "Icmp6" => F::Icmp6,
                        "Udp6" => F::Udp6,
                        _ => F::UdpLite6,
                    };
                    out.push(named(f, &name, v as f64));
                }
            }
            Group::Netstat => {
                for (section, name, v) in read("netstat")
                    .map(|t| procfs::sections(&t))
                    .unwrap_or_default()
                {
                    let f = match section.as_str() {
                        "TcpExt" => F::TcpExt,
                        "IpExt" => F::IpExt,
                        _ => continue,
                    };
                    out.push(named(f, &name, v as f64));
                }
            }
            Group::Dev => {
                for d in read("dev").map(|t| procfs::dev(&t)).unwrap_or_default() {
                    for (f, v) in [
                        (F::RxBytes, d.rx_bytes),
                        (F::RxPackets, d.rx_packets),
                        (F::RxErrors, d.rx_errors),
                        (F::RxDrops, d.rx_drops),
                        (F::TxBytes, d.tx_bytes),
                        (F::TxPackets, d.tx_packets),
                        (F::TxErrors, d.tx_errors),
                        (F::TxDrops, d.tx_drops),
                    ] {
                        out.push(named(f, &d.device, v as f64));
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
                        "mem" => out.push(named(F::SocketMemory, &proto, (v * page) as f64)),
                        "memory" => out.push(named(F::SocketMemory, &proto, v as f64)),
                        _ => out.push((F::Sockets, vec![proto, key], v as f64)),
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
                    if name != "entries" && name != "chainlength" {
                        out.push(named(F::Conntrack, &name, v as f64));
                    }
                }
                let sysctl = |name: &str| {
                    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                };
                if let Some(v) = sysctl("nf_conntrack_count") {
                    out.push((F::ConntrackEntries, Vec::new(), v as f64));
                }
                if let Some(v) = sysctl("nf_conntrack_max") {
                    out.push((F::ConntrackLimit, Vec::new(), v as f64));
                }
            }
            Group::Qdisc => match qdisc::dump() {
                Ok(qdiscs) => {
                    for q in qdiscs {
                        let Some(device) = qdisc::interface_name(q.ifindex) else {
                            continue;
                        };
                        let labels = vec![device, q.kind, q.handle, q.parent];
                        for (f, v) in [
                            (F::QdiscBytes, q.bytes),
                            (F::QdiscPackets, q.packets),
                            (F::QdiscDrops, q.drops.into()),
                            (F::QdiscRequeues, q.requeues.into()),
                            (F::QdiscOverlimits, q.overlimits.into()),
                            (F::QdiscBacklogBytes, q.backlog.into()),
                            (F::QdiscBacklogPackets, q.qlen.into()),
                        ] {
                            out.push((f, labels.clone(), v as f64));
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
        let samples = read_netns(&Config::default());
        // Every Linux has these.
        assert!(samples
            .iter()
            .any(|(f, l, _)| *f == F::TcpExt && l[0] == "ListenOverflows"));
        assert!(samples
            .iter()
            .any(|(f, l, _)| *f == F::RxBytes && l[0] == "lo"));
    }
}
