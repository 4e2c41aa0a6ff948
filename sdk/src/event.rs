//! The probes' events as a plugin sees them: views that borrow their strings from the batch
//! they came in. The host sends each string once per batch (see `wit/plugin.wit`) and either
//! typed records or packed bytes (`spec.delivery`, `wit/PACKED.md`); both decode into these
//! same types, so a plugin's code does not depend on the delivery.
//!
//! Views live as long as the batch: to keep something past the callback, copy what you need
//! ([`WorkloadRef::to_workload`], `to_string()`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::bindings::sonde::plugin::types as wit;
use crate::Workload;

/// "None" for a `text` or stack index in the packed layout.
const NONE: u32 = u32::MAX;

/// A workload whose names borrow from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
}

impl WorkloadRef<'_> {
    /// An owned copy, to keep past the callback.
    pub fn to_workload(&self) -> Workload {
        Workload::new(self.namespace, self.pod)
    }
}

impl PartialEq<Workload> for WorkloadRef<'_> {
    fn eq(&self, other: &Workload) -> bool {
        self.namespace == other.namespace && self.pod == other.pod
    }
}

impl<'a> From<&'a Workload> for WorkloadRef<'a> {
    fn from(w: &'a Workload) -> Self {
        WorkloadRef {
            namespace: &w.namespace,
            pod: &w.pod,
        }
    }
}

/// `namespace/pod`, or just `pod` when the namespace is empty (a named network namespace).
impl fmt::Display for WorkloadRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(self.pod)
        } else {
            write!(f, "{}/{}", self.namespace, self.pod)
        }
    }
}

/// What every event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The node's name (the same for every event the agent hands over).
    pub node: &'a str,
    /// Network namespace inode the event happened in.
    pub netns: u32,
    /// The workload of `netns`; `None` for the host.
    pub workload: Option<WorkloadRef<'a>>,
}

/// A packet or connection 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow<'a> {
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, or the protocol number.
    pub protocol: &'a str,
    /// `None` when the packet was neither IPv4 nor IPv6.
    pub saddr: Option<IpAddr>,
    pub sport: u16,
    pub daddr: Option<IpAddr>,
    pub dport: u16,
    /// The workload that owns `daddr`, when known.
    pub peer: Option<WorkloadRef<'a>>,
}

impl Flow<'_> {
    /// An owned copy, to keep past the callback.
    pub fn to_owned_flow(&self) -> OwnedFlow {
        OwnedFlow {
            protocol: self.protocol.to_string(),
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
            peer: self.peer.map(|w| w.to_workload()),
        }
    }
}

/// A [`Flow`] that owns its strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedFlow {
    pub protocol: String,
    pub saddr: Option<IpAddr>,
    pub sport: u16,
    pub daddr: Option<IpAddr>,
    pub dport: u16,
    pub peer: Option<Workload>,
}

impl OwnedFlow {
    /// The flow as a view, as events carry it.
    pub fn as_flow(&self) -> Flow<'_> {
        Flow {
            protocol: &self.protocol,
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
            peer: self.peer.as_ref().map(WorkloadRef::from),
        }
    }
}

/// A kernel stack, innermost frame first (`function+0xoffset`); empty unless the
/// `packet_drop` probe's `stack` option is on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stack<'a> {
    frames: &'a [u32],
    strings: &'a [String],
}

impl<'a> Stack<'a> {
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames, innermost first.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let strings = self.strings;
        self.frames.iter().map(move |i| text(strings, *i))
    }
}

impl PartialEq for Stack<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Stack<'_> {}

/// One field of a view, as this SDK decodes it: the WIT record's field it comes from and its
/// place in the packed record. The drift tests compare these with the agent's declaration.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The WIT record's field, as wit-bindgen spells it in Rust (`duration_ns`).
    pub wit: &'static str,
    /// Its WIT type (`text`, `option<u64>`, ...).
    pub wit_type: &'static str,
    /// Its offset and size in the packed record.
    pub offset: usize,
    pub size: usize,
}

impl Field {
    /// A field of a view whose packed records are `record` bytes; it must fit in them (a
    /// compile-time check: [`schema`] evaluates every view's table).
    const fn new(
        wit: &'static str,
        wit_type: &'static str,
        offset: usize,
        size: usize,
        record: usize,
    ) -> Field {
        assert!(
            offset + size <= record,
            "a field ends past its packed record"
        );
        Field {
            wit,
            wit_type,
            offset,
            size,
        }
    }
}

/// The type of a view's field, and how it decodes from each delivery: from the typed WIT
/// record's field (`Wit`) and from `SIZE` bytes of a packed record, where "none" is a sentinel.
trait Decode<'a>: Sized {
    /// The field's type in the WIT record.
    const WIT_TYPE: &'static str;
    /// Bytes in the packed record.
    const SIZE: usize;
    /// The field in the typed WIT record.
    type Wit;
    fn typed(w: Self::Wit, symbols: &'a wit::Symbols) -> Self;
    /// The field at byte `at` of a packed record.
    fn packed(p: &Packed<'a>, at: usize) -> Self;
}

/// A `text`.
impl<'a> Decode<'a> for &'a str {
    const WIT_TYPE: &'static str = "text";
    const SIZE: usize = 4;
    type Wit = u32;
    fn typed(i: u32, symbols: &'a wit::Symbols) -> Self {
        text(&symbols.strings, i)
    }
    fn packed(p: &Packed<'a>, at: usize) -> Self {
        p.text(at)
    }
}

/// An `option<text>`: 0xffffffff for none in the packed layout.
impl<'a> Decode<'a> for Option<&'a str> {
    const WIT_TYPE: &'static str = "option<text>";
    const SIZE: usize = 4;
    type Wit = Option<u32>;
    fn typed(i: Option<u32>, symbols: &'a wit::Symbols) -> Self {
        i.map(|i| text(&symbols.strings, i))
    }
    fn packed(p: &Packed<'a>, at: usize) -> Self {
        p.opt_text(at)
    }
}

/// A stack: an index into the batch's stacks, 0xffffffff for none in the packed layout.
impl<'a> Decode<'a> for Stack<'a> {
    const WIT_TYPE: &'static str = "option<u32>";
    const SIZE: usize = 4;
    type Wit = Option<u32>;
    fn typed(i: Option<u32>, symbols: &'a wit::Symbols) -> Self {
        stack(symbols, i)
    }
    fn packed(p: &Packed<'a>, at: usize) -> Self {
        let i = p.u32(at);
        stack(p.symbols, (i != NONE).then_some(i))
    }
}

/// A duration: `u64` nanoseconds.
impl<'a> Decode<'a> for Duration {
    const WIT_TYPE: &'static str = "u64";
    const SIZE: usize = 8;
    type Wit = u64;
    fn typed(ns: u64, _: &'a wit::Symbols) -> Self {
        Duration::from_nanos(ns)
    }
    fn packed(p: &Packed<'a>, at: usize) -> Self {
        Duration::from_nanos(p.u64(at))
    }
}

/// An optional duration: `option<u64>` nanoseconds, u64::MAX for none in the packed layout.
impl<'a> Decode<'a> for Option<Duration> {
    const WIT_TYPE: &'static str = "option<u64>";
    const SIZE: usize = 8;
    type Wit = Option<u64>;
    fn typed(ns: Option<u64>, _: &'a wit::Symbols) -> Self {
        ns.map(Duration::from_nanos)
    }
    fn packed(p: &Packed<'a>, at: usize) -> Self {
        let ns = p.u64(at);
        (ns != u64::MAX).then(|| Duration::from_nanos(ns))
    }
}

/// A number, the same in both deliveries.
macro_rules! number {
    ($($ty:ty => $wit:literal),* $(,)?) => {$(
        impl<'a> Decode<'a> for $ty {
            const WIT_TYPE: &'static str = $wit;
            const SIZE: usize = std::mem::size_of::<$ty>();
            type Wit = $ty;
            fn typed(v: $ty, _: &'a wit::Symbols) -> Self {
                v
            }
            fn packed(p: &Packed<'a>, at: usize) -> Self {
                <$ty>::from_le_bytes(p.bytes(at))
            }
        }
    )*};
}

number!(u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", i32 => "s32");

/// An optional number: the WIT option, and in the packed layout a `$packed` with a stand-in
/// for none.
macro_rules! optional_number {
    ($ty:ty => $wit:literal, packed $packed:ty, |$v:ident| none if $none:expr, else $some:expr) => {
        impl<'a> Decode<'a> for Option<$ty> {
            const WIT_TYPE: &'static str = $wit;
            const SIZE: usize = std::mem::size_of::<$packed>();
            type Wit = Option<$ty>;
            fn typed(v: Option<$ty>, _: &'a wit::Symbols) -> Self {
                v
            }
            fn packed(p: &Packed<'a>, at: usize) -> Self {
                let $v = <$packed>::from_le_bytes(p.bytes(at));
                (!$none).then_some($some)
            }
        }
    };
}

// A DNS id: the low 16 bits of a u32, 0xffffffff for none.
optional_number!(u16 => "option<u16>", packed u32, |v| none if v == NONE, else v as u16);
optional_number!(u64 => "option<u64>", packed u64, |v| none if v == u64::MAX, else v);
// A block status: 0 is success, what none is in the typed record.
optional_number!(i32 => "option<s32>", packed i32, |v| none if v == 0, else v);
optional_number!(f64 => "option<f64>", packed f64, |v| none if v.is_nan(), else v);

/// Declares a probe's view: the struct, its decoders for both deliveries and its table
/// ([`Field`]). Each field reads `pub name: Type => wit_field @ packed_offset`; its type says
/// how it decodes ([`Decode`]). `, flow` after the record size gives the view the record's
/// 5-tuple (`pub flow: Flow<'a>`); every view has the record's `envelope` first.
macro_rules! view {
    (
        $(#[$meta:meta])*
        pub struct $name:ident<$lt:lifetime>: $probe:literal, record $size:literal $(, $flow:ident)? {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $ty:ty => $wit:ident @ $offset:literal
            ),* $(,)?
        }
        typed $typed:ident($batch:ident), packed $packed:ident;
    ) => {
        $(#[$meta])*
        pub struct $name<$lt> {
            pub envelope: Envelope<$lt>,
            $(pub $flow: Flow<$lt>,)?
            $(
                $(#[$field_meta])*
                pub $field: $ty,
            )*
        }

        impl<$lt> $name<$lt> {
            /// The probe whose events these are.
            pub const PROBE: &'static str = $probe;
            /// Bytes of the packed records this SDK reads (a newer host's may be longer).
            pub const RECORD_SIZE: usize = $size;
            /// The view's own fields (after the envelope and flow), in WIT order.
            #[doc(hidden)]
            pub const FIELDS: &'static [Field] = &[$(
                Field::new(
                    stringify!($wit),
                    <$ty as Decode<$lt>>::WIT_TYPE,
                    $offset,
                    <$ty as Decode<$lt>>::SIZE,
                    $size,
                ),
            )*];
        }

        #[doc = concat!("The views of a typed `", $probe, "` batch.")]
        pub fn $typed(b: &wit::$batch) -> Vec<$name<'_>> {
            let s = &b.symbols;
            b.events
                .iter()
                .map(|e| $name {
                    envelope: envelope(&b.node, &s.strings, &e.envelope),
                    $($flow: flow(&s.strings, &e.$flow),)?
                    $($field: Decode::typed(e.$wit, s),)*
                })
                .collect()
        }

        #[doc = concat!("The views of a packed `", $probe, "` batch.")]
        pub fn $packed(b: &wit::PackedBatch) -> Vec<$name<'_>> {
            packed_records(b, $size)
                .map(|p| $name {
                    envelope: p.envelope(),
                    $($flow: p.flow(),)?
                    $($field: Decode::packed(&p, $offset),)*
                })
                .collect()
        }
    };
}

view! {
    /// `packet_drop`: a packet the kernel dropped.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PacketDrop<'a>: "packet_drop", record 96, flow {
        /// The kernel's drop reason without its prefix: `NETFILTER_DROP`, `NO_SOCKET`, ...
        pub reason: &'a str => reason @ 80,
        /// The kernel function that dropped the packet.
        pub location: &'a str => location @ 84,
        pub stack: Stack<'a> => stack @ 88,
    }
    typed packet_drops(PacketDropBatch), packed packed_packet_drops;
}

view! {
    /// `tcp_retrans`: a TCP segment retransmitted. The flow's source is the local end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TcpRetrans<'a>: "tcp_retrans", record 96, flow {
        /// TCP state: `ESTABLISHED`, `SYN_SENT`, ...
        pub state: &'a str => state @ 80,
    }
    typed tcp_retransmits(TcpRetransBatch), packed packed_tcp_retransmits;
}

view! {
    /// `tcp_reset`: a TCP reset sent or received. The flow is oriented as the reset travels.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TcpReset<'a>: "tcp_reset", record 96, flow {
        /// `sent` or `received`.
        pub direction: &'a str => direction @ 80,
        /// The socket's TCP state; `None` when the reset answered a packet no socket owned.
        pub state: Option<&'a str> => state @ 84,
    }
    typed tcp_resets(TcpResetBatch), packed packed_tcp_resets;
}

view! {
    /// `tcp_connect`: a TCP handshake that was slow or failed. The flow's source is the local end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TcpConnect<'a>: "tcp_connect", record 104, flow {
        /// `connect` (this socket connected) or `accept` (a listener accepted it).
        pub side: &'a str => side @ 80,
        /// Why it failed: `refused`, `timeout`, `other`; `None` for a slow handshake that
        /// succeeded.
        pub cause: Option<&'a str> => cause @ 84,
        /// How long the handshake took, or ran before failing; `None` when the probe attached
        /// after it started.
        pub duration: Option<std::time::Duration> => duration_ns @ 88,
        /// SYN (connect) or SYN-ACK (accept) retransmissions.
        pub retransmits: u8 => retransmits @ 96,
        /// The socket's error when it closed (`ECONNREFUSED`, `ETIMEDOUT`, ...).
        pub error: Option<&'a str> => error @ 100,
    }
    typed tcp_connects(TcpConnectBatch), packed packed_tcp_connects;
}

view! {
    /// `softirq`: a NET_RX or NET_TX softirq that waited to run, or ran, at least the probe's
    /// threshold. Softirqs belong to CPUs, not pods: `envelope.netns` is 0 and its workload `None`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Softirq<'a>: "softirq", record 104 {
        /// `NET_RX` or `NET_TX`.
        pub vec: &'a str => vec @ 80,
        /// `delay` (raised until it ran) or `run` (how long it ran).
        pub stage: &'a str => stage @ 84,
        pub duration: std::time::Duration => duration_ns @ 88,
        pub cpu: u32 => cpu @ 96,
    }
    typed softirqs(SoftirqBatch), packed packed_softirqs;
}

view! {
    /// `netdev_latency`: a packet that spent at least the probe's threshold in an interface's
    /// qdisc or driver. The envelope is the interface's network namespace and its pod.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct NetdevLatency<'a>: "netdev_latency", record 104 {
        /// The interface's name (`eth0`).
        pub interface: &'a str => interface @ 80,
        pub ifindex: u32 => ifindex @ 84,
        /// `queue` (time in the qdisc) or `xmit` (time in the driver).
        pub stage: &'a str => stage @ 96,
        pub duration: std::time::Duration => duration_ns @ 88,
        /// Bytes of the packet.
        pub bytes: u32 => bytes @ 100,
    }
    typed netdev_latencies(NetdevLatencyBatch), packed packed_netdev_latencies;
}

view! {
    /// `io_latency`: a block request that took at least the probe's `slowThreshold`. Block I/O is
    /// not attributed to pods: `envelope.netns` is 0 and its workload `None`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IoLatency<'a>: "io_latency", record 120 {
        /// The disk's name (`vda`, `loop3`), or `major:minor` when it has none.
        pub device: &'a str => device @ 80,
        /// `major:minor`.
        pub dev: &'a str => dev @ 84,
        /// `read`, `write` or `other`.
        pub op: &'a str => op @ 96,
        pub duration: std::time::Duration => duration_ns @ 88,
        pub bytes: u32 => bytes @ 100,
        /// First 512-byte sector of the request.
        pub sector: u64 => sector @ 104,
        /// The completion's block status (blk_status_t); `None` when it succeeded.
        pub error: Option<i32> => error @ 112,
    }
    typed io_latencies(IoLatencyBatch), packed packed_io_latencies;
}

view! {
    /// `dns`: a query that got no response within the probe's timeout, or a pod's SERVFAIL or
    /// NXDOMAIN responses above its rate. The flow goes from the client to the server.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Dns<'a>: "dns", record 112, flow {
        /// `timeout`, `servfail` or `nxdomain`.
        pub outcome: &'a str => outcome @ 80,
        /// The DNS id of the query that timed out.
        pub id: Option<u16> => id @ 84,
        /// How long the query waited (timeouts).
        pub duration: Option<std::time::Duration> => duration_ns @ 88,
        /// Responses of that rcode since the last report, and their rate per second (rates).
        pub count: Option<u64> => count @ 96,
        pub rate: Option<f64> => rate @ 104,
    }
    typed dns(DnsBatch), packed packed_dns;
}

view! {
    /// `tcp_state` (since 0.2.1): a TCP connection that closed. The flow's source is the local
    /// end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TcpState<'a>: "tcp_state", record 112, flow {
        /// The state it closed from: `FIN_WAIT2`, `LAST_ACK`, `SYN_SENT` (a connect that
        /// failed), ...
        pub state: &'a str => state @ 80,
        /// How long it lived, from its first SYN; `None` when it began before the probe
        /// loaded.
        pub duration: Option<std::time::Duration> => duration_ns @ 88,
        /// Bytes it sent that the peer acknowledged, and bytes it received (in sequence
        /// space: a SYN or FIN counts one).
        pub bytes_sent: u64 => bytes_sent @ 96,
        pub bytes_received: u64 => bytes_received @ 104,
    }
    typed tcp_states(TcpStateBatch), packed packed_tcp_states;
}

/// Every view's table: probe, fields, record size.
const SCHEMAS: &[(&str, &[Field], usize)] = &[
    (
        PacketDrop::PROBE,
        PacketDrop::FIELDS,
        PacketDrop::RECORD_SIZE,
    ),
    (
        TcpRetrans::PROBE,
        TcpRetrans::FIELDS,
        TcpRetrans::RECORD_SIZE,
    ),
    (TcpReset::PROBE, TcpReset::FIELDS, TcpReset::RECORD_SIZE),
    (
        TcpConnect::PROBE,
        TcpConnect::FIELDS,
        TcpConnect::RECORD_SIZE,
    ),
    (Softirq::PROBE, Softirq::FIELDS, Softirq::RECORD_SIZE),
    (
        NetdevLatency::PROBE,
        NetdevLatency::FIELDS,
        NetdevLatency::RECORD_SIZE,
    ),
    (IoLatency::PROBE, IoLatency::FIELDS, IoLatency::RECORD_SIZE),
    (Dns::PROBE, Dns::FIELDS, Dns::RECORD_SIZE),
    (TcpState::PROBE, TcpState::FIELDS, TcpState::RECORD_SIZE),
];

/// The fields this SDK decodes of `probe`'s events and the size of its packed records; `None`
/// for a probe it has no view of.
#[doc(hidden)]
pub fn schema(probe: &str) -> Option<(&'static [Field], usize)> {
    SCHEMAS
        .iter()
        .find(|(p, ..)| *p == probe)
        .map(|&(_, fields, size)| (fields, size))
}

/// The probes this SDK has a view of.
#[doc(hidden)]
pub fn probes() -> impl Iterator<Item = &'static str> {
    SCHEMAS.iter().map(|(p, ..)| *p)
}

/// A batch's string `i`; "" if the host sent an index out of range (it does not).
fn text(strings: &[String], i: u32) -> &str {
    strings.get(i as usize).map_or("", String::as_str)
}

fn opt_text(strings: &[String], i: u32) -> Option<&str> {
    (i != NONE).then(|| text(strings, i))
}

fn workload_ref(strings: &[String], w: wit::WorkloadRef) -> WorkloadRef<'_> {
    WorkloadRef {
        namespace: text(strings, w.namespace),
        pod: text(strings, w.pod),
    }
}

fn ip(a: wit::IpAddress) -> IpAddr {
    match a {
        wit::IpAddress::Ipv4(bits) => IpAddr::V4(Ipv4Addr::from(bits)),
        wit::IpAddress::Ipv6((high, low)) => {
            IpAddr::V6(Ipv6Addr::from((u128::from(high) << 64) | u128::from(low)))
        }
    }
}

fn stack<'a>(symbols: &'a wit::Symbols, index: Option<u32>) -> Stack<'a> {
    let frames = index
        .and_then(|i| symbols.stacks.get(i as usize))
        .map_or(&[][..], Vec::as_slice);
    Stack {
        frames,
        strings: &symbols.strings,
    }
}

fn envelope<'a>(node: &'a str, strings: &'a [String], e: &wit::Envelope) -> Envelope<'a> {
    Envelope {
        time_ns: e.time_ns,
        node,
        netns: e.netns,
        workload: e.workload.map(|w| workload_ref(strings, w)),
    }
}

fn flow<'a>(strings: &'a [String], f: &wit::Flow) -> Flow<'a> {
    Flow {
        protocol: text(strings, f.protocol),
        saddr: f.saddr.map(ip),
        sport: f.sport,
        daddr: f.daddr.map(ip),
        dport: f.dport,
        peer: f.peer.map(|w| workload_ref(strings, w)),
    }
}

/// One record of a packed batch (`wit/PACKED.md`).
struct Packed<'a> {
    r: &'a [u8],
    node: &'a str,
    symbols: &'a wit::Symbols,
}

impl<'a> Packed<'a> {
    /// The `N` bytes at `at`.
    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        self.r[at..at + N].try_into().unwrap_or([0; N])
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes(at))
    }

    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes(at))
    }

    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.bytes(at))
    }

    fn text(&self, at: usize) -> &'a str {
        text(&self.symbols.strings, self.u32(at))
    }

    fn opt_text(&self, at: usize) -> Option<&'a str> {
        opt_text(&self.symbols.strings, self.u32(at))
    }

    fn workload(&self, at: usize) -> Option<WorkloadRef<'a>> {
        Some(WorkloadRef {
            namespace: self.opt_text(at)?,
            pod: self.opt_text(at + 4)?,
        })
    }

    fn addr(&self, family: usize, at: usize) -> Option<IpAddr> {
        let b = &self.r[at..at + 16];
        match self.r[family] {
            4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
            _ => None,
        }
    }

    fn envelope(&self) -> Envelope<'a> {
        Envelope {
            time_ns: self.u64(0),
            node: self.node,
            netns: self.u32(8),
            workload: self.workload(16),
        }
    }

    fn flow(&self) -> Flow<'a> {
        Flow {
            protocol: self.text(32),
            saddr: self.addr(40, 48),
            sport: self.u16(36),
            daddr: self.addr(41, 64),
            dport: self.u16(38),
            peer: self.workload(24),
        }
    }
}

/// The bytes a packed record of this version has at least (`tcp_connect`'s, `softirq`'s and
/// `netdev_latency`'s: 104, `io_latency`'s: 120).
const PACKED_MIN_SIZE: usize = 96;

/// The records of a packed batch, or none if its `record-size` is smaller than this SDK's
/// layout for the probe (a host older than the SDK: it does not happen with a matching world).
fn packed_records(b: &wit::PackedBatch, min: usize) -> impl Iterator<Item = Packed<'_>> {
    let size = b.record_size as usize;
    let usable = if size >= min.max(PACKED_MIN_SIZE) {
        size
    } else {
        0
    };
    let count = if usable == 0 { 0 } else { b.count as usize };
    b.events
        .chunks_exact(usable.max(1))
        .take(count)
        .map(move |r| Packed {
            r,
            node: &b.node,
            symbols: &b.symbols,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols() -> wit::Symbols {
        wit::Symbols {
            strings: [
                "",
                "shop",
                "web",
                "udp",
                "db",
                "NETFILTER_DROP",
                "nf_hook_slow",
                "f+0x1",
            ]
            .map(String::from)
            .to_vec(),
            stacks: vec![vec![7, 6]],
        }
    }

    /// The same event typed and packed (bytes as the host writes them, see wit/PACKED.md).
    fn both() -> (wit::PacketDropBatch, wit::PackedBatch) {
        let typed = wit::PacketDropBatch {
            node: "node-1".into(),
            symbols: symbols(),
            events: vec![wit::PacketDrop {
                envelope: wit::Envelope {
                    time_ns: 1_700_000_000_123,
                    netns: 4026531993,
                    workload: Some(wit::WorkloadRef {
                        namespace: 1,
                        pod: 2,
                    }),
                },
                flow: wit::Flow {
                    protocol: 3,
                    saddr: Some(wit::IpAddress::Ipv4(0x0a00_0001)),
                    sport: 4000,
                    daddr: Some(wit::IpAddress::Ipv6((0xfd00 << 48, 2))),
                    dport: 53,
                    peer: Some(wit::WorkloadRef {
                        namespace: 1,
                        pod: 4,
                    }),
                },
                reason: 5,
                location: 6,
                stack: Some(0),
                extra: Vec::new(),
            }],
        };
        let mut r = [0u8; 96];
        r[0..8].copy_from_slice(&1_700_000_000_123u64.to_le_bytes());
        for (at, v) in [
            (8, 4026531993u32),
            (16, 1),
            (20, 2),
            (24, 1),
            (28, 4),
            (32, 3),
        ] {
            r[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        r[36..38].copy_from_slice(&4000u16.to_le_bytes());
        r[38..40].copy_from_slice(&53u16.to_le_bytes());
        r[40] = 4;
        r[41] = 6;
        r[48..52].copy_from_slice(&[10, 0, 0, 1]);
        r[64..80].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        for (at, v) in [(80, 5u32), (84, 6), (88, 0)] {
            r[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        let packed = wit::PackedBatch {
            probe: "packet_drop".into(),
            node: "node-1".into(),
            symbols: symbols(),
            record_size: 96,
            count: 1,
            events: r.to_vec(),
        };
        (typed, packed)
    }

    #[test]
    fn typed_and_packed_decode_to_the_same_view() {
        let (typed, packed) = both();
        let t = packet_drops(&typed);
        let p = packed_packet_drops(&packed);
        assert_eq!(t, p);
        let e = &t[0];
        assert_eq!(e.envelope.node, "node-1");
        assert_eq!(e.envelope.workload.unwrap().to_string(), "shop/web");
        assert_eq!(
            e.flow.peer,
            Some(WorkloadRef {
                namespace: "shop",
                pod: "db"
            })
        );
        assert_eq!(e.flow.saddr, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(e.flow.daddr, Some("fd00::2".parse().unwrap()));
        assert_eq!(
            (e.flow.protocol, e.flow.sport, e.flow.dport),
            ("udp", 4000, 53)
        );
        assert_eq!((e.reason, e.location), ("NETFILTER_DROP", "nf_hook_slow"));
        assert_eq!(
            e.stack.iter().collect::<Vec<_>>(),
            ["f+0x1", "nf_hook_slow"]
        );
    }

    #[test]
    fn packed_records_step_by_record_size_and_read_none() {
        let (_, mut packed) = both();
        // A newer host with a larger record: the extra bytes are skipped.
        let mut r = packed.events.clone();
        r.extend_from_slice(&[0xaa; 8]);
        for at in [16, 24, 88] {
            r[at..at + 4].copy_from_slice(&NONE.to_le_bytes());
        }
        packed.events = [r.clone(), r].concat();
        packed.record_size = 104;
        packed.count = 2;
        let p = packed_packet_drops(&packed);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].envelope.workload, None);
        assert_eq!(p[1].flow.peer, None);
        assert!(p[1].stack.is_empty());
        assert_eq!(p[1].reason, "NETFILTER_DROP");
        // A record size below the layout, or a count past the bytes, yields no garbage.
        packed.record_size = 40;
        assert!(packed_packet_drops(&packed).is_empty());
        packed.record_size = 104;
        packed.count = 5;
        assert_eq!(packed_packet_drops(&packed).len(), 2);
    }

    #[test]
    fn views_expose_their_declaration() {
        assert_eq!(PacketDrop::PROBE, "packet_drop");
        assert_eq!(PacketDrop::RECORD_SIZE, 96);
        assert_eq!(
            PacketDrop::FIELDS,
            [
                Field {
                    wit: "reason",
                    wit_type: "text",
                    offset: 80,
                    size: 4
                },
                Field {
                    wit: "location",
                    wit_type: "text",
                    offset: 84,
                    size: 4
                },
                Field {
                    wit: "stack",
                    wit_type: "option<u32>",
                    offset: 88,
                    size: 4
                },
            ]
        );
        let (fields, size) = schema("dns").unwrap();
        assert_eq!(size, 112);
        let types: Vec<_> = fields.iter().map(|f| (f.wit, f.wit_type, f.size)).collect();
        assert_eq!(
            types,
            [
                ("outcome", "text", 4),
                ("id", "option<u16>", 4),
                ("duration_ns", "option<u64>", 8),
                ("count", "option<u64>", 8),
                ("rate", "option<f64>", 8),
            ]
        );
        assert_eq!(schema("io_latency").map(|(_, size)| size), Some(120));
        assert_eq!(schema("flow"), None);
        // Each probe once (that every probe of the agent has a view is for
        // tests/tests/schema_drift.rs, which sees both).
        let mut all: Vec<&str> = probes().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), probes().count());
        for probe in probes() {
            let (fields, size) = schema(probe).unwrap();
            assert!(fields
                .iter()
                .all(|f| f.offset >= 80 && f.offset + f.size <= size));
        }
    }

    fn packed(probe: &str, record_size: u32, records: &[Vec<u8>]) -> wit::PackedBatch {
        wit::PackedBatch {
            probe: probe.into(),
            node: "node-1".into(),
            symbols: symbols(),
            record_size,
            count: records.len() as u32,
            events: records.concat(),
        }
    }

    fn put(r: &mut [u8], at: usize, bytes: &[u8]) {
        r[at..at + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn packed_sentinels_decode_to_none_and_values_to_some() {
        let mut some = vec![0u8; 112];
        put(&mut some, 80, &5u32.to_le_bytes());
        put(&mut some, 84, &0xbeefu32.to_le_bytes());
        put(&mut some, 88, &1_500u64.to_le_bytes());
        put(&mut some, 96, &7u64.to_le_bytes());
        put(&mut some, 104, &2.5f64.to_le_bytes());
        let mut none = some.clone();
        put(&mut none, 84, &NONE.to_le_bytes());
        put(&mut none, 88, &u64::MAX.to_le_bytes());
        put(&mut none, 96, &u64::MAX.to_le_bytes());
        put(&mut none, 104, &f64::NAN.to_le_bytes());
        let b = packed("dns", 112, &[some, none]);
        let d = packed_dns(&b);
        assert_eq!(d[0].outcome, "NETFILTER_DROP");
        assert_eq!(
            (d[0].id, d[0].duration, d[0].count, d[0].rate),
            (
                Some(0xbeef),
                Some(Duration::from_nanos(1_500)),
                Some(7),
                Some(2.5)
            )
        );
        assert_eq!(
            (d[1].id, d[1].duration, d[1].count, d[1].rate),
            (None, None, None, None)
        );
        // Shorter than this SDK's dns layout: nothing.
        assert!(packed_dns(&packed("dns", 104, &[vec![0; 104]])).is_empty());

        let mut failed = vec![0u8; 120];
        put(&mut failed, 112, &(-5i32).to_le_bytes());
        put(&mut failed, 104, &u64::MAX.to_le_bytes());
        let ok = vec![0u8; 120];
        let b = packed("io_latency", 120, &[failed, ok]);
        let io = packed_io_latencies(&b);
        assert_eq!((io[0].error, io[0].sector), (Some(-5), u64::MAX));
        assert_eq!(io[1].error, None);

        let mut c = vec![0u8; 104];
        put(&mut c, 84, &NONE.to_le_bytes());
        put(&mut c, 88, &u64::MAX.to_le_bytes());
        c[96] = 3;
        put(&mut c, 100, &6u32.to_le_bytes());
        let b = packed("tcp_connect", 104, &[c]);
        let t = packed_tcp_connects(&b);
        assert_eq!(
            (
                t[0].side,
                t[0].cause,
                t[0].duration,
                t[0].retransmits,
                t[0].error
            ),
            ("", None, None, 3, Some("nf_hook_slow"))
        );
    }
}
