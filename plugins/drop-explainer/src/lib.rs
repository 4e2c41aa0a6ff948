//! `drop-explainer`: turns `packet_drop` events into `drop_explained` events that say, in a
//! sentence, what dropped the packet and what to check, at most one per (netns, reason,
//! location, destination port) per tick, and counts every drop in
//! `sonde_plugin_drops_explained_total{namespace,pod,rule_class}`. The advice table is in
//! [`explain`], the aggregation in [`aggregate`]; this file is the glue to the host.

mod aggregate;
mod explain;

use std::collections::HashMap;

use serde::Deserialize;
use sonde_plugin::{Config, Counter, Error, Event, PacketDrop, Plugin, Series, Workload};

use aggregate::{Aggregator, Explanation};
use explain::RuleClass;

/// Distinct (netns, reason, location, port) keys held between ticks.
const MAX_PENDING: usize = 10_000;

/// `spec.config` of the manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct Settings {
    /// Explanations emitted per tick at most (the busiest keys first).
    max_events_per_tick: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_events_per_tick: 100,
        }
    }
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.max_events_per_tick == 0 {
            return Err("config.maxEventsPerTick: must be at least 1".into());
        }
        Ok(s)
    }
}

struct DropExplainer {
    settings: Settings,
    drops: Aggregator,
    explained: Counter,
    series: HashMap<(Option<Workload>, RuleClass), Series<Counter>>,
    /// The first failed host call since the last tick, logged there.
    failure: Option<Error>,
}

impl Plugin for DropExplainer {
    fn init(config: Config) -> Result<Self, String> {
        let settings = Settings::from_config(&config)?;
        let explained = Counter::register(
            "sonde_plugin_drops_explained_total",
            "Packet drops the drop-explainer plugin classified, by pod and rule class.",
            &["namespace", "pod", "rule_class"],
        )?;
        Ok(DropExplainer {
            settings,
            drops: Aggregator::new(MAX_PENDING),
            explained,
            series: HashMap::new(),
            failure: None,
        })
    }

    fn on_packet_drop(&mut self, batch: &[PacketDrop<'_>]) {
        for d in batch {
            self.drops.add(d);
        }
        for c in self.drops.take_counts() {
            if let Err(e) = self.count(c.workload, c.rule_class, c.count) {
                self.failure.get_or_insert(e);
            }
        }
    }

    fn tick(&mut self, _now_ns: u64) {
        let mut explanations = self
            .drops
            .take_explanations(self.settings.max_events_per_tick)
            .into_iter();
        while let Some(e) = explanations.next() {
            if let Err(err) = event(&e).emit() {
                // Over the events limit (or not granted): keep the drops for the next tick.
                self.drops.put_back(e);
                explanations.for_each(|e| self.drops.put_back(e));
                self.failure.get_or_insert(err);
                break;
            }
        }
        let overflow = self.drops.take_overflow();
        if overflow > 0 {
            sonde_plugin::warn!(
                "{overflow} drops not explained: more than {MAX_PENDING} distinct (netns, reason, \
                 location, port) in one tick"
            );
        }
        if let Some(e) = self.failure.take() {
            sonde_plugin::warn!("{e}");
        }
    }
}

impl DropExplainer {
    fn count(
        &mut self,
        workload: Option<Workload>,
        class: RuleClass,
        n: u64,
    ) -> sonde_plugin::Result<()> {
        let key = (workload, class);
        let series = match self.series.get(&key) {
            Some(s) => *s,
            None => {
                let (ns, pod) = key.0.as_ref().map_or(("", ""), |w| (&w.namespace, &w.pod));
                let s = self.explained.series(&[ns, pod, class.as_str()])?;
                self.series.insert(key, s);
                s
            }
        };
        series.add(n as f64)
    }
}

/// The `drop_explained` event of an explanation.
fn event(e: &Explanation) -> Event {
    let mut event = Event::new("drop_explained")
        .netns(e.netns)
        .workload(e.workload.clone())
        .message(format!(
            "{} packet{} dropped ({} at {}): {}",
            e.count,
            if e.count == 1 { "" } else { "s" },
            e.reason,
            e.location,
            e.advice
        ))
        .field("reason", &e.reason)
        .field("location", &e.location)
        .field("advice", &e.advice)
        .field("rule_class", e.rule_class.as_str())
        .field("count", e.count)
        .field("protocol", &e.flow.protocol)
        .field("sport", e.flow.sport)
        .field("dport", e.flow.dport);
    if let Some(saddr) = e.flow.saddr {
        event = event.field("saddr", saddr.to_string());
    }
    if let Some(daddr) = e.flow.daddr {
        event = event.field("daddr", daddr.to_string());
    }
    if let Some(peer) = &e.flow.peer {
        event = event
            .field("peer_namespace", &peer.namespace)
            .field("peer_pod", &peer.pod);
    }
    event
}

sonde_plugin::export!(DropExplainer);

#[cfg(test)]
mod tests {
    use sonde_plugin::{OwnedFlow, Severity, Value};

    use super::*;

    #[test]
    fn settings_default_and_validate() {
        assert_eq!(
            Settings::from_config(&Config::new("{}"))
                .unwrap()
                .max_events_per_tick,
            100
        );
        let e = Settings::from_config(&Config::new(r#"{"maxEventsPerTick": 0}"#)).unwrap_err();
        assert!(e.contains("config.maxEventsPerTick"), "{e}");
        let e = Settings::from_config(&Config::new(r#"{"maxEvents": 5}"#)).unwrap_err();
        assert!(e.contains("unknown field `maxEvents`"), "{e}");
    }

    #[test]
    fn event_carries_the_flow_and_the_advice() {
        let e = Explanation {
            netns: 7,
            workload: Some(Workload::new("shop", "web-1")),
            reason: "NO_SOCKET".into(),
            location: "__udp4_lib_rcv".into(),
            rule_class: RuleClass::Socket,
            advice: "nothing listens on udp port 9000 in this pod".into(),
            count: 12,
            flow: OwnedFlow {
                protocol: "udp".into(),
                saddr: Some("198.18.0.1".parse().unwrap()),
                sport: 40000,
                daddr: None,
                dport: 9000,
                peer: Some(Workload::new("shop", "client")),
            },
        };
        let ev = event(&e);
        let r = ev.record();
        assert_eq!(
            (r.kind.as_str(), r.severity, r.netns),
            ("drop_explained", Severity::Info, Some(7))
        );
        let text = |k: &str| match ev.get(k) {
            Some(Value::Text(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text("reason"), "NO_SOCKET");
        assert_eq!(text("rule_class"), "socket");
        assert_eq!(text("advice"), e.advice);
        assert_eq!(text("saddr"), "198.18.0.1");
        assert_eq!(text("peer_pod"), "client");
        assert_eq!(ev.get("count"), Some(&Value::Integer(12)));
        assert_eq!(ev.get("dport"), Some(&Value::Integer(9000)));
        assert_eq!(ev.get("daddr"), None);
    }
}
