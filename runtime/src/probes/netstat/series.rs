//! The netstat probe's series: the families it exports and the latest reading, turned into
//! Prometheus families on each scrape.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::SeriesBudget;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// A metric family the probe exports; every series has `node`, `namespace`, `pod`, then
/// `labels`.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    labels: &'static [&'static str],
}

macro_rules! families {
    ($($id:ident = $name:literal, $counter:literal, [$($label:literal),*], $help:literal;)*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub(super) enum F { $($id),* }
        const FAMILIES: &[Family] = &[$(Family {
            name: $name,
            help: $help,
            counter: $counter,
            labels: &[$($label),*],
        }),*];
    };
}

families! {
    Ip = "sonde_netstat_ip_total", true, ["counter"], "Ip counters of /proc/net/snmp, by the kernel's field name.";
    Icmp = "sonde_netstat_icmp_total", true, ["counter"], "Icmp counters of /proc/net/snmp, by the kernel's field name.";
    Tcp = "sonde_netstat_tcp_total", true, ["counter"], "Tcp counters of /proc/net/snmp, by the kernel's field name.";
    TcpEstablished = "sonde_netstat_tcp_current_established", false, [], "TCP connections in state ESTABLISHED or CLOSE-WAIT (Tcp CurrEstab).";
    Udp = "sonde_netstat_udp_total", true, ["counter"], "Udp counters of /proc/net/snmp, by the kernel's field name.";
    UdpLite = "sonde_netstat_udp_lite_total", true, ["counter"], "UdpLite counters of /proc/net/snmp, by the kernel's field name.";
    Ip6 = "sonde_netstat_ip6_total", true, ["counter"], "Ip6 counters of /proc/net/snmp6, by the kernel's field name without the Ip6 prefix.";
    Icmp6 = "sonde_netstat_icmp6_total", true, ["counter"], "Icmp6 counters of /proc/net/snmp6, by the kernel's field name without the Icmp6 prefix.";
    Udp6 = "sonde_netstat_udp6_total", true, ["counter"], "Udp6 counters of /proc/net/snmp6, by the kernel's field name without the Udp6 prefix.";
    UdpLite6 = "sonde_netstat_udp_lite6_total", true, ["counter"], "UdpLite6 counters of /proc/net/snmp6, by the kernel's field name without the UdpLite6 prefix.";
    TcpExt = "sonde_netstat_tcp_ext_total", true, ["counter"], "TcpExt counters of /proc/net/netstat (ListenOverflows, ListenDrops, TCPSynRetrans, ...), by the kernel's field name.";
    IpExt = "sonde_netstat_ip_ext_total", true, ["counter"], "IpExt counters of /proc/net/netstat, by the kernel's field name.";
    RxBytes = "sonde_netstat_dev_receive_bytes_total", true, ["device"], "Bytes received, per interface (/proc/net/dev).";
    RxPackets = "sonde_netstat_dev_receive_packets_total", true, ["device"], "Packets received, per interface (/proc/net/dev).";
    RxErrors = "sonde_netstat_dev_receive_errors_total", true, ["device"], "Receive errors, per interface (/proc/net/dev).";
    RxDrops = "sonde_netstat_dev_receive_drops_total", true, ["device"], "Received packets dropped, per interface (/proc/net/dev).";
    TxBytes = "sonde_netstat_dev_transmit_bytes_total", true, ["device"], "Bytes transmitted, per interface (/proc/net/dev).";
    TxPackets = "sonde_netstat_dev_transmit_packets_total", true, ["device"], "Packets transmitted, per interface (/proc/net/dev).";
    TxErrors = "sonde_netstat_dev_transmit_errors_total", true, ["device"], "Transmit errors, per interface (/proc/net/dev).";
    TxDrops = "sonde_netstat_dev_transmit_drops_total", true, ["device"], "Packets dropped on transmit, per interface (/proc/net/dev).";
    Sockets = "sonde_netstat_sockstat_sockets", false, ["protocol", "state"], "Sockets by protocol and state (inuse, orphan, tw, alloc; protocol sockets: used), from /proc/net/sockstat.";
    SocketMemory = "sonde_netstat_sockstat_memory_bytes", false, ["protocol"], "Memory of sockets by protocol, from /proc/net/sockstat (pages times the page size).";
    SoftnetProcessed = "sonde_netstat_softnet_processed_total", true, ["cpu"], "Packets processed by the CPU's backlog (host only: softnet_stat is not per namespace).";
    SoftnetDropped = "sonde_netstat_softnet_dropped_total", true, ["cpu"], "Packets dropped because the CPU's backlog was full (host only).";
    SoftnetSqueezed = "sonde_netstat_softnet_times_squeezed_total", true, ["cpu"], "Times net_rx_action ran out of budget or time with work left (host only).";
    Conntrack = "sonde_netstat_conntrack_total", true, ["counter"], "Conntrack statistics of /proc/net/stat/nf_conntrack summed over CPUs, by column name.";
    ConntrackEntries = "sonde_netstat_conntrack_entries", false, [], "Conntrack entries of the namespace (nf_conntrack_count).";
    ConntrackLimit = "sonde_netstat_conntrack_entries_limit", false, [], "Conntrack table limit (nf_conntrack_max).";
    QdiscBytes = "sonde_netstat_qdisc_bytes_total", true, ["device", "kind", "handle", "parent"], "Bytes sent through the qdisc.";
    QdiscPackets = "sonde_netstat_qdisc_packets_total", true, ["device", "kind", "handle", "parent"], "Packets sent through the qdisc.";
    QdiscDrops = "sonde_netstat_qdisc_drops_total", true, ["device", "kind", "handle", "parent"], "Packets the qdisc dropped.";
    QdiscRequeues = "sonde_netstat_qdisc_requeues_total", true, ["device", "kind", "handle", "parent"], "Packets the qdisc requeued.";
    QdiscOverlimits = "sonde_netstat_qdisc_overlimits_total", true, ["device", "kind", "handle", "parent"], "Times the qdisc was over its limit.";
    QdiscBacklogBytes = "sonde_netstat_qdisc_backlog_bytes", false, ["device", "kind", "handle", "parent"], "Bytes queued in the qdisc.";
    QdiscBacklogPackets = "sonde_netstat_qdisc_backlog_packets", false, ["device", "kind", "handle", "parent"], "Packets queued in the qdisc.";
}

/// The probe's own health: labels `node` only.
const SELF_NAMESPACES: &str = "sonde_netstat_namespaces";
const SELF_DURATION: &str = "sonde_netstat_read_duration_seconds";
const SELF_FAILURES: &str = "sonde_netstat_namespace_read_failures_total";

/// One value of one series: (family, label values after the workload's, value).
pub(super) type Sample = (F, Vec<String>, f64);

/// The latest reading of every namespace, shared by the reading thread and the scrapes.
#[derive(Default)]
pub(super) struct Reading {
    /// (namespace, pod) -> its samples.
    pub(super) by_workload: BTreeMap<(String, String), Vec<Sample>>,
    pub(super) namespaces: usize,
    pub(super) duration: Duration,
    pub(super) failures: u64,
    /// Why the reading thread stopped, when it did.
    pub(super) fatal: Option<String>,
    /// Keys of the series exported, each counted in the agent's series budget.
    admitted: HashSet<u64>,
}

/// The probe's series, registered once with the agent's registry; empty while the probe is
/// off.
#[derive(Clone)]
pub struct Series {
    node: Arc<str>,
    descs: Arc<Vec<Desc>>,
    reading: Arc<Mutex<Reading>>,
    budget: Arc<SeriesBudget>,
}

impl Series {
    pub fn new(node: Arc<str>, budget: Arc<SeriesBudget>) -> Self {
        let workload = ["node", "namespace", "pod"];
        let mut descs: Vec<Desc> = FAMILIES
            .iter()
            .map(|f| {
                let labels = workload.iter().chain(f.labels).map(|l| l.to_string());
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    labels.collect(),
                    Default::default(),
                )
                .expect("valid metric definition")
            })
            .collect();
        for (name, help) in [
            (
                SELF_NAMESPACES,
                "Network namespaces the netstat probe read in its last round.",
            ),
            (
                SELF_DURATION,
                "How long the netstat probe's last round of reading took.",
            ),
            (
                SELF_FAILURES,
                "Namespaces the netstat probe could not read (gone, or not enterable).",
            ),
        ] {
            descs.push(
                Desc::new(
                    name.into(),
                    help.into(),
                    vec!["node".into()],
                    Default::default(),
                )
                .expect("valid metric definition"),
            );
        }
        Series {
            node,
            descs: Arc::new(descs),
            reading: Arc::new(Mutex::new(Reading::default())),
            budget,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Reading> {
        self.reading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the reading with a round's: the series it no longer has give their room in
    /// the agent's series budget back, those it had stay, and new ones are made while the
    /// budget has room (in the order of the namespaces' labels, the host's first); the others
    /// are left out and counted as dropped.
    pub(super) fn publish(
        &self,
        mut by_workload: BTreeMap<(String, String), Vec<Sample>>,
        namespaces: usize,
        duration: Duration,
        failures: u64,
    ) {
        let keys: Vec<Vec<u64>> = by_workload
            .iter()
            .map(|((namespace, pod), samples)| {
                samples
                    .iter()
                    .map(|(f, values, _)| {
                        let workload = [namespace.as_str(), pod.as_str()];
                        let labels = workload
                            .into_iter()
                            .chain(values.iter().map(String::as_str));
                        SeriesBudget::key(FAMILIES[*f as usize].name, labels)
                    })
                    .collect()
            })
            .collect();
        let mut reading = self.lock();
        let now: HashSet<u64> = keys.iter().flatten().copied().collect();
        let gone = reading.admitted.iter().filter(|k| !now.contains(k)).count();
        self.budget.release(gone);
        let mut admitted = HashSet::with_capacity(now.len());
        for (samples, keys) in by_workload.values_mut().zip(keys) {
            let mut keys = keys.into_iter();
            samples.retain(|(f, _, _)| {
                let Some(key) = keys.next() else {
                    return false;
                };
                let keep = admitted.contains(&key)
                    || reading.admitted.contains(&key)
                    || self.budget.admit(key, &[(FAMILIES[*f as usize].name, 1)]);
                if keep {
                    admitted.insert(key);
                }
                keep
            });
        }
        reading.admitted = admitted;
        reading.by_workload = by_workload;
        reading.namespaces = namespaces;
        reading.duration = duration;
        reading.failures += failures;
    }

    /// Forgets the reading (the probe stopped or restarts), giving its series' room back.
    pub(super) fn clear(&self) {
        let mut reading = self.lock();
        self.budget.release(reading.admitted.len());
        *reading = Reading::default();
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.into());
    pair.set_value(value.into());
    pair
}

fn metric(labels: Vec<proto::LabelPair>, counter: bool, value: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels);
    if counter {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}

fn family(name: &str, help: &str, counter: bool, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(if counter {
        MetricType::COUNTER
    } else {
        MetricType::GAUGE
    });
    f.set_metric(metrics);
    f
}

impl Collector for Series {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let reading = self.lock();
        let mut metrics: BTreeMap<F, Vec<proto::Metric>> = BTreeMap::new();
        for ((namespace, pod), samples) in &reading.by_workload {
            for (f, values, value) in samples {
                let def = &FAMILIES[*f as usize];
                let mut labels = vec![
                    label("node", &self.node),
                    label("namespace", namespace),
                    label("pod", pod),
                ];
                labels.extend(def.labels.iter().zip(values).map(|(n, v)| label(n, v)));
                metrics
                    .entry(*f)
                    .or_default()
                    .push(metric(labels, def.counter, *value));
            }
        }
        let mut out: Vec<MetricFamily> = metrics
            .into_iter()
            .map(|(f, m)| {
                let def = &FAMILIES[f as usize];
                family(def.name, def.help, def.counter, m)
            })
            .collect();
        if reading.namespaces > 0 || reading.failures > 0 {
            let own = |name: &str, counter: bool, value: f64| {
                let desc = self
                    .descs
                    .iter()
                    .find(|d| d.fq_name == name)
                    .expect("own desc");
                family(
                    name,
                    &desc.help,
                    counter,
                    vec![metric(vec![label("node", &self.node)], counter, value)],
                )
            };
            out.push(own(SELF_NAMESPACES, false, reading.namespaces as f64));
            out.push(own(SELF_DURATION, false, reading.duration.as_secs_f64()));
            out.push(own(SELF_FAILURES, true, reading.failures as f64));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_prometheus_conventions() {
        for f in FAMILIES {
            assert!(f.name.starts_with("sonde_netstat_"), "{}", f.name);
            assert_eq!(f.counter, f.name.ends_with("_total"), "{}", f.name);
            assert!(
                f.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                f.name
            );
        }
    }
}
