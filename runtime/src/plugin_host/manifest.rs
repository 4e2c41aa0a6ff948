//! `plugin.yaml`: a bundle's manifest, Kubernetes-styled and parsed strictly (unknown keys
//! are refused, errors name the field).

use crate::config::{ConfigError, ConfigErrorKind, Invalid};
use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use crate::units::ByteSize;

pub const API_VERSION: &str = "sonde.dev/v1alpha1";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest {
    /// Must be `sonde.dev/v1alpha1`.
    pub api_version: String,
    /// `Plugin` (a WebAssembly component) or `Script` (a rhai script).
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The plugin's name: lowercase letters, digits and dashes, as Kubernetes names.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// The component, a file beside plugin.yaml (`kind: Plugin`).
    #[serde(default)]
    pub module: String,
    /// The rhai script, a file beside plugin.yaml (`kind: Script`).
    #[serde(default)]
    pub source: String,
    /// Hex SHA-256 of the module; the bundle is refused when it does not match.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Probes whose events the plugin receives.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Any YAML, handed to the plugin's `init` as JSON.
    #[serde(default)]
    pub config: Option<serde_yaml_ng::Value>,
    /// How event batches are handed over: typed records (the default) or packed bytes.
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub limits: Limits,
    /// What the plugin may use; nothing else is granted.
    #[serde(default)]
    pub capabilities: BTreeSet<Capability>,
}

/// What a bundle runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// A WebAssembly component for the `sonde:plugin` world.
    Plugin,
    /// A rhai script (`spec.source`) whose `on_<probe>` handlers get the events as maps.
    Script,
}

impl Spec {
    fn file(&self, field: &str) -> &str {
        if field == "source" {
            &self.source
        } else {
            &self.module
        }
    }
}

/// `spec.delivery`: which of the world's event handlers the host calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// `on-packet-drop(batch)` and the other typed handlers.
    #[default]
    Typed,
    /// `on-packed(batch)`, in the layout of wit/PACKED.md.
    Packed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Metrics,
    Events,
    Topology,
    Maps,
    Control,
    Enrich,
    Clock,
    Random,
}

impl Capability {
    pub const ALL: [Capability; 8] = [
        Capability::Metrics,
        Capability::Events,
        Capability::Topology,
        Capability::Maps,
        Capability::Control,
        Capability::Enrich,
        Capability::Clock,
        Capability::Random,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Metrics => "metrics",
            Capability::Events => "events",
            Capability::Topology => "topology",
            Capability::Maps => "maps",
            Capability::Control => "control",
            Capability::Enrich => "enrich",
            Capability::Clock => "clock",
            Capability::Random => "random",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Limits {
    /// Linear memory the plugin may grow to.
    pub memory: ByteSize,
    /// Wall-clock time one call (init, a batch, a tick) may take.
    #[serde(deserialize_with = "call_timeout")]
    pub call_timeout: Duration,
    /// Distinct metric series the plugin may create.
    pub series: u32,
    /// Event batches queued for the plugin before new ones are dropped (and counted).
    pub queue: u32,
    /// Events the plugin may emit per second.
    pub events_per_second: u32,
    /// Events handed to the plugin in one call, at most (larger batches are split).
    pub batch: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize(32 << 20),
            call_timeout: Duration::from_millis(100),
            series: 1000,
            queue: 64,
            events_per_second: 100,
            batch: 1024,
        }
    }
}

// Durations in manifests are written as in the agent config (`100ms`, `2s`, `1m`).
use crate::units::parse_duration;

fn call_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("callTimeout: {e}")))
}

impl Manifest {
    /// Parses and checks a manifest; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let err = |kind: ConfigErrorKind| ConfigError {
            origin: origin.to_string(),
            kind,
        };
        let m: Manifest = serde_yaml_ng::from_str(text)
            .map_err(|e| err(ConfigErrorKind::Syntax(e.to_string().replace('\n', " "))))?;
        m.validate().map_err(|e| err(e.into()))?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.api_version != API_VERSION {
            return Err(Invalid::new(
                "apiVersion",
                format!("{:?} is not {API_VERSION}", self.api_version),
            ));
        }
        let kind = self.bundle_kind().ok_or_else(|| {
            Invalid::new("kind", format!("{:?} is not Plugin or Script", self.kind))
        })?;
        let name = &self.metadata.name;
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid {
            return Err(Invalid::new(
                "metadata.name",
                format!("{name:?} must be lowercase letters, digits and dashes (at most 63)"),
            ));
        }
        let (field, other) = match kind {
            BundleKind::Plugin => ("module", "source"),
            BundleKind::Script => ("source", "module"),
        };
        if !self.spec.file(other).is_empty() {
            return Err(Invalid::new(
                format!("spec.{other}"),
                format!("a {} bundle names its file in spec.{field}", self.kind),
            ));
        }
        let file = self.spec.file(field);
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            return Err(Invalid::new(
                format!("spec.{field}"),
                format!("{file:?} must be a file name beside plugin.yaml"),
            ));
        }
        if kind == BundleKind::Script {
            if let Some(c) = self
                .spec
                .capabilities
                .iter()
                .find(|c| !matches!(c, Capability::Metrics | Capability::Events))
            {
                return Err(Invalid::new(
                    "spec.capabilities",
                    format!(
                        "{} is not available to scripts (metrics, events)",
                        c.as_str()
                    ),
                ));
            }
            if self.spec.delivery != Delivery::Typed {
                return Err(Invalid::new(
                    "spec.delivery",
                    "scripts take events as maps, not packed",
                ));
            }
        }
        if let Some(sum) = &self.spec.sha256 {
            if sum.len() != 64 || !sum.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Invalid::new(
                    "spec.sha256",
                    format!("{sum:?} is not 64 hex digits"),
                ));
            }
        }
        for probe in &self.spec.subscribe {
            if ebpf_core::spec(probe).is_none() {
                let known: Vec<&str> = ebpf_core::CATALOGUE.iter().map(|s| s.name).collect();
                return Err(Invalid::new(
                    "spec.subscribe",
                    format!("unknown probe {probe:?} (known: {})", known.join(", ")),
                ));
            }
            let delivered: Vec<&str> = super::delivery::Probe::ALL
                .iter()
                .map(|p| p.name())
                .collect();
            if kind == BundleKind::Plugin && !delivered.contains(&probe.as_str()) {
                return Err(Invalid::new(
                    "spec.subscribe",
                    format!(
                        "probe {probe} hands plugins no events (plugins subscribe to {})",
                        delivered.join(", ")
                    ),
                ));
            }
        }
        let l = &self.spec.limits;
        if l.memory.0 < 1 << 20 || l.memory.0 > 4 << 30 {
            return Err(Invalid::new(
                "spec.limits.memory",
                "must be between 1Mi and 4Gi",
            ));
        }
        if l.call_timeout < Duration::from_millis(1) || l.call_timeout > Duration::from_secs(60) {
            return Err(Invalid::new(
                "spec.limits.callTimeout",
                "must be between 1ms and 60s",
            ));
        }
        if l.queue == 0 {
            return Err(Invalid::new("spec.limits.queue", "must be at least 1"));
        }
        if l.batch == 0 || l.batch > 65536 {
            return Err(Invalid::new(
                "spec.limits.batch",
                "must be between 1 and 65536",
            ));
        }
        Ok(())
    }

    /// `kind` as an enum; `None` for an unknown kind (refused by `parse`).
    pub fn bundle_kind(&self) -> Option<BundleKind> {
        match self.kind.as_str() {
            "Plugin" => Some(BundleKind::Plugin),
            "Script" => Some(BundleKind::Script),
            _ => None,
        }
    }

    /// The file the bundle runs: `spec.module` or `spec.source`.
    pub fn file(&self) -> &str {
        match self.bundle_kind() {
            Some(BundleKind::Script) => &self.spec.source,
            _ => &self.spec.module,
        }
    }

    pub fn grants(&self, c: Capability) -> bool {
        self.spec.capabilities.contains(&c)
    }

    /// `spec.config` as JSON, `{}` when absent.
    pub fn config_json(&self) -> String {
        match &self.spec.config {
            None => "{}".into(),
            Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "apiVersion: sonde.dev/v1alpha1\nkind: Plugin\nmetadata:\n  name: retrans-storm\n\
        spec:\n  module: retrans_storm.wasm\n  subscribe: [tcp_retrans]\n  config: {threshold: 5}\n\
        \x20 limits: {memory: 16Mi, callTimeout: 50ms, batch: 256}\n  capabilities: [metrics, events]\n";

    const SCRIPT: &str =
        "apiVersion: sonde.dev/v1alpha1\nkind: Script\nmetadata:\n  name: syn-drops\n\
        spec:\n  source: drops.rhai\n  subscribe: [packet_drop]\n  capabilities: [metrics, events]\n";

    #[test]
    fn parses_a_script_manifest() {
        let m = Manifest::parse(SCRIPT, "plugin.yaml").unwrap();
        assert_eq!(m.bundle_kind(), Some(BundleKind::Script));
        assert_eq!(m.file(), "drops.rhai");
    }

    #[test]
    fn parses_a_manifest() {
        let m = Manifest::parse(GOOD, "plugin.yaml").unwrap();
        assert_eq!(m.metadata.name, "retrans-storm");
        assert_eq!(m.spec.limits.memory, ByteSize(16 << 20));
        assert_eq!(m.spec.limits.call_timeout, Duration::from_millis(50));
        assert_eq!(m.spec.limits.batch, 256);
        assert!(m.grants(Capability::Events) && !m.grants(Capability::Topology));
        assert_eq!(m.config_json(), r#"{"threshold":5}"#);
        assert_eq!(m.spec.delivery, Delivery::Typed);
        let packed = GOOD.replace("  subscribe:", "  delivery: packed\n  subscribe:");
        let m = Manifest::parse(&packed, "plugin.yaml").unwrap();
        assert_eq!(m.spec.delivery, Delivery::Packed); // Every probe with events can be subscribed to, the latency probes' included.
        let latency = GOOD.replace("[tcp_retrans]", "[softirq, netdev_latency, io_latency]");
        assert!(Manifest::parse(&latency, "plugin.yaml").is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("subscribe", "subscribes"), "subscribes"),
            (
                GOOD.replace("tcp_retrans", "tcp_retrains"),
                "spec.subscribe",
            ),
            (
                GOOD.replace("[tcp_retrans]", "[tcp_rtt]"),
                "spec.subscribe: probe tcp_rtt hands plugins no events",
            ),
            (GOOD.replace("kind: Plugin", "kind: Gadget"), "kind"),
            (GOOD.replace("kind: Plugin", "kind: Script"), "spec.source"),
            (
                SCRIPT.replace(
                    "capabilities: [metrics, events]",
                    "capabilities: [topology]",
                ),
                "not available to scripts",
            ),
            (
                SCRIPT.replace(
                    "  source: drops.rhai\n",
                    "  source: drops.rhai\n  module: x.wasm\n",
                ),
                "spec.module",
            ),
            (GOOD.replace("v1alpha1", "v9"), "apiVersion"),
            (
                GOOD.replace("retrans-storm", "Retrans_Storm"),
                "metadata.name",
            ),
            (GOOD.replace("50ms", "fast"), "callTimeout"),
            (GOOD.replace("batch: 256", "batch: 0"), "spec.limits.batch"),
            (GOOD.replace("events]", "network]"), "network"),
            (
                GOOD.replace("  subscribe:", "  delivery: fast\n  subscribe:"),
                "spec.delivery",
            ),
            (
                GOOD.replace("retrans_storm.wasm", "../x.wasm"),
                "spec.module",
            ),
        ];
        for (text, field) in cases {
            let e = Manifest::parse(&text, "b/plugin.yaml")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("b/plugin.yaml: ") && e.contains(field),
                "{field}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn durations() {}
}
