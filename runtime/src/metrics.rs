//! The Prometheus registry and every series the agent itself exports (names and labels
//! are a contract: README.md, the Probes table and "CLI and endpoints").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub packet_drops: IntCounterVec,
    pub tcp_retransmits: IntCounterVec,
    pub tcp_resets: IntCounterVec,
    pub tcp_connect_duration: KernelHistogram,
    pub tcp_connect_failures: IntCounterVec,
    pub tcp_rtt: KernelHistogram,
    pub softirq_delay: KernelHistogram,
    pub softirq_duration: KernelHistogram,
    pub netdev_queue: KernelHistogram,
    pub netdev_xmit: KernelHistogram,
    pub socket_read_latency: KernelHistogram,
    pub socket_overflows: IntCounterVec,
    pub io_latency: KernelHistogram,
    pub stack_latency: KernelHistogram,
    pub virtio_net_commands: KernelHistogram,
    pub virtio_net_errors: IntCounterVec,
    /// `sonde_flow_*`: series made on the fly (their labels depend on the config).
    pub flow: crate::probes::flow::FlowSeries,
    pub dns_duration: KernelHistogram,
    pub dns_responses: IntCounterVec,
    pub dns_timeouts: IntCounterVec,
    pub probe_up: IntGaugeVec,
    pub events_lost: IntCounterVec,
    pub events_suppressed: IntCounterVec,
    pub consumer_events_dropped: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// `topology.additionalLabels`' names: workload-labelled series carry them after `node`,
    /// `namespace`, `pod`.
    pub additional_labels: Vec<String>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> KernelHistogram {
    let h = KernelHistogram::new(name, help, labels);
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// A Prometheus histogram whose observations are bucketed in the kernel (log2 slots of
/// microseconds, see `ebpf_core::record::LOG2_SLOTS`): the agent adds what each slot gained
/// and exposes the exact counts, with `le` the slot bounds in seconds.
#[derive(Clone)]
pub struct KernelHistogram {
    desc: Arc<Desc>,
    series: Arc<Mutex<BTreeMap<Vec<String>, SlotCounts>>>,
}

/// One series: counts per slot (the last one above every bucket) and the sum in nanoseconds.
#[derive(Debug, Clone)]
struct SlotCounts {
    slots: [u64; ebpf_core::record::LOG2_SLOTS + 1],
    sum_ns: u64,
}

impl KernelHistogram {
    fn new(name: &str, help: &str, labels: &[&str]) -> Self {
        let desc = Desc::new(
            name.into(),
            help.into(),
            labels.iter().map(|l| l.to_string()).collect(),
            Default::default(),
        )
        .expect("valid metric definition");
        KernelHistogram {
            desc: Arc::new(desc),
            series: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn with_series(&self, labels: Vec<String>, f: impl FnOnce(&mut SlotCounts)) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        f(series.entry(labels).or_insert(SlotCounts {
            slots: [0; ebpf_core::record::LOG2_SLOTS + 1],
            sum_ns: 0,
        }));
    }

    /// Adds `n` observations to slot `slot` of the series with these label values.
    pub fn add_slot(&self, labels: Vec<String>, slot: usize, n: u64) {
        let slot = slot.min(ebpf_core::record::LOG2_SLOTS);
        self.with_series(labels, |s| s.slots[slot] += n);
    }

    /// Adds `ns` nanoseconds to the sum of the series with these label values.
    pub fn add_sum_ns(&self, labels: Vec<String>, ns: u64) {
        self.with_series(labels, |s| s.sum_ns = s.sum_ns.wrapping_add(ns));
    }
}

impl Collector for KernelHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        let metrics = series
            .iter()
            .map(|(values, counts)| {
                let labels = self
                    .desc
                    .variable_labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut pair = proto::LabelPair::default();
                        pair.set_name(name.clone());
                        pair.set_value(value.clone());
                        pair
                    })
                    .collect();
                let mut cumulative = 0;
                let buckets = (0..ebpf_core::record::LOG2_SLOTS)
                    .map(|k| {
                        cumulative += counts.slots[k];
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(ebpf_core::record::log2_slot_bound_seconds(k));
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                let mut h = proto::Histogram::default();
                h.set_bucket(buckets);
                h.set_sample_count(cumulative + counts.slots[ebpf_core::record::LOG2_SLOTS]);
                h.set_sample_sum(counts.sum_ns as f64 / 1e9);
                let mut m = proto::Metric::from_label(labels);
                m.set_histogram(h);
                m
            })
            .collect();
        family.set_metric(metrics);
        vec![family]
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_additional_labels(&[])
    }

    /// The agent's series, the workload-labelled ones with `additional` labels after `node`,
    /// `namespace`, `pod`.
    pub fn with_additional_labels(additional: &[String]) -> Self {
        let r = Registry::new();
        let with_workload = |own: &[&'static str]| -> Vec<String> {
            ["node", "namespace", "pod"]
                .iter()
                .map(|s| s.to_string())
                .chain(additional.iter().cloned())
                .chain(own.iter().map(|s| s.to_string()))
                .collect()
        };
        let overflows = with_workload(&["kind"]);
        let (drops, plain, resets, connect, failures, netdev) = (
            with_workload(&["reason"]),
            with_workload(&[]),
            with_workload(&["direction"]),
            with_workload(&["side"]),
            with_workload(&["side", "cause"]),
            with_workload(&["interface"]),
        );
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let m = Metrics {
            packet_drops: counter(
                &r,
                "sonde_packet_drops_total",
                "Packets dropped by the kernel, by drop reason.",
                &refs(&drops),
            ),
            tcp_retransmits: counter(
                &r,
                "sonde_tcp_retransmits_total",
                "TCP segments retransmitted.",
                &refs(&plain),
            ),
            tcp_resets: counter(
                &r,
                "sonde_tcp_resets_total",
                "TCP resets, by direction (sent, received).",
                &refs(&resets),
            ),
            tcp_connect_duration: histogram(
                &r,
                "sonde_tcp_connect_duration_seconds",
                "TCP handshake duration, by side (connect: SYN sent to SYN-ACK; accept: SYN-ACK sent to the final ACK).",
                &refs(&connect),
            ),
            tcp_connect_failures: counter(
                &r,
                "sonde_tcp_connect_failures_total",
                "Failed TCP handshakes, by side and cause (refused, timeout, other).",
                &refs(&failures),
            ),
            tcp_rtt: histogram(
                &r,
                "sonde_tcp_rtt_seconds",
                "Smoothed RTT of TCP connections, each sampled at most once per sample interval.",
                &refs(&plain),
            ),
            softirq_delay: histogram(
                &r,
                "sonde_softirq_delay_seconds",
                "Time NET_RX and NET_TX softirqs waited between being raised and running, by vector.",
                &["node", "vec"],
            ),
            softirq_duration: histogram(
                &r,
                "sonde_softirq_duration_seconds",
                "Run time of NET_RX and NET_TX softirqs, by vector.",
                &["node", "vec"],
            ),
            netdev_queue: histogram(
                &r,
                "sonde_netdev_queue_seconds",
                "Time packets spent in an interface's qdisc (net_dev_queue to net_dev_start_xmit).",
                &refs(&netdev),
            ),
            netdev_xmit: histogram(
                &r,
                "sonde_netdev_xmit_seconds",
                "Time packets spent in an interface's driver (net_dev_start_xmit to net_dev_xmit).",
                &refs(&netdev),
            ),
            socket_read_latency: histogram(
                &r,
                "sonde_socket_read_latency_seconds",
                "Time from a packet's arrival in the pod's network namespace (netif_receive_skb) to the application reading it from its socket.",
                &refs(&plain),
            ),
            socket_overflows: counter(
                &r,
                "sonde_socket_overflows_total",
                "Packets or receive memory refused to a socket, by kind (rcvqueue_full: the socket's receive buffer was full; exceed_buf_limit: the protocol's memory limit).",
                &refs(&overflows),
            ),
            io_latency: histogram(
                &r,
                "sonde_io_latency_seconds",
                "Block request latency from issue to the driver to completion, by disk and operation.",
                &["node", "device", "op"],
            ),
            stack_latency: histogram(
                &r,
                "sonde_stack_latency_seconds",
                "Time received IPv4 packets spend in one stage of the kernel's IP layer, by stage (receive_local: ip_rcv to ip_local_deliver; receive_forward: ip_rcv to ip_forward; forward: ip_forward to ip_output).",
                &["node", "stage"],
            ),
            virtio_net_commands: histogram(
                &r,
                "sonde_virtio_net_command_seconds",
                "Latency of virtio-net control commands (sent to the device until it answered; RTNL is held meanwhile), by interface, class and command.",
                &["node", "interface", "class", "command"],
            ),
            virtio_net_errors: counter(
                &r,
                "sonde_virtio_net_command_errors_total",
                "virtio-net control commands the device did not acknowledge, by interface, class and command.",
                &["node", "interface", "class", "command"],
            ),
            dns_duration: histogram(
                &r,
                "sonde_dns_query_duration_seconds",
                "DNS query latency (query to response, seen on the node's host-side interfaces), by client pod.",
                &refs(&plain),
            ),
            dns_responses: counter(
                &r,
                "sonde_dns_responses_total",
                "DNS responses to a pod, by rcode (NOERROR, NXDOMAIN, SERVFAIL, ...).",
                &refs(&with_workload(&["rcode"])),
            ),
            dns_timeouts: counter(
                &r,
                "sonde_dns_timeouts_total",
                "DNS queries of a pod that got no response within the probe's timeout.",
                &refs(&plain),
            ),
            flow: {
                let f = crate::probes::flow::FlowSeries::new();
                r.register(Box::new(f.clone()))
                    .expect("metric registered once");
                f
            },
            probe_up: gauge(
                &r,
                "sonde_probe_up",
                "1 when the probe is loaded and attached.",
                &["probe"],
            ),
            events_lost: counter(
                &r,
                "sonde_events_lost_total",
                "Event records the kernel could not deliver (ring buffer full).",
                &["probe"],
            ),
            events_suppressed: counter(
                &r,
                "sonde_events_suppressed_total",
                "Event records not emitted because of the probe's event rate limits (its namespace's, then the CPU's), by the pod whose event it was (empty: events of no pod).",
                &["probe", "namespace", "pod"],
            ),
            consumer_events_dropped: counter(
                &r,
                "sonde_consumer_events_dropped_total",
                "Events a consumer (event sink) lost because its queue was full.",
                &["consumer"],
            ),
            config_reloads: counter(
                &r,
                "sonde_config_reloads_total",
                "Config file reloads, by result (applied, rejected).",
                &["result"],
            ),
            registry: r,
            additional_labels: additional.to_vec(),
        };
        let build = gauge(
            &m.registry,
            "sonde_build_info",
            "Sonde build information.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    /// The text exposition format of the agent's metrics followed by `extra` families (the
    /// plugins').
    pub fn encode(&self, extra: Vec<prometheus::proto::MetricFamily>) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        let mut families = self.registry.gather();
        families.extend(extra);
        if let Err(e) = encoder.encode_utf8(&families, &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
