//! The events Sonde emits: one decoded type per probe, wrapped in the common envelope that
//! every consumer sees (the contract is in README.md, "What you see" and the Probes table),
//! and their one-line JSON form.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ebpf_core::Tuple;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::schema::{FieldSpec, Value, Visit};
use crate::topology::{Netns, Workload};

/// A batch of enriched events, shared by every consumer of the fan-out.
pub type Batch = Arc<Vec<Event>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Where an event came from: `kernel`, `plugin:<name>` (later `script:<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Kernel,
    /// `plugin:<name>`, kept whole so that serialising costs no allocation.
    Plugin(Arc<str>),
}

impl Source {
    fn as_str(&self) -> &str {
        match self {
            Source::Kernel => "kernel",
            Source::Plugin(tag) => tag,
        }
    }
}

/// A packet or connection 5-tuple in user terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub protocol: Cow<'static, str>,
    pub saddr: Option<IpAddr>,
    pub sport: u16,
    pub daddr: Option<IpAddr>,
    pub dport: u16,
}

impl From<&Tuple> for Flow {
    fn from(t: &Tuple) -> Self {
        Flow {
            protocol: t.protocol_name(),
            saddr: t.src(),
            sport: t.sport,
            daddr: t.dst(),
            dport: t.dport,
        }
    }
}

/// An event a plugin derived: its own type name and fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub type_name: String,
    pub fields: Vec<(String, serde_json::Value)>,
}

pub use crate::probes::Kind;

/// An event with its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: SystemTime,
    pub node: Arc<str>,
    pub severity: Severity,
    /// The network namespace's inode (0: none, or the host's for some probes).
    pub netns: u32,
    /// And its cookie, where the kernel gives one (0 otherwise): never reused, unlike the
    /// inode.
    pub netns_cookie: u64,
    pub workload: Option<Workload>,
    /// The other end of the event's flow, when a workload owns it (`peer_namespace`,
    /// `peer_pod`; see `probes::Context::enrich`).
    pub peer: Option<Workload>,
    /// Labels of the workload from enrichment plugins (the `labels` field), when any.
    pub labels: Option<Labels>,
    pub source: Source,
    pub message: Option<String>,
    pub kind: Kind,
}

/// A workload's labels, shared by all its events.
pub type Labels = Arc<[(String, String)]>;

impl Event {
    pub fn kernel(
        time: SystemTime,
        netns: impl Into<Netns>,
        severity: Severity,
        kind: Kind,
    ) -> Self {
        let netns = netns.into();
        Event {
            time,
            node: Arc::from(""),
            severity,
            netns: netns.inode,
            netns_cookie: netns.cookie,
            workload: None,
            peer: None,
            labels: None,
            source: Source::Kernel,
            message: None,
            kind,
        }
    }

    /// The event as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// TCP state names, numbered as in the kernel's `include/net/tcp_states.h` (a UAPI-stable
/// enum, unlike drop reasons).
pub fn tcp_state_name(state: u8) -> &'static str {
    const NAMES: [&str; 13] = [
        "UNKNOWN",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES.get(state as usize).copied().unwrap_or("UNKNOWN")
}

/// The name of an errno a socket reports when a connection fails, or its number.
pub fn errno_name(errno: i32) -> Cow<'static, str> {
    match errno {
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EPIPE => "EPIPE".into(),
        n => n.to_string().into(),
    }
}

/// The flow's fields, then its peer's when a workload owns the other end.
fn serialize_flow<M: SerializeMap>(
    map: &mut M,
    flow: &Flow,
    peer: Option<&Workload>,
) -> Result<(), M::Error> {
    map.serialize_entry("protocol", &flow.protocol)?;
    map.serialize_entry("saddr", &JsonIp(flow.saddr))?;
    map.serialize_entry("sport", &flow.sport)?;
    map.serialize_entry("daddr", &JsonIp(flow.daddr))?;
    map.serialize_entry("dport", &flow.dport)?;
    if let Some(peer) = peer {
        map.serialize_entry("peer_namespace", &*peer.namespace)?;
        map.serialize_entry("peer_pod", &*peer.pod)?;
    }
    Ok(())
}

/// An address as a JSON string, or null. Serde's own goes through `collect_str`, which escapes
/// each piece `Display` writes; this writes the address on the stack and hands it over once.
struct JsonIp(Option<IpAddr>);

impl Serialize for JsonIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::io::Write;
        // The longest form, an IPv4-mapped IPv6 address, has 45 characters.
        let mut buf = [0u8; 48];
        let n = match self.0 {
            None => return s.serialize_none(),
            // Dotted quads by hand: most events' addresses, and `Display` goes through
            // core::fmt's padding machinery for each octet.
            Some(IpAddr::V4(v4)) => {
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    if octet >= 100 {
                        buf[n] = b'0' + octet / 100;
                        n += 1;
                    }
                    if octet >= 10 {
                        buf[n] = b'0' + octet / 10 % 10;
                        n += 1;
                    }
                    buf[n] = b'0' + octet % 10;
                    n += 1;
                }
                n
            }
            Some(ip @ IpAddr::V6(_)) => {
                let mut rest = &mut buf[..];
                match write!(rest, "{ip}") {
                    Ok(()) => 48 - rest.len(),
                    Err(_) => return s.collect_str(&ip),
                }
            }
        };
        s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default())
    }
}

/// Writes a probe event's own fields to the JSON object, keeping the first error.
struct JsonFields<'a, M: SerializeMap> {
    map: &'a mut M,
    error: Option<M::Error>,
}

impl<M: SerializeMap> Visit for JsonFields<'_, M> {
    fn field<V: Value>(&mut self, spec: &FieldSpec, value: &V) {
        if self.error.is_none() {
            if let Err(e) = value.json(spec.json, self.map) {
                self.error = Some(e);
            }
        }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("time", crate::timefmt::Rfc3339::of(self.time).as_str())?;
        map.serialize_entry("node", &*self.node)?;
        map.serialize_entry("type", self.kind.type_name())?;
        map.serialize_entry("severity", self.severity.as_str())?;
        let (namespace, pod) = match &self.workload {
            Some(w) => (&*w.namespace, &*w.pod),
            None => ("", ""),
        };
        map.serialize_entry("namespace", namespace)?;
        map.serialize_entry("pod", pod)?;
        if let Some(labels) = &self.labels {
            let object: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            map.serialize_entry("labels", &object)?;
        }
        map.serialize_entry("netns", &self.netns)?;
        map.serialize_entry("netns_cookie", &self.netns_cookie)?;
        map.serialize_entry("source", self.source.as_str())?;
        if let Some(flow) = self.kind.flow() {
            serialize_flow(&mut map, flow, self.peer.as_ref())?;
        }
        let mut fields = JsonFields {
            map: &mut map,
            error: None,
        };
        self.kind.visit(&mut fields);
        if let Some(e) = fields.error {
            return Err(e);
        }
        if let Kind::Derived(d) = &self.kind {
            for (key, value) in &d.fields {
                map.serialize_entry(key, value)?;
            }
        }
        if let Some(m) = &self.message {
            map.serialize_entry("message", m)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::dns::Dns;
    use crate::probes::io_latency::IoLatency;
    use crate::probes::packet_drop::PacketDrop;
    use crate::probes::softirq::Softirq;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn addresses_are_written_as_serde_writes_them() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "1.20.3.40",
            "198.18.0.2",
            "::",
            "fd00:5d::1",
            "::ffff:198.18.0.2",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: Option<IpAddr> = Some(text.parse().unwrap());
            assert_eq!(
                serde_json::to_string(&JsonIp(ip)).unwrap(),
                serde_json::to_string(&ip).unwrap()
            );
        }
        assert_eq!(serde_json::to_string(&JsonIp(None)).unwrap(), "null");
    }

    #[test]
    fn json_has_envelope_then_type_fields() {
        let mut e = Event::kernel(
            UNIX_EPOCH + Duration::from_secs(1),
            4026532000,
            Severity::Warning,
            Kind::PacketDrop(PacketDrop {
                flow: Flow {
                    protocol: "udp".into(),
                    saddr: Some("198.18.0.1".parse().unwrap()),
                    sport: 5000,
                    daddr: Some("198.18.0.2".parse().unwrap()),
                    dport: 9999,
                },
                reason: Arc::from("NETFILTER_DROP"),
                location: Arc::from("nf_hook_slow"),
                stack: Some(Arc::from(vec![Arc::from("nf_hook_slow+0x3c")])),
            }),
        );
        e.node = Arc::from("node-1");
        e.workload = Some(Workload {
            namespace: Arc::from(""),
            pod: Arc::from("B"),
        });
        assert_eq!(
            e.to_json(),
            r#"{"time":"1970-01-01T00:00:01.000000Z","node":"node-1","type":"packet_drop","severity":"warning","namespace":"","pod":"B","netns":4026532000,"netns_cookie":0,"source":"kernel","protocol":"udp","saddr":"198.18.0.1","sport":5000,"daddr":"198.18.0.2","dport":9999,"reason":"NETFILTER_DROP","location":"nf_hook_slow","stack":["nf_hook_slow+0x3c"]}"#
        );
    }

    #[test]
    fn dns_timeout_json() {
        let mut e = Event::kernel(
            UNIX_EPOCH + Duration::from_secs(1),
            0,
            Severity::Warning,
            Kind::Dns(Dns {
                flow: Flow {
                    protocol: "udp".into(),
                    saddr: Some("100.64.0.1".parse().unwrap()),
                    sport: 40000,
                    daddr: Some("100.64.0.2".parse().unwrap()),
                    dport: 53,
                },
                outcome: "timeout",
                id: Some(7),
                duration: Some(Duration::from_millis(1500)),
                count: None,
                rate: None,
            }),
        );
        e.node = Arc::from("node-1");
        e.workload = Some(Workload {
            namespace: Arc::from(""),
            pod: Arc::from("client"),
        });
        assert_eq!(e.kind.type_name(), "dns");
        assert_eq!(
            e.to_json(),
            r#"{"time":"1970-01-01T00:00:01.000000Z","node":"node-1","type":"dns","severity":"warning","namespace":"","pod":"client","netns":0,"netns_cookie":0,"source":"kernel","protocol":"udp","saddr":"100.64.0.1","sport":40000,"daddr":"100.64.0.2","dport":53,"outcome":"timeout","id":7,"duration_seconds":1.5}"#
        );
    }

    #[test]
    fn latency_probe_events_have_their_fields_after_the_envelope() {
        let mut e = Event::kernel(
            UNIX_EPOCH + Duration::from_secs(1),
            0,
            Severity::Warning,
            Kind::IoLatency(IoLatency {
                device: "loop3".into(),
                dev: "7:3".into(),
                op: "write",
                duration: Duration::from_millis(1500),
                bytes: 4096,
                sector: 8,
                error: None,
            }),
        );
        e.node = Arc::from("node-1");
        assert_eq!(
            e.to_json(),
            r#"{"time":"1970-01-01T00:00:01.000000Z","node":"node-1","type":"io_latency","severity":"warning","namespace":"","pod":"","netns":0,"netns_cookie":0,"source":"kernel","device":"loop3","dev":"7:3","op":"write","duration_seconds":1.5,"bytes":4096,"sector":8}"#
        );
        let kind = Kind::Softirq(Softirq {
            vec: "NET_RX",
            stage: "delay",
            duration: Duration::from_micros(12_500),
            cpu: 1,
        });
        assert_eq!(kind.type_name(), "softirq");
        assert!(kind.flow().is_none());
    }

    #[test]
    fn tcp_states_by_number() {
        assert_eq!(tcp_state_name(1), "ESTABLISHED");
        assert_eq!(tcp_state_name(12), "NEW_SYN_RECV");
        assert_eq!(tcp_state_name(200), "UNKNOWN");
    }
}
