//! `retrans-storm`: counts TCP retransmits per workload over a sliding window and, when a
//! workload's count reaches the threshold, emits a `retrans_storm` event and marks the storm
//! in `sonde_plugin_retrans_storm_active` until the count falls below the threshold again.
//! The counting lives in [`storm`]; this file is the glue to the host.

mod storm;

use std::collections::HashMap;

use serde::Deserialize;
use sonde_plugin::{Config, Counter, Event, Gauge, Plugin, Series, Severity, TcpRetrans, Workload};

use storm::{Detector, Edge};

/// `spec.config` of the manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct Settings {
    /// Length of the sliding window, in seconds (1 to 3600).
    window_seconds: u64,
    /// Retransmits per window at which a storm starts (at least 1).
    threshold: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window_seconds: 10,
            threshold: 100,
        }
    }
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if !(1..=3600).contains(&s.window_seconds) {
            return Err("config.windowSeconds: must be between 1 and 3600".into());
        }
        if s.threshold == 0 {
            return Err("config.threshold: must be at least 1".into());
        }
        Ok(s)
    }
}

struct RetransStorm {
    settings: Settings,
    detector: Detector,
    active: Gauge,
    total: Counter,
    /// Series of the workloads that had a storm, resolved once.
    series: HashMap<Workload, (Series<Gauge>, Series<Counter>)>,
}

impl Plugin for RetransStorm {
    fn init(config: Config) -> Result<Self, String> {
        let settings = Settings::from_config(&config)?;
        let labels = ["namespace", "pod"];
        let active = Gauge::register(
            "sonde_plugin_retrans_storm_active",
            "1 while the pod is in a TCP retransmit storm, 0 after.",
            &labels,
        )?;
        let total = Counter::register(
            "sonde_plugin_retrans_storm_total",
            "TCP retransmit storms started, by pod.",
            &labels,
        )?;
        Ok(RetransStorm {
            detector: Detector::new(settings.window_seconds, settings.threshold),
            settings,
            active,
            total,
            series: HashMap::new(),
        })
    }

    fn on_tcp_retrans(&mut self, batch: &[TcpRetrans<'_>]) {
        for r in batch {
            // The host network namespace has no workload: not counted.
            if let Some(workload) = r.envelope.workload {
                self.detector.record(
                    &workload.to_workload(),
                    r.envelope.netns,
                    r.envelope.time_ns,
                );
            }
        }
    }

    fn tick(&mut self, now_ns: u64) {
        let mut failure = None;
        for edge in self.detector.tick(now_ns) {
            if let Err(e) = self.apply(&edge) {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            sonde_plugin::warn!("{e}");
        }
    }
}

impl RetransStorm {
    fn series(
        &mut self,
        workload: &Workload,
    ) -> sonde_plugin::Result<(Series<Gauge>, Series<Counter>)> {
        if let Some(s) = self.series.get(workload) {
            return Ok(*s);
        }
        let labels = [workload.namespace.as_str(), workload.pod.as_str()];
        let s = (self.active.series(&labels)?, self.total.series(&labels)?);
        self.series.insert(workload.clone(), s);
        Ok(s)
    }

    fn apply(&mut self, edge: &Edge) -> sonde_plugin::Result<()> {
        match edge {
            Edge::Started {
                workload,
                netns,
                retransmits,
            } => {
                let window = self.settings.window_seconds;
                Event::new("retrans_storm")
                    .severity(Severity::Warning)
                    .netns(*netns)
                    .workload(workload.clone())
                    .message(format!(
                        "{retransmits} TCP retransmits in {window}s from {workload} (threshold {})",
                        self.settings.threshold
                    ))
                    .field("retransmits", *retransmits)
                    .field("window_seconds", window)
                    .field("threshold", self.settings.threshold)
                    .emit()?;
                let (active, total) = self.series(workload)?;
                total.inc()?;
                active.set(1.0)
            }
            Edge::Ended { workload, .. } => self.series(workload)?.0.set(0.0),
        }
    }
}

sonde_plugin::export!(RetransStorm);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_validate() {
        let s = Settings::from_config(&Config::new("{}")).unwrap();
        assert_eq!((s.window_seconds, s.threshold), (10, 100));
        let s = Settings::from_config(&Config::new(r#"{"windowSeconds": 30, "threshold": 5}"#))
            .unwrap();
        assert_eq!((s.window_seconds, s.threshold), (30, 5));
        for (json, field) in [
            (r#"{"windowSeconds": 0}"#, "config.windowSeconds"),
            (r#"{"threshold": 0}"#, "config.threshold"),
            (r#"{"treshold": 5}"#, "treshold"),
            (r#"{"threshold": "many"}"#, "config:"),
        ] {
            let e = Settings::from_config(&Config::new(json)).unwrap_err();
            assert!(e.contains(field), "{json}: {e}");
        }
    }
}
