//! The Rust SDK reads the events the agent writes. The agent declares each probe's event once
//! (`probe_event!`, runtime/src/schema.rs) and the SDK its view of it (`view!`,
//! sdk/src/event.rs): their tables (WIT field, WIT type, packed offset and size, record size)
//! must agree, and an event the agent encodes, typed or packed, must decode in the SDK to what
//! the agent's JSON says. No kernel needed.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use sonde::event::{Event, Flow, Kind, Severity};
use sonde::plugin_host::delivery::{batches, Delivery, Symbols};
use sonde::plugin_host::sonde::plugin::types as host;
use sonde::probes::{
    dns, io_latency, netdev_latency, packet_drop, softirq, tcp_connect, tcp_reset, tcp_retrans,
    tcp_state, EventProbe,
};
use sonde::topology::Workload;
use sonde_plugin::bindings::sonde::plugin::types as guest;

/// One field as both sides describe it: WIT name, WIT type, packed offset and size.
type Row = (&'static str, &'static str, usize, usize);

fn agent_rows(probe: EventProbe) -> Vec<Row> {
    probe
        .fields()
        .iter()
        .map(|f| (f.wit, f.wit_type, f.offset, f.size))
        .collect()
}

#[test]
fn sdk_schema_matches_the_agents_for_every_probe() {
    let mut drift = Vec::new();
    for &probe in EventProbe::ALL {
        let name = probe.name();
        let Some((fields, size)) = sonde_plugin::schema(name) else {
            drift.push(format!("{name}: the SDK has no view of it"));
            continue;
        };
        let sdk: Vec<Row> = fields
            .iter()
            .map(|f| (f.wit, f.wit_type, f.offset, f.size))
            .collect();
        let agent = agent_rows(probe);
        if sdk != agent {
            drift.push(format!(
                "{name}: fields differ\n    agent {agent:?}\n    sdk   {sdk:?}"
            ));
        }
        if size != probe.record_size() {
            drift.push(format!(
                "{name}: record size: agent {}, sdk {size}",
                probe.record_size()
            ));
        }
    }
    assert!(
        drift.is_empty(),
        "the SDK's views drifted from the agent's events:\n{}",
        drift.join("\n")
    );
}

#[test]
fn sdk_has_no_probe_the_agent_lacks() {
    let agent: Vec<&str> = EventProbe::ALL.iter().map(|p| p.name()).collect();
    let extra: Vec<&str> = sonde_plugin::schema_probes()
        .filter(|p| !agent.contains(p))
        .collect();
    assert!(
        extra.is_empty(),
        "the SDK has views of probes the agent does not have: {extra:?}"
    );
    let mut sdk: Vec<&str> = sonde_plugin::schema_probes().collect();
    sdk.sort_unstable();
    sdk.dedup();
    assert_eq!(
        sdk.len(),
        sonde_plugin::schema_probes().count(),
        "a probe twice"
    );
}

// ----- host (wasmtime-bindgen) batches to guest (wit-bindgen) batches -----

/// The same WIT value as the SDK's bindings type it: both sides are generated from
/// wit/plugin.wit, as plain Rust types with the same fields.
trait ToGuest<T> {
    fn to_guest(self) -> T;
}

macro_rules! same_type {
    ($($ty:ty),*) => {$(
        impl ToGuest<$ty> for $ty {
            fn to_guest(self) -> $ty {
                self
            }
        }
    )*};
}

same_type!(u8, u16, u32, u64, i32, i64, f64, bool, String);

impl<A: ToGuest<B>, B> ToGuest<Option<B>> for Option<A> {
    fn to_guest(self) -> Option<B> {
        self.map(ToGuest::to_guest)
    }
}

impl<A: ToGuest<B>, B> ToGuest<Vec<B>> for Vec<A> {
    fn to_guest(self) -> Vec<B> {
        self.into_iter().map(ToGuest::to_guest).collect()
    }
}

/// Records, field by field (a struct literal names them all: a field added to the WIT that
/// this list lacks does not compile).
macro_rules! records {
    ($($name:ident { $($field:ident),* })*) => {$(
        impl ToGuest<guest::$name> for host::$name {
            fn to_guest(self) -> guest::$name {
                guest::$name { $($field: self.$field.to_guest(),)* }
            }
        }
    )*};
}

records! {
    Symbols { strings, stacks }
    WorkloadRef { namespace, pod }
    Envelope { time_ns, netns, workload }
    Flow { protocol, saddr, sport, daddr, dport, peer }
    ExtraField { name, value }
    PacketDrop { envelope, flow, reason, location, stack, extra }
    TcpRetrans { envelope, flow, state, extra }
    TcpReset { envelope, flow, direction, state, extra }
    TcpConnect { envelope, flow, side, cause, duration_ns, retransmits, error, extra }
    Softirq { envelope, vec, stage, duration_ns, cpu, extra }
    NetdevLatency { envelope, interface, ifindex, stage, duration_ns, bytes, extra }
    IoLatency { envelope, device, dev, op, duration_ns, bytes, sector, error, extra }
    Dns { envelope, flow, outcome, id, duration_ns, count, rate, extra }
    TcpState { envelope, flow, state, duration_ns, bytes_sent, bytes_received, extra }
    PacketDropBatch { node, symbols, events }
    TcpRetransBatch { node, symbols, events }
    TcpResetBatch { node, symbols, events }
    TcpConnectBatch { node, symbols, events }
    SoftirqBatch { node, symbols, events }
    NetdevLatencyBatch { node, symbols, events }
    IoLatencyBatch { node, symbols, events }
    DnsBatch { node, symbols, events }
    TcpStateBatch { node, symbols, events }
    PackedBatch { probe, node, symbols, record_size, count, events }
}

impl ToGuest<guest::IpAddress> for host::IpAddress {
    fn to_guest(self) -> guest::IpAddress {
        match self {
            host::IpAddress::Ipv4(a) => guest::IpAddress::Ipv4(a),
            host::IpAddress::Ipv6(a) => guest::IpAddress::Ipv6(a),
        }
    }
}

impl ToGuest<guest::ExtraValue> for host::ExtraValue {
    fn to_guest(self) -> guest::ExtraValue {
        match self {
            host::ExtraValue::Text(v) => guest::ExtraValue::Text(v),
            host::ExtraValue::Integer(v) => guest::ExtraValue::Integer(v),
            host::ExtraValue::Number(v) => guest::ExtraValue::Number(v),
            host::ExtraValue::Boolean(v) => guest::ExtraValue::Boolean(v),
        }
    }
}

// ----- the events -----

const TIME_NS: u64 = 1_700_000_123_456_789_012;

fn workload(namespace: &str, pod: &str) -> Workload {
    Workload {
        namespace: Arc::from(namespace),
        pod: Arc::from(pod),
    }
}

fn flow(full: bool) -> Flow {
    if full {
        Flow {
            protocol: Cow::Borrowed("tcp"),
            saddr: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
            sport: 41_000,
            daddr: Some(IpAddr::V6(Ipv6Addr::new(
                0xfd00, 0, 0, 0, 0, 0, 0xbeef, 0x53,
            ))),
            dport: 8443,
        }
    } else {
        Flow {
            protocol: Cow::Borrowed("132"),
            saddr: None,
            sport: 0,
            daddr: None,
            dport: 0,
        }
    }
}

/// Two events of each probe: `full` with every field set (distinct values) and a workload
/// and peer, the other with every optional field none and no workload.
fn kinds(full: bool) -> Vec<Kind> {
    let ns = |n: u64| Some(Duration::from_nanos(n)).filter(|_| full);
    vec![
        Kind::PacketDrop(packet_drop::PacketDrop {
            flow: flow(full),
            reason: Arc::from(if full { "NETFILTER_DROP" } else { "NO_SOCKET" }),
            location: Arc::from("nf_hook_slow"),
            stack: full.then(|| {
                Arc::from(vec![
                    Arc::from("kfree_skb_reason+0x10"),
                    Arc::from("nf_hook_slow+0x4c"),
                ])
            }),
        }),
        Kind::TcpRetrans(tcp_retrans::TcpRetrans {
            flow: flow(full),
            state: if full { "SYN_SENT" } else { "ESTABLISHED" },
        }),
        Kind::TcpReset(tcp_reset::TcpReset {
            flow: flow(full),
            direction: "received",
            state: full.then_some("CLOSE_WAIT"),
        }),
        Kind::TcpConnect(tcp_connect::TcpConnect {
            flow: flow(full),
            side: "accept",
            cause: full.then_some("timeout"),
            duration: ns(1_234_567_891),
            retransmits: if full { 3 } else { 0 },
            error: full.then(|| Cow::Owned("ETIMEDOUT".to_string())),
        }),
        Kind::Softirq(softirq::Softirq {
            vec: "NET_TX",
            stage: if full { "run" } else { "delay" },
            duration: Duration::from_nanos(2_345_678),
            cpu: if full { 11 } else { 0 },
        }),
        Kind::NetdevLatency(netdev_latency::NetdevLatency {
            interface: "veth7f3a".to_string(),
            ifindex: 42,
            stage: "xmit",
            duration: Duration::from_nanos(3_456_789),
            bytes: 1514,
        }),
        Kind::IoLatency(io_latency::IoLatency {
            device: "nvme0n1".to_string(),
            dev: "259:0".to_string(),
            op: "write",
            duration: Duration::from_nanos(45_678_901),
            bytes: 65_536,
            sector: 0x1_2345_6789,
            error: full.then_some(-11),
        }),
        Kind::Dns(dns::Dns {
            flow: flow(full),
            outcome: if full { "timeout" } else { "nxdomain" },
            id: full.then_some(0xbeef),
            duration: ns(5_000_000_017),
            count: full.then_some(1 << 40),
            rate: full.then_some(12.75),
        }),
        Kind::TcpState(tcp_state::TcpState {
            flow: flow(full),
            state: if full { "FIN_WAIT2" } else { "SYN_SENT" },
            duration: ns(7_000_000_019),
            bytes_sent: 1 << 33,
            bytes_received: if full { 1_000_001 } else { 0 },
        }),
    ]
}

fn events() -> Vec<Event> {
    let mut events = Vec::new();
    for full in [true, false] {
        for (i, kind) in kinds(full).into_iter().enumerate() {
            let mut e = Event::kernel(
                UNIX_EPOCH + Duration::from_nanos(TIME_NS + i as u64),
                if full { 4_026_532_001 } else { 0 },
                Severity::Warning,
                kind,
            );
            e.node = Arc::from("node-7");
            if full {
                e.workload = Some(workload("shop", "web-0"));
                e.peer = Some(workload("payments", "db-1"));
            }
            events.push(e);
        }
    }
    events
}

// ----- comparing a view with the agent's JSON -----

/// A view field as the agent's JSON writes the event's field (`null`: absent).
trait AsJson {
    fn as_json(&self) -> Value;
}

impl AsJson for &str {
    fn as_json(&self) -> Value {
        Value::from(*self)
    }
}

impl<T: AsJson> AsJson for Option<T> {
    fn as_json(&self) -> Value {
        self.as_ref().map_or(Value::Null, AsJson::as_json)
    }
}

/// Seconds in JSON.
impl AsJson for Duration {
    fn as_json(&self) -> Value {
        Value::from(self.as_secs_f64())
    }
}

impl AsJson for sonde_plugin::Stack<'_> {
    fn as_json(&self) -> Value {
        if self.is_empty() {
            Value::Null
        } else {
            self.iter().collect::<Vec<_>>().into()
        }
    }
}

macro_rules! number_as_json {
    ($($ty:ty),*) => {$(
        impl AsJson for $ty {
            fn as_json(&self) -> Value {
                Value::from(*self)
            }
        }
    )*};
}

number_as_json!(u8, u16, u32, u64, i32, f64);

/// Equal, floats within rounding (seconds are written as floats and read back).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_f64() || b.is_f64() => {
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

fn check(what: &str, key: &str, sdk: Value, json: &Value) {
    let agent = json.get(key).unwrap_or(&Value::Null);
    assert!(
        same(&sdk, agent),
        "{what}: `{key}` is {agent} in the agent's JSON, {sdk} in the SDK's view"
    );
}

fn check_envelope(what: &str, e: &sonde_plugin::Envelope, json: &Value) {
    let time = sonde::timefmt::rfc3339(UNIX_EPOCH + Duration::from_nanos(e.time_ns));
    check(what, "time", time.into(), json);
    check(what, "node", e.node.into(), json);
    check(what, "netns", e.netns.into(), json);
    let (ns, pod) = e.workload.map_or(("", ""), |w| (w.namespace, w.pod));
    check(what, "namespace", ns.into(), json);
    check(what, "pod", pod.into(), json);
}

fn check_flow(what: &str, f: Option<&sonde_plugin::Flow>, json: &Value) {
    let Some(f) = f else {
        assert!(json.get("protocol").is_none(), "{what}: a flow in the JSON");
        return;
    };
    let addr = |a: Option<IpAddr>| a.map_or(Value::Null, |a| a.to_string().into());
    check(what, "protocol", f.protocol.into(), json);
    check(what, "saddr", addr(f.saddr), json);
    check(what, "sport", f.sport.into(), json);
    check(what, "daddr", addr(f.daddr), json);
    check(what, "dport", f.dport.into(), json);
    check(
        what,
        "peer_namespace",
        f.peer.map(|p| p.namespace).as_json(),
        json,
    );
    check(what, "peer_pod", f.peer.map(|p| p.pod).as_json(), json);
}

/// The view's own fields, in its declared order, against the agent's JSON keys for them.
fn check_fields(what: &str, probe: EventProbe, values: &[Value], json: &Value, full: bool) {
    let specs = probe.fields();
    assert_eq!(values.len(), specs.len(), "{what}: fields compared");
    for (spec, value) in specs.iter().zip(values) {
        if full {
            assert!(
                json.get(spec.json).is_some(),
                "{what}: the test's event leaves `{}` none",
                spec.json
            );
        }
        check(what, spec.json, value.clone(), json);
    }
}

fn j<T: AsJson>(v: &T) -> Value {
    v.as_json()
}

macro_rules! some_or_none {
    () => {
        None
    };
    ($e:expr) => {
        Some($e)
    };
}

/// For each probe: its typed batch (guest type), typed and packed decoders, and its view's
/// fields (an exhaustive pattern: a view field this list lacks does not compile).
macro_rules! decode_and_check {
    ($probe:expr, $typed:expr, $packed:expr, $json:expr;
     $($variant:ident($batch:ident) => $decode:ident, $decode_packed:ident,
       $view:ident $([$flow:ident])? { $($field:ident),* };)*) => {
        match $probe {
            $(EventProbe::$variant => {
                let Delivery::$variant(typed) = $typed else {
                    panic!("{}: a typed batch expected", stringify!($variant))
                };
                let typed: guest::$batch = typed.to_guest();
                let typed_views = sonde_plugin::__event::$decode(&typed);
                let packed_views = sonde_plugin::__event::$decode_packed($packed);
                assert_eq!(packed_views.len(), $json.len(), "{}: packed views", stringify!($variant));
                assert_eq!(
                    typed_views, packed_views,
                    "{}: typed and packed deliveries decode differently",
                    stringify!($variant)
                );
                for (i, (view, json)) in packed_views.iter().zip($json).enumerate() {
                    let what = format!("{} event {i}", stringify!($variant));
                    let sonde_plugin::$view { envelope, $($flow,)? $($field),* } = view;
                    check_envelope(&what, envelope, json);
                    check_flow(&what, some_or_none!($($flow)?), json);
                    check_fields(&what, $probe, &[$(j($field)),*], json, i == 0);
                }
            })*
        }
    };
}

fn one(mut deliveries: Vec<Delivery>, probe: EventProbe) -> Delivery {
    assert_eq!(deliveries.len(), 1, "{probe:?}: one batch");
    deliveries.remove(0)
}

#[test]
fn events_the_agent_sends_decode_in_the_sdk_as_its_json_says() {
    let events = events();
    for &probe in EventProbe::ALL {
        let json: Vec<Value> = events
            .iter()
            .filter(|e| e.kind.probe() == Some(probe))
            .map(|e| serde_json::from_str(&e.to_json()).expect("the agent's JSON"))
            .collect();
        assert_eq!(json.len(), 2, "{probe:?}: the test's events");
        let mut sym = Symbols::default();
        let Delivery::Packed(packed) = one(batches(&events, probe, true, 1024, &mut sym), probe)
        else {
            panic!("{probe:?}: a packed batch expected")
        };
        let packed: guest::PackedBatch = packed.to_guest();
        assert_eq!(packed.probe, probe.name());
        let typed = one(batches(&events, probe, false, 1024, &mut sym), probe);
        decode_and_check! {
            probe, typed, &packed, &json;
            PacketDrop(PacketDropBatch) => packet_drops, packed_packet_drops,
                PacketDrop [flow] { reason, location, stack };
            TcpRetrans(TcpRetransBatch) => tcp_retransmits, packed_tcp_retransmits,
                TcpRetrans [flow] { state };
            TcpReset(TcpResetBatch) => tcp_resets, packed_tcp_resets,
                TcpReset [flow] { direction, state };
            TcpConnect(TcpConnectBatch) => tcp_connects, packed_tcp_connects,
                TcpConnect [flow] { side, cause, duration, retransmits, error };
            Softirq(SoftirqBatch) => softirqs, packed_softirqs,
                Softirq { vec, stage, duration, cpu };
            NetdevLatency(NetdevLatencyBatch) => netdev_latencies, packed_netdev_latencies,
                NetdevLatency { interface, ifindex, stage, duration, bytes };
            IoLatency(IoLatencyBatch) => io_latencies, packed_io_latencies,
                IoLatency { device, dev, op, duration, bytes, sector, error };
            Dns(DnsBatch) => dns, packed_dns,
                Dns [flow] { outcome, id, duration, count, rate };
            TcpState(TcpStateBatch) => tcp_states, packed_tcp_states,
                TcpState [flow] { state, duration, bytes_sent, bytes_received };
        }
    }
}
