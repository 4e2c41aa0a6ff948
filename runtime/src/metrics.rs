//! The Prometheus registry and every series the agent itself exports (DESIGN.md section 5).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub packet_drops: IntCounterVec,
    pub tcp_retransmits: IntCounterVec,
    pub tcp_resets: IntCounterVec,
    pub probe_up: IntGaugeVec,
    pub events_lost: IntCounterVec,
    pub events_suppressed: IntCounterVec,
    pub consumer_events_dropped: IntCounterVec,
    pub config_reloads: IntCounterVec,
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

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let workload = ["node", "namespace", "pod"];
        let m = Metrics {
            packet_drops: counter(
                &r,
                "sonde_packet_drops_total",
                "Packets dropped by the kernel, by drop reason.",
                &["node", "namespace", "pod", "reason"],
            ),
            tcp_retransmits: counter(
                &r,
                "sonde_tcp_retransmits_total",
                "TCP segments retransmitted.",
                &workload,
            ),
            tcp_resets: counter(
                &r,
                "sonde_tcp_resets_total",
                "TCP resets, by direction (sent, received).",
                &["node", "namespace", "pod", "direction"],
            ),
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
                "Event records not emitted because of the probe's event rate limit.",
                &["probe"],
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
