//! Events as scripts see them: a rhai object map with the fields of the JSON event (README.md,
//! "What you see" and the Probes table), built directly from the typed event. Fields an event does not have are absent,
//! so reading them gives `()`.
//!
//! Strings that repeat from event to event (pods, reasons, addresses, stacks) are converted
//! once and shared, so an event costs a map and a handful of reference counts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rhai::{Array, Dynamic, ImmutableString, Map};

use crate::addr_hash::AddrMap;
use crate::event::{Event, Kind, Source};
use crate::schema::{FieldSpec, Value, Visit};

/// Distinct strings (or addresses, or stacks) kept before a cache starts over.
const CACHE_LIMIT: usize = 16_384;

use crate::schema::Stack;

/// The time field, with the date and time of day formatted once per second.
#[derive(Default)]
struct TimeText {
    second: u64,
    prefix: String,
}

impl TimeText {
    fn format(&mut self, t: SystemTime) -> Dynamic {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        if d.as_secs() != self.second || self.prefix.is_empty() {
            let whole = crate::timefmt::rfc3339(UNIX_EPOCH + Duration::from_secs(d.as_secs()));
            // "2026-11-25T14:03:07.000000Z" without "000000Z".
            self.prefix = whole[..whole.len() - 7].to_string();
            self.second = d.as_secs();
        }
        let mut s = String::with_capacity(self.prefix.len() + 7);
        s.push_str(&self.prefix);
        let _ = write!(s, "{:06}Z", d.subsec_micros());
        Dynamic::from(s)
    }
}

/// Converts events to script maps, caching the strings they repeat.
#[derive(Default)]
pub struct EventConverter {
    /// Shared strings (pods, reasons, locations) by address; the `Arc` keeps the address from
    /// being reused while cached.
    shared: AddrMap<(usize, usize), (Arc<str>, ImmutableString)>,
    /// Static strings (types, states, protocols) by address.
    statics: AddrMap<(usize, usize), ImmutableString>,
    /// Other strings, by content.
    strings: HashMap<Box<str>, ImmutableString>,
    addrs: AddrMap<IpAddr, ImmutableString>,
    /// Stacks by the address of their frames (the collector shares one per stack id).
    stacks: AddrMap<usize, (Stack, Array)>,
    time: TimeText,
    /// The fields of the event being converted, in key order.
    fields: Vec<(&'static str, Dynamic)>,
    /// An empty map for each set of fields seen: cloning one and filling in its values is
    /// cheaper than building a map key by key.
    templates: Vec<(Vec<&'static str>, Map)>,
}

fn addr_of(s: &str) -> (usize, usize) {
    (s.as_ptr() as usize, s.len())
}

/// Empties a cache that has grown past its limit (a namespace churn, a port scan).
fn bound<K, V, S>(cache: &mut HashMap<K, V, S>) {
    if cache.len() >= CACHE_LIMIT {
        cache.clear();
    }
}

impl EventConverter {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn shared(&mut self, s: &Arc<str>) -> Dynamic {
        let key = addr_of(s);
        if let Some((_, v)) = self.shared.get(&key) {
            return Dynamic::from(v.clone());
        }
        bound(&mut self.shared);
        let v = ImmutableString::from(&**s);
        self.shared.insert(key, (Arc::clone(s), v.clone()));
        Dynamic::from(v)
    }

    pub(crate) fn static_str(&mut self, s: &'static str) -> Dynamic {
        let v = self
            .statics
            .entry(addr_of(s))
            .or_insert_with(|| ImmutableString::from(s));
        Dynamic::from(v.clone())
    }

    pub(crate) fn string(&mut self, s: &str) -> Dynamic {
        if let Some(v) = self.strings.get(s) {
            return Dynamic::from(v.clone());
        }
        bound(&mut self.strings);
        let v = ImmutableString::from(s);
        self.strings.insert(s.into(), v.clone());
        Dynamic::from(v)
    }

    // The variant matters: a static string is cached by its address, an owned one by content.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn cow(&mut self, s: &Cow<'static, str>) -> Dynamic {
        match s {
            Cow::Borrowed(s) => self.static_str(s),
            Cow::Owned(s) => self.string(s),
        }
    }

    fn addr(&mut self, ip: Option<IpAddr>) -> Dynamic {
        let Some(ip) = ip else {
            return Dynamic::UNIT;
        };
        if let Some(v) = self.addrs.get(&ip) {
            return Dynamic::from(v.clone());
        }
        bound(&mut self.addrs);
        let v = ImmutableString::from(ip.to_string());
        self.addrs.insert(ip, v.clone());
        Dynamic::from(v)
    }

    pub(crate) fn stack(&mut self, frames: &Stack) -> Dynamic {
        let id = Arc::as_ptr(frames) as *const () as usize;
        if let Some((_, array)) = self.stacks.get(&id) {
            return Dynamic::from_array(array.clone());
        }
        bound(&mut self.stacks);
        let array: Array = frames.iter().map(|f| self.shared(f)).collect();
        self.stacks.insert(id, (Arc::clone(frames), array.clone()));
        Dynamic::from_array(array)
    }

    /// A map with the keys of `fields` and unit values.
    fn template(&mut self, fields: &[(&'static str, Dynamic)]) -> Map {
        // The names are literals of `convert`: the same address each time, so compare that
        // first.
        let same = |keys: &[&str]| {
            keys.len() == fields.len()
                && keys
                    .iter()
                    .zip(fields)
                    .all(|(k, (f, _))| std::ptr::eq(*k, *f) || k == f)
        };
        if let Some((_, m)) = self.templates.iter().find(|(keys, _)| same(keys)) {
            return m.clone();
        }
        let keys: Vec<&'static str> = fields.iter().map(|(k, _)| *k).collect();
        let m: Map = keys.iter().map(|k| ((*k).into(), Dynamic::UNIT)).collect();
        if self.templates.len() >= 64 {
            self.templates.clear();
        }
        self.templates.push((keys, m.clone()));
        m
    }

    /// The event as a script map.
    pub fn convert(&mut self, e: &Event) -> Map {
        let mut f = std::mem::take(&mut self.fields);
        f.clear();
        if let Some(flow) = e.kind.flow() {
            f.push(("protocol", self.cow(&flow.protocol)));
            f.push(("saddr", self.addr(flow.saddr)));
            f.push(("sport", Dynamic::from_int(flow.sport.into())));
            f.push(("daddr", self.addr(flow.daddr)));
            f.push(("dport", Dynamic::from_int(flow.dport.into())));
            if let Some(peer) = &e.peer {
                f.push(("peer_namespace", self.shared(&peer.namespace)));
                f.push(("peer_pod", self.shared(&peer.pod)));
            }
        }
        if let Some(labels) = &e.labels {
            let labels: Map = labels
                .iter()
                .map(|(k, v)| (k.as_str().into(), self.string(v)))
                .collect();
            f.push(("labels", Dynamic::from_map(labels)));
        }
        if let Some(message) = &e.message {
            f.push(("message", Dynamic::from(message.clone())));
        }
        let (namespace, pod) = match &e.workload {
            Some(w) => (self.shared(&w.namespace), self.shared(&w.pod)),
            None => (self.static_str(""), self.static_str("")),
        };
        f.push(("namespace", namespace));
        f.push(("pod", pod));
        f.push(("netns", Dynamic::from_int(e.netns.into())));
        // Cookies count up from 1 as namespaces are made: far below i64::MAX.
        f.push(("netns_cookie", Dynamic::from_int(e.netns_cookie as i64)));
        f.push(("node", self.shared(&e.node)));
        f.push(("severity", self.static_str(e.severity.as_str())));
        let source = match &e.source {
            Source::Kernel => self.static_str("kernel"),
            Source::Plugin(tag) => self.string(tag),
        };
        f.push(("source", source));
        f.push(("time", self.time.format(e.time)));
        f.push(("type", self.string(e.kind.type_name())));
        // The probe's own fields, as its declaration gives them.
        let mut fields = ScriptFields {
            converter: self,
            fields: &mut f,
        };
        e.kind.visit(&mut fields);
        // In key order, so that the map is filled in without searching.
        f.sort_unstable_by_key(|(k, _)| *k);
        let mut m = self.template(&f);
        for (slot, (_, v)) in m.values_mut().zip(f.drain(..)) {
            *slot = v;
        }
        // A derived event's own fields, which may be named anything.
        if let Kind::Derived(d) = &e.kind {
            for (key, value) in &d.fields {
                m.insert(key.as_str().into(), json_value(value));
            }
        }
        self.fields = f;
        m
    }
}

/// Adds a probe event's own fields to the map being built (none that are none).
struct ScriptFields<'a> {
    converter: &'a mut EventConverter,
    fields: &'a mut Vec<(&'static str, Dynamic)>,
}

impl Visit for ScriptFields<'_> {
    fn field<V: Value>(&mut self, spec: &FieldSpec, value: &V) {
        if let Some(v) = value.script(self.converter) {
            self.fields.push((spec.json, v));
        }
    }
}

/// A JSON value (a plugin-derived event's field, an event from an agent's stream) as a
/// script value.
pub fn json_value(v: &serde_json::Value) -> Dynamic {
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

/// A packet_drop event for tests, enriched with `pod`.
#[cfg(test)]
pub(crate) fn drop_event(pod: &str, reason: &str, sport: u16, dport: u16) -> Event {
    use crate::event::{Flow, Severity};
    use crate::topology::Workload;
    let mut e = Event::kernel(
        UNIX_EPOCH + Duration::from_secs(1),
        4026532000,
        Severity::Warning,
        Kind::PacketDrop(crate::probes::packet_drop::PacketDrop {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Flow, Severity};
    use crate::probes::tcp_reset::TcpReset;
    use crate::probes::tcp_retrans::TcpRetrans;

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
        reset.labels = Some(Arc::from(vec![("app".to_string(), "web".to_string())]));
        let retrans = Event::kernel(
            UNIX_EPOCH + Duration::from_micros(1_795_615_387_123_456),
            7,
            Severity::Info,
            Kind::TcpRetrans(TcpRetrans {
                flow: Flow {
                    protocol: "tcp".into(),
                    saddr: Some("10.0.0.1".parse().unwrap()),
                    sport: 1,
                    daddr: Some("10.0.0.2".parse().unwrap()),
                    dport: 2,
                },
                state: "ESTABLISHED",
            }),
        );
        let connect = |cause: Option<&'static str>, error: Option<&'static str>| {
            Event::kernel(
                SystemTime::UNIX_EPOCH,
                7,
                Severity::Warning,
                Kind::TcpConnect(crate::probes::tcp_connect::TcpConnect {
                    flow: Flow {
                        protocol: "tcp".into(),
                        saddr: Some("10.0.0.1".parse().unwrap()),
                        sport: 40000,
                        daddr: Some("10.0.0.2".parse().unwrap()),
                        dport: 80,
                    },
                    side: "connect",
                    cause,
                    duration: Some(std::time::Duration::from_millis(250)),
                    retransmits: 1,
                    error: error.map(Into::into),
                }),
            )
        };
        for e in [
            drop_event("b", "NETFILTER_DROP", 5000, 9999),
            reset,
            retrans,
            connect(Some("refused"), Some("ECONNREFUSED")),
            connect(None, None),
        ] {
            let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
            let map = c.convert(&e);
            let json = json.as_object().unwrap();
            assert_eq!(map.len(), json.len(), "{map:?} vs {json:?}");
            for (k, v) in json {
                let got = map
                    .get(k.as_str())
                    .unwrap_or_else(|| panic!("no field {k}"));
                assert_eq!(json_value(v).to_string(), got.to_string(), "field {k}");
                assert_eq!(json_value(v).type_name(), got.type_name(), "field {k}");
            }
        }
        // Cached strings come back equal.
        let again = c.convert(&drop_event("b", "NETFILTER_DROP", 1, 2));
        assert_eq!(again["pod"].to_string(), "b");
        assert_eq!(again["stack"].clone().into_array().unwrap().len(), 2);
    }
}
