//! The agent's YAML config: the composition of each component's own config struct, parsed
//! strictly (unknown keys are errors that name the key and its line).

use std::path::Path;

use serde::Deserialize;

use crate::metrics::MetricsConfig;
use crate::plugin_host::PluginsConfig;
use crate::probes::ProbesConfig;
use crate::sinks::SinksConfig;
use crate::topology::TopologyConfig;

/// The config the agent runs with when none is given: all probes on, events to stdout.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AgentConfig {
    /// The `node` label; empty means `$NODE_NAME`, else the host name.
    pub node: String,
    /// Address of the HTTP endpoints (`--listen` wins over it).
    pub listen: String,
    pub probes: ProbesConfig,
    pub sinks: SinksConfig,
    pub topology: TopologyConfig,
    pub plugins: PluginsConfig,
    pub btf: BtfConfig,
    pub metrics: MetricsConfig,
    pub api: crate::server::ApiConfig,
}

/// `btf:`: where the kernel's types come from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BtfConfig {
    /// A BTF file with the running kernel's types, read instead of the kernel's own
    /// (`/sys/kernel/btf/vmlinux`) for CO-RE relocations, the checks before loading a probe
    /// and drop reason names; for kernels built without BTF. Empty = the kernel's own. An
    /// absolute path; read at start.
    pub path: String,
}

impl BtfConfig {
    /// The file, when one is set.
    pub fn path(&self) -> Option<std::path::PathBuf> {
        (!self.path.is_empty()).then(|| std::path::PathBuf::from(&self.path))
    }

    fn validate(&self) -> Result<(), Invalid> {
        if !self.path.is_empty() && !Path::new(&self.path).is_absolute() {
            return Err(Invalid::new(
                "btf.path",
                format!(
                    "{:?} must be an absolute path (the agent's working directory is \
                 not its config's)",
                    self.path
                ),
            ));
        }
        Ok(())
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node: String::new(),
            listen: "127.0.0.1:9990".into(),
            probes: ProbesConfig::default(),
            sinks: SinksConfig::default(),
            topology: TopologyConfig::default(),
            plugins: PluginsConfig::default(),
            btf: BtfConfig::default(),
            metrics: MetricsConfig::default(),
            api: crate::server::ApiConfig::default(),
        }
    }
}

/// A value of the config that cannot be used: the field, as its path in the config
/// (`probes.dns.timeout`, `sinks.loki.url`), and why, for a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A config that could not be used, with where (`origin`: its path, or "embedded default
/// config") and why, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {kind}")]
pub struct ConfigError {
    pub origin: String,
    pub kind: ConfigErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigErrorKind {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// Not YAML, or not the config's shape (an unknown field, a value of the wrong type); the
    /// parser's message on one line.
    #[error("{0}")]
    Syntax(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl AgentConfig {
    /// Parses config text; `origin` names it in errors (a path, or "embedded default").
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let err = |kind: ConfigErrorKind| ConfigError {
            origin: origin.to_string(),
            kind,
        };
        // An empty file is the default config, not an error.
        if text.trim().is_empty() {
            return Ok(AgentConfig::default());
        }
        let config: AgentConfig = serde_yaml_ng::from_str(text)
            .map_err(|e| err(ConfigErrorKind::Syntax(one_line(&e.to_string()))))?;
        config.validate().map_err(|e| err(e.into()))?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            kind: e.into(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn embedded() -> Self {
        Self::parse(DEFAULT_CONFIG, "embedded default config")
            .expect("the embedded default config is valid")
    }

    fn validate(&self) -> Result<(), Invalid> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Invalid::new(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:9990", self.listen),
            ));
        }
        self.probes.validate()?;
        self.topology.validate()?;
        self.btf.validate()?;
        self.metrics.validate()?;
        self.api.validate()?;
        self.sinks.validate()
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_enables_every_probe() {
        let c = AgentConfig::embedded();
        assert!(
            c.probes.packet_drop.enabled
                && c.probes.tcp_retrans.enabled
                && c.probes.tcp_reset.enabled
                && c.probes.tcp_connect.enabled
        );
        assert_eq!(
            c.probes.tcp_connect.slow_threshold,
            std::time::Duration::from_millis(200)
        );
        // Runs on every received segment: off unless asked for.
        assert!(!c.probes.tcp_rtt.enabled);
        assert_eq!(c.probes.tcp_rtt, crate::probes::tcp_rtt::Config::default());
        assert_eq!(c.probes.netstat, crate::probes::netstat::Config::default());
        assert!(c.sinks.stdout.enabled);
        assert_eq!(c.listen, "127.0.0.1:9990");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "probes:\n  packet_drop:\n    enabld: true\n";
        let e = AgentConfig::parse(text, "sonde.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sonde.yaml: "), "{e}");
        assert!(e.contains("enabld") && e.contains("line 3"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        let e = AgentConfig::parse("listen: nowhere\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        for size in ["3Mi", "4Ki", "2Gi"] {
            let text =
                format!("probes:\n  tcp_reset:\n    events:\n      ringBufferSize: {size}\n");
            let e = AgentConfig::parse(&text, "c.yaml").unwrap_err().to_string();
            assert!(
                e.contains("tcp_reset") && e.contains("ringBufferSize"),
                "{e}"
            );
        }
        let e = AgentConfig::parse(
            "probes:\n  tcp_reset:\n    events:\n      ringBufferSize: lots\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn netstat_settings_are_checked() {
        let e = AgentConfig::parse("probes:\n  netstat:\n    interval: 1ms\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("probes.netstat.interval"), "{e}");
        let e = AgentConfig::parse("probes:\n  netstat:\n    groups: [tcpext]\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("probes.netstat") && e.contains("tcpext"), "{e}");
    }

    #[test]
    fn netstat_counters_are_checked() {
        let c = AgentConfig::embedded();
        assert_eq!(
            c.probes.netstat.counters,
            crate::probes::netstat::Counters::curated()
        );
        assert_eq!(
            c.probes.netstat.host_counters,
            crate::probes::netstat::Counters::all()
        );
        let c = AgentConfig::parse(
            "probes:\n  netstat:\n    counters: [default, TcpExt:TCPOFODrop, Icmp6]\n    hostCounters: default\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(c.probes.netstat.counters.0.len(), 3);
        let c = AgentConfig::parse("probes:\n  netstat:\n    counters: all\n", "c.yaml").unwrap();
        assert_eq!(
            c.probes.netstat.counters,
            crate::probes::netstat::Counters::all()
        );
        let refused = |yaml: &str, words: &[&str]| {
            let e = AgentConfig::parse(yaml, "c.yaml").unwrap_err().to_string();
            assert!(e.starts_with("c.yaml: "), "{e}");
            assert!(!e.contains('\n'), "{e}");
            for w in words {
                assert!(e.contains(w), "{w:?} not in {e}");
            }
        };
        refused(
            "probes:\n  netstat:\n    counters: [TcpExt:ListenOverflows, TCPExt:ListenDrops]\n",
            &[
                "probes.netstat",
                "counters",
                "unknown section \"TCPExt\"",
                "line 3",
            ],
        );
        refused(
            "probes:\n  netstat:\n    hostCounters: [everything]\n",
            &[
                "hostCounters",
                "\"everything\" is not all, default",
                "line 3",
            ],
        );
        refused(
            "probes:\n  netstat:\n    counters:\n      - dev:bytes\n",
            &["counters", "dev has no counter \"bytes\"", "line 4"],
        );
        refused(
            "probes:\n  netstat:\n    counters: {TcpExt: ListenOverflows}\n",
            &["probes.netstat", "counters", "line 3"],
        );
        refused(
            "probes:\n  netstat:\n    groups: [snmp]\n    counters: [TcpExt:ListenOverflows]\n",
            &[
                "probes.netstat.counters: TcpExt:ListenOverflows",
                "group netstat",
            ],
        );
        refused(
            "probes:\n  netstat:\n    counter: all\n",
            &["unknown field `counter`", "counters", "hostCounters"],
        );
    }

    #[test]
    fn metrics_settings_are_checked() {
        let c = AgentConfig::embedded();
        assert_eq!(c.metrics, crate::metrics::MetricsConfig::default());
        assert_eq!(c.metrics.max_series, 100_000);
        let c = AgentConfig::parse(
            "metrics:\n  maxSeries: 50\n  podHistogramBuckets: fine\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(c.metrics.max_series, 50);
        let refused = |yaml: &str, words: &[&str]| {
            let e = AgentConfig::parse(yaml, "c.yaml").unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            for w in words {
                assert!(e.contains(w), "{w:?} not in {e}");
            }
        };
        refused(
            "metrics:\n  maxSeries: 0\n",
            &["metrics.maxSeries", "at least 1"],
        );
        refused(
            "metrics:\n  maxSeries: -5\n",
            &["metrics", "maxSeries", "line 2"],
        );
        refused(
            "metrics:\n  maxSeries: lots\n",
            &["metrics", "maxSeries", "line 2"],
        );
        refused(
            "metrics:\n  podHistogramBuckets: log2\n",
            &["metrics.podHistogramBuckets", "coarse", "fine", "line 2"],
        );
        refused(
            "metrics:\n  maxseries: 5\n",
            &["maxseries", "maxSeries", "line 2"],
        );
    }

    #[test]
    fn probe_durations_are_checked() {
        let c = AgentConfig::parse(
            "probes:\n  tcp_connect:\n    slowThreshold: 50ms\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(
            c.probes.tcp_connect.slow_threshold,
            std::time::Duration::from_millis(50)
        );
        let e = AgentConfig::parse(
            "probes:\n  tcp_connect:\n    slowThreshold: fast\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("slowThreshold") && e.contains("line 3"), "{e}");
        let e = AgentConfig::parse("probes:\n  tcp_rtt:\n    flowTableSize: 10\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("probes.tcp_rtt.flowTableSize"), "{e}");
        for (probe, field) in [
            ("tcp_rtt", "sampleSegments"),
            ("socket_latency", "samplePackets"),
            ("netdev_latency", "samplePackets"),
        ] {
            for every in [0, 65537] {
                let e = AgentConfig::parse(
                    &format!("probes:\n  {probe}:\n    {field}: {every}\n"),
                    "c.yaml",
                )
                .unwrap_err()
                .to_string();
                assert!(
                    e.contains(&format!("probes.{probe}.{field}")) && !e.contains('\n'),
                    "{e}"
                );
            }
            AgentConfig::parse(&format!("probes:\n  {probe}:\n    {field}: 1\n"), "c.yaml")
                .unwrap_or_else(|e| panic!("{probe}.{field}: 1 refused: {e}"));
        }
    }

    #[test]
    fn flow_and_dns_configs_are_checked() {
        let c = AgentConfig::embedded();
        assert_eq!(c.probes.flow, crate::probes::flow::Config::default());
        assert_eq!(c.probes.dns, crate::probes::dns::Config::default());
        let refused = |yaml: &str, key: &str| {
            let e = AgentConfig::parse(yaml, "c.yaml").unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        refused(
            "probes:\n  flow:\n    tableSize: 4\n",
            "probes.flow.tableSize",
        );
        refused(
            "probes:\n  flow:\n    interfaces: [\"a*b\"]\n",
            "probes.flow.interfaces",
        );
        refused(
            "probes:\n  flow:\n    maxSeries: 0\n",
            "probes.flow.maxSeries",
        );
        let c = AgentConfig::parse(
            "probes:\n  flow:\n    enabled: true\n    interfaces: [eth1, \"tap*\"]\n    portLabels: true\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(c.probes.flow.interfaces, ["eth1", "tap*"]);
        refused(
            "probes:\n  flow:\n    attach: tc\n",
            "probes.flow: attach: \"tc\" is not auto, tcx or clsact at line 3",
        );
        assert_eq!(c.probes.flow.attach, ebpf_core::TcAttach::Auto);
        let clsact = AgentConfig::parse("probes:\n  dns:\n    attach: clsact\n", "c.yaml").unwrap();
        assert_eq!(clsact.probes.dns.attach, ebpf_core::TcAttach::Clsact);
        let settings = (crate::probes::dns::DRIVER.settings)(&ProbesConfig {
            dns: crate::probes::dns::Config {
                enabled: true,
                ..clsact.probes.dns
            },
            ..Default::default()
        });
        assert_eq!(settings.unwrap().tc_attach, ebpf_core::TcAttach::Clsact);
        refused("probes:\n  dns:\n    timeout: 10ms\n", "probes.dns.timeout");
        refused(
            "probes:\n  dns:\n    errorRate: -1\n",
            "probes.dns.errorRate",
        );
        assert!(c.probes.flow.port_labels && !c.probes.flow.address_labels);
    }

    #[test]
    fn latency_probe_thresholds_are_checked() {
        let c = AgentConfig::embedded();
        assert_eq!(c.probes.softirq, crate::probes::softirq::Config::default());
        assert_eq!(
            c.probes.netdev_latency,
            crate::probes::netdev_latency::Config::default()
        );
        assert_eq!(
            c.probes.io_latency,
            crate::probes::io_latency::Config::default()
        );
        assert_eq!(
            c.probes.virtio_net,
            crate::probes::virtio_net::Config::default()
        );
        assert!(!c.probes.virtio_net.enabled);
        assert!(!c.probes.socket_latency.enabled);
        let c = AgentConfig::parse(
            "probes:\n  softirq:\n    delayThreshold: 0ms\n  io_latency:\n    slowThreshold: 2s\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(c.probes.softirq.delay_threshold, std::time::Duration::ZERO);
        assert_eq!(
            c.probes.io_latency.slow_threshold,
            std::time::Duration::from_secs(2)
        );
        let c = AgentConfig::parse(
            "probes:\n  virtio_net:\n    enabled: true\n    slowThreshold: 0ms\n",
            "c.yaml",
        )
        .unwrap();
        assert!(c.probes.virtio_net.enabled);
        assert_eq!(
            c.probes.virtio_net.slow_threshold,
            std::time::Duration::ZERO
        );
        let e = AgentConfig::parse("probes:\n  virtio_net:\n    slowThreshold: 100\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("slowThreshold"), "{e}");
        let e = AgentConfig::parse(
            "probes:\n  netdev_latency:\n    xmitThreshold: 5\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("xmitThreshold") && e.contains("line 3"), "{e}");
        let e = AgentConfig::parse("probes:\n  softirq:\n    delay: 1ms\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delay") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn partial_config_keeps_defaults() {
        let c =
            AgentConfig::parse("probes:\n  packet_drop:\n    enabled: false\n", "c.yaml").unwrap();
        assert!(!c.probes.packet_drop.enabled);
        assert!(c.probes.tcp_reset.enabled);
        assert_eq!(
            AgentConfig::parse("", "c.yaml").unwrap(),
            AgentConfig::default()
        );
    }

    #[test]
    fn btf_path_is_strict_and_optional() {
        assert_eq!(AgentConfig::embedded().btf.path(), None);
        let c = AgentConfig::parse("btf:\n  path: /var/lib/sonde/vmlinux.btf\n", "c.yaml").unwrap();
        assert_eq!(
            c.btf.path(),
            Some(std::path::PathBuf::from("/var/lib/sonde/vmlinux.btf"))
        );
        assert_eq!(
            AgentConfig::parse("btf:\n  path: \"\"\n", "c.yaml")
                .unwrap()
                .btf
                .path(),
            None
        );
        let refused = |yaml: &str, words: &[&str]| {
            let e = AgentConfig::parse(yaml, "c.yaml").unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            for w in words {
                assert!(e.contains(w), "{w:?} not in {e}");
            }
        };
        refused("btf:\n  paht: /x.btf\n", &["btf", "paht", "path", "line 2"]);
        refused(
            "btf:\n  path: vmlinux.btf\n",
            &["btf.path", "vmlinux.btf", "absolute"],
        );
        refused("btf:\n  path: [a, b]\n", &["btf.path", "line 2"]);
        refused("btf: /x.btf\n", &["btf", "line 1"]);
    }
}
