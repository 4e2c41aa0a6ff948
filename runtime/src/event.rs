//! The events Sonde emits: one decoded type per probe, wrapped in the common envelope that
//! every consumer sees (the contract is in README.md, "What you see" and the Probes table),
//! and their one-line JSON form.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ebpf_core::Tuple;
use serde::ser::{Serialize, SerializeMap, Serializer};

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

/// `packet_drop`: a packet the kernel dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketDrop {
    pub flow: Flow,
    pub reason: Arc<str>,
    pub location: Arc<str>,
    /// Kernel stack, innermost frame first, when stacks are enabled.
    pub stack: Option<Arc<[Arc<str>]>>,
}

/// `tcp_retrans`: a TCP segment retransmitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRetrans {
    pub flow: Flow,
    pub state: &'static str,
}

/// `tcp_reset`: a TCP reset sent or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpReset {
    pub flow: Flow,
    pub direction: &'static str,
    /// State of the socket involved; `None` when the reset answers a packet no socket owns.
    pub state: Option<&'static str>,
}

/// `tcp_connect`: a TCP handshake that was slow or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConnect {
    /// Local end as source.
    pub flow: Flow,
    /// `connect` (this socket connected) or `accept` (a listener accepted it).
    pub side: &'static str,
    /// Why it failed (`refused`, `timeout`, `other`); `None` for a slow handshake that succeeded.
    pub cause: Option<&'static str>,
    /// How long the handshake took, or ran before failing; `None` when the probe attached
    /// after it started.
    pub duration: Option<std::time::Duration>,
    /// SYN (connect) or SYN-ACK (accept) retransmissions.
    pub retransmits: u8,
    /// The socket's error when it closed (`ECONNREFUSED`, `ETIMEDOUT`...), if any.
    pub error: Option<Cow<'static, str>>,
}

/// `dns`: a query that got no response within the probe's timeout, or a pod's SERVFAIL or
/// NXDOMAIN responses above the probe's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Dns {
    /// Client end as source, server as destination.
    pub flow: Flow,
    /// `timeout`, `servfail` or `nxdomain`.
    pub outcome: &'static str,
    /// The DNS id of the query that timed out.
    pub id: Option<u16>,
    /// How long the query waited (timeouts).
    pub duration: Option<std::time::Duration>,
    /// Responses of that rcode since the last report, and their rate per second (rates).
    pub count: Option<u64>,
    pub rate: Option<f64>,
}

impl Dns {
    /// The fields of its own, after the flow's: for JSON and scripts alike.
    pub fn fields(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut f = vec![("outcome", self.outcome.into())];
        if let Some(id) = self.id {
            f.push(("id", id.into()));
        }
        if let Some(d) = self.duration {
            f.push(("duration_seconds", d.as_secs_f64().into()));
        }
        if let Some(c) = self.count {
            f.push(("count", c.into()));
        }
        if let Some(r) = self.rate {
            f.push(("rate_per_second", r.into()));
        }
        f
    }
}

/// `softirq`: a NET_RX or NET_TX softirq that waited to run, or ran, at least its threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Softirq {
    /// `NET_RX` or `NET_TX`.
    pub vec: &'static str,
    /// `delay` (raised until it ran) or `run` (how long it ran).
    pub stage: &'static str,
    pub duration: std::time::Duration,
    pub cpu: u32,
}

/// `netdev_latency`: a packet that spent at least its threshold in an interface's qdisc or
/// driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevLatency {
    pub interface: String,
    pub ifindex: u32,
    /// `queue` (net_dev_queue to start_xmit: the qdisc) or `xmit` (in the driver).
    pub stage: &'static str,
    pub duration: std::time::Duration,
    /// Bytes of the packet.
    pub bytes: u32,
}

/// `io_latency`: a block request that took at least the slow threshold to complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoLatency {
    /// The disk's name (`vda`, `loop3`), or `major:minor` when it has none.
    pub device: String,
    /// `major:minor`.
    pub dev: String,
    /// `read`, `write` or `other`.
    pub op: &'static str,
    pub duration: std::time::Duration,
    pub bytes: u32,
    pub sector: u64,
    /// The completion's block status (blk_status_t), `None` when it succeeded.
    pub error: Option<i32>,
}

/// The JSON fields of the events without a flow (softirq, netdev_latency, io_latency), in
/// the order the JSON event has them after the envelope: one list for the sinks and scripts.
pub type Fields = Vec<(&'static str, serde_json::Value)>;

impl Softirq {
    pub fn fields(&self) -> Fields {
        vec![
            ("vec", self.vec.into()),
            ("stage", self.stage.into()),
            ("duration_seconds", self.duration.as_secs_f64().into()),
            ("cpu", self.cpu.into()),
        ]
    }
}

impl NetdevLatency {
    pub fn fields(&self) -> Fields {
        vec![
            ("interface", self.interface.clone().into()),
            ("ifindex", self.ifindex.into()),
            ("stage", self.stage.into()),
            ("duration_seconds", self.duration.as_secs_f64().into()),
            ("bytes", self.bytes.into()),
        ]
    }
}

impl IoLatency {
    pub fn fields(&self) -> Fields {
        let mut fields = vec![
            ("device", self.device.clone().into()),
            ("dev", self.dev.clone().into()),
            ("op", self.op.into()),
            ("duration_seconds", self.duration.as_secs_f64().into()),
            ("bytes", self.bytes.into()),
            ("sector", self.sector.into()),
        ];
        if let Some(error) = self.error {
            fields.push(("error", error.into()));
        }
        fields
    }
}

/// An event a plugin derived: its own type name and fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub type_name: String,
    pub fields: Vec<(String, serde_json::Value)>,
}

/// The type-specific part of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    PacketDrop(PacketDrop),
    TcpRetrans(TcpRetrans),
    TcpReset(TcpReset),
    TcpConnect(TcpConnect),
    Softirq(Softirq),
    NetdevLatency(NetdevLatency),
    IoLatency(IoLatency),
    Dns(Dns),
    Derived(Derived),
}

impl Kind {
    /// The `type` field: the probe's name, or the plugin's event type.
    pub fn type_name(&self) -> &str {
        match self {
            Kind::PacketDrop(_) => "packet_drop",
            Kind::TcpRetrans(_) => "tcp_retrans",
            Kind::TcpReset(_) => "tcp_reset",
            Kind::TcpConnect(_) => "tcp_connect",
            Kind::Softirq(_) => "softirq",
            Kind::NetdevLatency(_) => "netdev_latency",
            Kind::IoLatency(_) => "io_latency",
            Kind::Dns(_) => "dns",
            Kind::Derived(d) => &d.type_name,
        }
    }

    pub fn flow(&self) -> Option<&Flow> {
        match self {
            Kind::PacketDrop(e) => Some(&e.flow),
            Kind::TcpRetrans(e) => Some(&e.flow),
            Kind::TcpReset(e) => Some(&e.flow),
            Kind::TcpConnect(e) => Some(&e.flow),
            Kind::Dns(e) => Some(&e.flow),
            Kind::Softirq(_) | Kind::NetdevLatency(_) | Kind::IoLatency(_) | Kind::Derived(_) => {
                None
            }
        }
    }

    /// The fields of a kernel event without a flow, `None` for the others.
    pub fn fields(&self) -> Option<Fields> {
        match self {
            Kind::Softirq(e) => Some(e.fields()),
            Kind::NetdevLatency(e) => Some(e.fields()),
            Kind::IoLatency(e) => Some(e.fields()),
            _ => None,
        }
    }
}

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
    map.serialize_entry("saddr", &flow.saddr)?;
    map.serialize_entry("sport", &flow.sport)?;
    map.serialize_entry("daddr", &flow.daddr)?;
    map.serialize_entry("dport", &flow.dport)?;
    if let Some(peer) = peer {
        map.serialize_entry("peer_namespace", &*peer.namespace)?;
        map.serialize_entry("peer_pod", &*peer.pod)?;
    }
    Ok(())
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("time", &crate::timefmt::rfc3339(self.time))?;
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
        match &self.kind {
            Kind::PacketDrop(e) => {
                serialize_flow(&mut map, &e.flow, self.peer.as_ref())?;
                map.serialize_entry("reason", &*e.reason)?;
                map.serialize_entry("location", &*e.location)?;
                if let Some(stack) = &e.stack {
                    let frames: Vec<&str> = stack.iter().map(|f| &**f).collect();
                    map.serialize_entry("stack", &frames)?;
                }
            }
            Kind::TcpRetrans(e) => {
                serialize_flow(&mut map, &e.flow, self.peer.as_ref())?;
                map.serialize_entry("state", e.state)?;
            }
            Kind::TcpReset(e) => {
                serialize_flow(&mut map, &e.flow, self.peer.as_ref())?;
                map.serialize_entry("direction", e.direction)?;
                if let Some(state) = e.state {
                    map.serialize_entry("state", state)?;
                }
            }
            Kind::TcpConnect(e) => {
                serialize_flow(&mut map, &e.flow, self.peer.as_ref())?;
                map.serialize_entry("side", e.side)?;
                if let Some(cause) = e.cause {
                    map.serialize_entry("cause", cause)?;
                }
                if let Some(d) = e.duration {
                    map.serialize_entry("duration_seconds", &d.as_secs_f64())?;
                }
                map.serialize_entry("retransmits", &e.retransmits)?;
                if let Some(error) = &e.error {
                    map.serialize_entry("error", error)?;
                }
            }
            Kind::Softirq(_) | Kind::NetdevLatency(_) | Kind::IoLatency(_) => {
                for (key, value) in self.kind.fields().unwrap_or_default() {
                    map.serialize_entry(key, &value)?;
                }
            }
            Kind::Dns(e) => {
                serialize_flow(&mut map, &e.flow, self.peer.as_ref())?;
                for (key, value) in e.fields() {
                    map.serialize_entry(key, &value)?;
                }
            }
            Kind::Derived(d) => {
                for (key, value) in &d.fields {
                    map.serialize_entry(key, value)?;
                }
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
    use std::time::{Duration, UNIX_EPOCH};

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
