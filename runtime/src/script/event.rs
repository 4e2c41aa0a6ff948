//! Events as scripts see them: a rhai object map with the fields of the JSON event (DESIGN.md
//! section 6), built directly from the typed event. Fields an event does not have are absent,
//! so reading them gives `()`.
//!
//! Strings that repeat from event to event (pods, reasons, addresses, stacks) are converted
//! once and shared, so an event costs a map and a handful of reference counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use rhai::{Array, Dynamic, ImmutableString, Map};

use crate::event::{Event, Flow, Kind};

/// Distinct strings (or addresses, or stacks) kept before the cache starts over.
const CACHE_LIMIT: usize = 16_384;

/// Converts events to script maps, caching the strings they repeat.
#[derive(Default)]
pub struct EventConverter {
    strings: HashMap<Box<str>, ImmutableString>,
    addrs: HashMap<IpAddr, ImmutableString>,
    /// Stacks by the address of their shared frames (the collector shares one per stack id);
    /// the `Arc` keeps that address from being reused while cached.
    stacks: HashMap<usize, (Arc<[Arc<str>]>, Array)>,
}

impl EventConverter {
    pub fn new() -> Self {
        Self::default()
    }

    fn string(&mut self, s: &str) -> Dynamic {
        if let Some(v) = self.strings.get(s) {
            return Dynamic::from(v.clone());
        }
        if self.strings.len() >= CACHE_LIMIT {
            self.strings.clear();
        }
        let v = ImmutableString::from(s);
        self.strings.insert(s.into(), v.clone());
        Dynamic::from(v)
    }

    fn addr(&mut self, ip: Option<IpAddr>) -> Dynamic {
        let Some(ip) = ip else {
            return Dynamic::UNIT;
        };
        if let Some(v) = self.addrs.get(&ip) {
            return Dynamic::from(v.clone());
        }
        if self.addrs.len() >= CACHE_LIMIT {
            self.addrs.clear();
        }
        let v = ImmutableString::from(ip.to_string());
        self.addrs.insert(ip, v.clone());
        Dynamic::from(v)
    }

    fn stack(&mut self, frames: &Arc<[Arc<str>]>) -> Dynamic {
        let id = Arc::as_ptr(frames) as *const () as usize;
        if let Some((_, array)) = self.stacks.get(&id) {
            return Dynamic::from_array(array.clone());
        }
        if self.stacks.len() >= CACHE_LIMIT {
            self.stacks.clear();
        }
        let array: Array = frames.iter().map(|f| self.string(f)).collect();
        self.stacks.insert(id, (Arc::clone(frames), array.clone()));
        Dynamic::from_array(array)
    }

    fn flow(&mut self, m: &mut Map, flow: &Flow) {
        m.insert("protocol".into(), self.string(&flow.protocol));
        m.insert("saddr".into(), self.addr(flow.saddr));
        m.insert("sport".into(), Dynamic::from_int(flow.sport.into()));
        m.insert("daddr".into(), self.addr(flow.daddr));
        m.insert("dport".into(), Dynamic::from_int(flow.dport.into()));
    }

    /// The event as a script map.
    pub fn convert(&mut self, e: &Event) -> Map {
        let mut m = Map::new();
        m.insert(
            "time".into(),
            Dynamic::from(crate::timefmt::rfc3339(e.time)),
        );
        m.insert("node".into(), self.string(&e.node));
        m.insert("type".into(), self.string(e.kind.type_name()));
        m.insert("severity".into(), self.string(e.severity.as_str()));
        let (namespace, pod) = match &e.workload {
            Some(w) => (&*w.namespace, &*w.pod),
            None => ("", ""),
        };
        m.insert("namespace".into(), self.string(namespace));
        m.insert("pod".into(), self.string(pod));
        if let Some(labels) = &e.labels {
            let labels: Map = labels
                .iter()
                .map(|(k, v)| (k.as_str().into(), self.string(v)))
                .collect();
            m.insert("labels".into(), Dynamic::from_map(labels));
        }
        m.insert("netns".into(), Dynamic::from_int(e.netns.into()));
        let source = match &e.source {
            crate::event::Source::Kernel => "kernel",
            crate::event::Source::Plugin(tag) => tag,
        };
        m.insert("source".into(), self.string(source));
        match &e.kind {
            Kind::PacketDrop(d) => {
                self.flow(&mut m, &d.flow);
                m.insert("reason".into(), self.string(&d.reason));
                m.insert("location".into(), self.string(&d.location));
                if let Some(stack) = &d.stack {
                    m.insert("stack".into(), self.stack(stack));
                }
            }
            Kind::TcpRetrans(r) => {
                self.flow(&mut m, &r.flow);
                m.insert("state".into(), self.string(r.state));
            }
            Kind::TcpReset(r) => {
                self.flow(&mut m, &r.flow);
                m.insert("direction".into(), self.string(r.direction));
                if let Some(state) = r.state {
                    m.insert("state".into(), self.string(state));
                }
            }
            Kind::Derived(d) => {
                for (key, value) in &d.fields {
                    m.insert(key.as_str().into(), json_value(value));
                }
            }
        }
        if let Some(message) = &e.message {
            m.insert("message".into(), Dynamic::from(message.clone()));
        }
        m
    }
}

/// A JSON value (a plugin-derived event's field) as a script value.
fn json_value(v: &serde_json::Value) -> Dynamic {
    use serde_json::Value as J;
    match v {
        J::Null => Dynamic::UNIT,
        J::Bool(b) => Dynamic::from_bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Dynamic::from(s.clone()),
        J::Array(items) => Dynamic::from_array(items.iter().map(json_value).collect()),
        J::Object(fields) => Dynamic::from_map(
            fields
                .iter()
                .map(|(k, v)| (k.as_str().into(), json_value(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{PacketDrop, Severity, TcpReset};
    use crate::topology::Workload;
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn drop_event(pod: &str, reason: &str, sport: u16, dport: u16) -> Event {
        let mut e = Event::kernel(
            UNIX_EPOCH + Duration::from_secs(1),
            4026532000,
            Severity::Warning,
            Kind::PacketDrop(PacketDrop {
                flow: Flow {
                    protocol: "udp".into(),
                    saddr: Some("198.18.0.1".parse().unwrap()),
                    sport,
                    daddr: Some("198.18.0.2".parse().unwrap()),
                    dport,
                },
                reason: Arc::from(reason),
                location: Arc::from("nft_do_chain"),
                stack: Some(Arc::from(vec![
                    Arc::from("nft_do_chain+0x3e8"),
                    Arc::from("nf_hook_slow+0x43"),
                ])),
            }),
        );
        e.node = Arc::from("node-1");
        e.workload = Some(Workload {
            namespace: Arc::from(""),
            pod: Arc::from(pod),
        });
        e
    }

    /// Every field of the JSON form is in the map, with the same value.
    #[test]
    fn same_fields_as_json() {
        let mut c = EventConverter::new();
        let mut reset = Event::kernel(
            UNIX_EPOCH,
            7,
            Severity::Info,
            Kind::TcpReset(TcpReset {
                flow: Flow {
                    protocol: "tcp".into(),
                    saddr: None,
                    sport: 1,
                    daddr: Some("::1".parse().unwrap()),
                    dport: 2,
                },
                direction: "sent",
                state: None,
            }),
        );
        reset.message = Some("hello".into());
        for e in [drop_event("b", "NETFILTER_DROP", 5000, 9999), reset] {
            let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
            let map = c.convert(&e);
            let json = json.as_object().unwrap();
            assert_eq!(map.len(), json.len(), "{map:?} vs {json:?}");
            for (k, v) in json {
                let got = map
                    .get(k.as_str())
                    .unwrap_or_else(|| panic!("no field {k}"));
                assert_eq!(json_value(v).to_string(), got.to_string(), "field {k}");
            }
        }
        // Cached strings come back equal.
        let again = c.convert(&drop_event("b", "NETFILTER_DROP", 1, 2));
        assert_eq!(again["pod"].to_string(), "b");
        assert_eq!(again["stack"].clone().into_array().unwrap().len(), 2);
    }
}

#[cfg(test)]
pub(crate) use tests::drop_event;
