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
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out);
        // write_json writes UTF-8 only (keys and strings come from &str).
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the event as one line of JSON (no newline) to `out`: what `serde_json` would
    /// write for it, faster (the sinks' path): keys that need no escaping, the schema's field
    /// names among them, are copied as they are.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut map = RawMap { out, first: true };
        // Writing to a Vec fails only for a map key that is not a string, which no field has.
        if self.serialize_entries(&mut map).is_err() {
            tracing::warn!(event = self.kind.type_name(), "event not serialised");
        }
        map.out.push(b'}');
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
        self.serialize_entries(&mut map)?;
        map.end()
    }
}

impl Event {
    /// The event's JSON object's entries: the envelope, its flow, the probe's fields.
    fn serialize_entries<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
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
            serialize_flow(map, flow, self.peer.as_ref())?;
        }
        let mut fields = JsonFields { map, error: None };
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
        Ok(())
    }
}

/// A JSON object's entries written straight into a buffer: keys and strings that need no
/// escaping as they are, scalars through [`ValueWriter`], the rest through serde_json.
struct RawMap<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl SerializeMap for RawMap<'_> {
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_key<K: ?Sized + Serialize>(&mut self, key: &K) -> Result<(), Self::Error> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        key.serialize(KeyWriter(self.out))?;
        self.out.push(b':');
        Ok(())
    }

    fn serialize_value<V: ?Sized + Serialize>(&mut self, value: &V) -> Result<(), Self::Error> {
        let mark = self.out.len();
        match value.serialize(ValueWriter(self.out)) {
            Ok(()) => Ok(()),
            Err(NotScalar) => {
                self.out.truncate(mark);
                serde_json::to_writer(&mut *self.out, value)
            }
        }
    }

    fn end(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Whether JSON needs any of `text`'s bytes escaped (a control character, `"` or `\\`):
/// eight bytes at a time, as keys are checked for every event.
fn needs_escape(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `word` is zero: the classic test, exact when no byte is >= 0x80 in
    // `word - ONES` for another reason than a borrow from a zero byte (hence `& !word`).
    let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    // A byte below 0x20: `word - 0x20` borrows there, and the byte's own high bit is clear.
    let has_below_space = |word: u64| word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    let mut chunks = text.chunks_exact(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        if has_below_space(word) || has_zero(word ^ (ONES * 0x22)) || has_zero(word ^ (ONES * 0x5c))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Writes a map key, which must be a string: as it is when nothing in it needs escaping.
struct KeyWriter<'a>(&'a mut Vec<u8>);

fn key_must_be_a_string() -> serde_json::Error {
    serde::ser::Error::custom("a JSON object's key must be a string")
}

/// Serializer methods that all answer `Err($error)`.
macro_rules! refuse {
    ($error:expr; $($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self $(, _: $arg)*) -> Result<$ret, Self::Error> {
            Err($error)
        })*
    };
}

/// The serializer methods of compound values (sequences, maps, structs and their kin), all
/// answering `Err($error)`: neither a key nor a scalar is one.
macro_rules! refuse_compounds {
    ($error:expr) => {
        refuse! { $error;
            serialize_seq(Option<usize>) -> Self::SerializeSeq;
            serialize_tuple(usize) -> Self::SerializeTuple;
            serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
            serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
            serialize_map(Option<usize>) -> Self::SerializeMap;
            serialize_struct(&'static str, usize) -> Self::SerializeStruct;
            serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
        }
    };
}

impl serde::Serializer for KeyWriter<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeTuple = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeMap = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeStruct = serde::ser::Impossible<(), serde_json::Error>;
    type SerializeStructVariant = serde::ser::Impossible<(), serde_json::Error>;

    fn serialize_str(self, key: &str) -> Result<(), Self::Error> {
        if !needs_escape(key.as_bytes()) {
            self.0.push(b'"');
            self.0.extend_from_slice(key.as_bytes());
            self.0.push(b'"');
            Ok(())
        } else {
            serde_json::to_writer(&mut *self.0, key)
        }
    }

    refuse! { key_must_be_a_string();
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
    }

    refuse_compounds!(key_must_be_a_string());

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Self::Error> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
}

/// Writes a scalar value (a string, a number, a boolean, null) as serde_json does, strings
/// that need no escaping copied as they are: most of an event's values. Anything else is
/// [`NotScalar`], for serde_json to write.
struct ValueWriter<'a>(&'a mut Vec<u8>);

/// A value [`ValueWriter`] leaves to serde_json.
#[derive(Debug)]
struct NotScalar;

impl std::fmt::Display for NotScalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a scalar")
    }
}

impl std::error::Error for NotScalar {}

impl serde::ser::Error for NotScalar {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NotScalar
    }
}

macro_rules! through_serde_json {
    ($($method:ident($ty:ty);)*) => {
        $(fn $method(self, v: $ty) -> Result<(), NotScalar> {
            serde_json::to_writer(&mut *self.0, &v).map_err(|_| NotScalar)
        })*
    };
}

impl serde::Serializer for ValueWriter<'_> {
    type Ok = ();
    type Error = NotScalar;
    type SerializeSeq = serde::ser::Impossible<(), NotScalar>;
    type SerializeTuple = serde::ser::Impossible<(), NotScalar>;
    type SerializeTupleStruct = serde::ser::Impossible<(), NotScalar>;
    type SerializeTupleVariant = serde::ser::Impossible<(), NotScalar>;
    type SerializeMap = serde::ser::Impossible<(), NotScalar>;
    type SerializeStruct = serde::ser::Impossible<(), NotScalar>;
    type SerializeStructVariant = serde::ser::Impossible<(), NotScalar>;

    fn serialize_str(self, v: &str) -> Result<(), NotScalar> {
        if needs_escape(v.as_bytes()) {
            return serde_json::to_writer(&mut *self.0, v).map_err(|_| NotScalar);
        }
        self.0.reserve(v.len() + 2);
        self.0.push(b'"');
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(b'"');
        Ok(())
    }

    fn serialize_none(self) -> Result<(), NotScalar> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), NotScalar> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotScalar> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotScalar> {
        Err(NotScalar)
    }

    through_serde_json! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
    }

    refuse! { NotScalar;
        serialize_bytes(&[u8]) -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
    }

    refuse_compounds!(NotScalar);
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

    /// The word-at-a-time check agrees with the byte-at-a-time one, at every position of
    /// every byte value, beside bytes that could fool it (0x80 and above, 0x20, 0x21).
    #[test]
    fn needs_escape_is_exact() {
        let slow = |t: &[u8]| t.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        for fill in [b'a', 0x20, 0x21, 0x80, 0xff, 0x5d, 0x23] {
            for len in 0..20 {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut text = vec![fill; len];
                        text[at] = b;
                        assert_eq!(needs_escape(&text), slow(&text), "{text:?}");
                    }
                }
            }
        }
    }

    /// The sinks' writer gives what serde_json gives, also for keys and values that need
    /// escaping (a plugin's derived fields, labels, messages).
    #[test]
    fn write_json_is_what_serde_json_writes() {
        let mut drop = Event::kernel(
            UNIX_EPOCH + Duration::from_micros(1_795_615_387_123_456),
            4026532000,
            Severity::Warning,
            Kind::PacketDrop(PacketDrop {
                flow: Flow {
                    protocol: "tcp".into(),
                    saddr: Some("fd00:5d::1".parse().unwrap()),
                    sport: 5000,
                    daddr: None,
                    dport: 80,
                },
                reason: Arc::from("NO_SOCKET"),
                location: Arc::from("tcp_v6_rcv"),
                stack: None,
            }),
        );
        drop.workload = Some(Workload {
            namespace: Arc::from("team \"a\""),
            pod: Arc::from("web\n1"),
        });
        drop.peer = drop.workload.clone();
        drop.labels = Some(Arc::from(vec![("app\"x".to_string(), "v\\1".to_string())]));
        drop.message = Some("line\u{1}\tbreak".into());
        let mut derived = drop.clone();
        derived.kind = Kind::Derived(Derived {
            type_name: "plugin_thing".into(),
            fields: vec![
                ("plain".into(), serde_json::json!(1)),
                (
                    "quo\"te".into(),
                    serde_json::json!({"k\\": [null, "\u{7f}"]}),
                ),
                ("ctl\u{2}".into(), serde_json::json!("é")),
                ("float".into(), serde_json::json!(1.5e-7)),
                ("whole_float".into(), serde_json::json!(2.0)),
                ("negative".into(), serde_json::json!(-3)),
                ("largest".into(), serde_json::json!(u64::MAX)),
                ("yes".into(), serde_json::json!(true)),
                ("nothing".into(), serde_json::Value::Null),
                ("list".into(), serde_json::json!(["a\"", 1.25, null])),
            ],
        });
        let dns = dns_timeout(Duration::from_nanos(1_500_000_001), Some(12.5));
        for e in [drop, derived, dns] {
            let mut fast = Vec::new();
            e.write_json(&mut fast);
            let fast = String::from_utf8(fast).unwrap();
            assert_eq!(fast, serde_json::to_string(&e).unwrap());
            assert_eq!(e.to_json(), fast);
            serde_json::from_str::<serde_json::Value>(&fast).unwrap();
        }
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

    /// A DNS timeout event of a query from 100.64.0.1 to 100.64.0.2.
    fn dns_timeout(duration: Duration, rate: Option<f64>) -> Event {
        Event::kernel(
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
                duration: Some(duration),
                count: None,
                rate,
            }),
        )
    }

    #[test]
    fn dns_timeout_json() {
        let mut e = dns_timeout(Duration::from_millis(1500), None);
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
