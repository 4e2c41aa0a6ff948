//! The probes' events as a plugin sees them: views that borrow their strings from the batch
//! they came in. The host sends each string once per batch (see `wit/plugin.wit`) and either
//! typed records or packed bytes (`spec.delivery`, `wit/PACKED.md`); both decode into these
//! same types, so a plugin's code does not depend on the delivery.
//!
//! Views live as long as the batch: to keep something past the callback, copy what you need
//! ([`WorkloadRef::to_workload`], `to_string()`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// `packet_drop`: a packet the kernel dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketDrop<'a> {
    pub envelope: Envelope<'a>,
    pub flow: Flow<'a>,
    /// The kernel's drop reason without its prefix: `NETFILTER_DROP`, `NO_SOCKET`, ...
    pub reason: &'a str,
    /// The kernel function that dropped the packet.
    pub location: &'a str,
    pub stack: Stack<'a>,
}

/// `tcp_retrans`: a TCP segment retransmitted. The flow's source is the local end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRetrans<'a> {
    pub envelope: Envelope<'a>,
    pub flow: Flow<'a>,
    /// TCP state: `ESTABLISHED`, `SYN_SENT`, ...
    pub state: &'a str,
}

/// `tcp_reset`: a TCP reset sent or received. The flow is oriented as the reset travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpReset<'a> {
    pub envelope: Envelope<'a>,
    pub flow: Flow<'a>,
    /// `sent` or `received`.
    pub direction: &'a str,
    /// The socket's TCP state; `None` when the reset answered a packet no socket owned.
    pub state: Option<&'a str>,
}

/// `tcp_connect`: a TCP handshake that was slow or failed. The flow's source is the local end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConnect<'a> {
    pub envelope: Envelope<'a>,
    pub flow: Flow<'a>,
    /// `connect` (this socket connected) or `accept` (a listener accepted it).
    pub side: &'a str,
    /// Why it failed: `refused`, `timeout`, `other`; `None` for a slow handshake that
    /// succeeded.
    pub cause: Option<&'a str>,
    /// How long the handshake took, or ran before failing; `None` when the probe attached
    /// after it started.
    pub duration: Option<std::time::Duration>,
    /// SYN (connect) or SYN-ACK (accept) retransmissions.
    pub retransmits: u8,
    /// The socket's error when it closed (`ECONNREFUSED`, `ETIMEDOUT`, ...).
    pub error: Option<&'a str>,
}

/// `softirq`: a NET_RX or NET_TX softirq that waited to run, or ran, at least the probe's
/// threshold. Softirqs belong to CPUs, not pods: `envelope.netns` is 0 and its workload `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Softirq<'a> {
    pub envelope: Envelope<'a>,
    /// `NET_RX` or `NET_TX`.
    pub vec: &'a str,
    /// `delay` (raised until it ran) or `run` (how long it ran).
    pub stage: &'a str,
    pub duration: std::time::Duration,
    pub cpu: u32,
}

/// `netdev_latency`: a packet that spent at least the probe's threshold in an interface's
/// qdisc or driver. The envelope is the interface's network namespace and its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetdevLatency<'a> {
    pub envelope: Envelope<'a>,
    /// The interface's name (`eth0`).
    pub interface: &'a str,
    pub ifindex: u32,
    /// `queue` (time in the qdisc) or `xmit` (time in the driver).
    pub stage: &'a str,
    pub duration: std::time::Duration,
    /// Bytes of the packet.
    pub bytes: u32,
}

/// `io_latency`: a block request that took at least the probe's `slowThreshold`. Block I/O is
/// not attributed to pods: `envelope.netns` is 0 and its workload `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoLatency<'a> {
    pub envelope: Envelope<'a>,
    /// The disk's name (`vda`, `loop3`), or `major:minor` when it has none.
    pub device: &'a str,
    /// `major:minor`.
    pub dev: &'a str,
    /// `read`, `write` or `other`.
    pub op: &'a str,
    pub duration: std::time::Duration,
    pub bytes: u32,
    /// First 512-byte sector of the request.
    pub sector: u64,
    /// The completion's block status (blk_status_t); `None` when it succeeded.
    pub error: Option<i32>,
}

/// `dns`: a query that got no response within the probe's timeout, or a pod's SERVFAIL or
/// NXDOMAIN responses above its rate. The flow goes from the client to the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dns<'a> {
    pub envelope: Envelope<'a>,
    pub flow: Flow<'a>,
    /// `timeout`, `servfail` or `nxdomain`.
    pub outcome: &'a str,
    /// The DNS id of the query that timed out.
    pub id: Option<u16>,
    /// How long the query waited (timeouts).
    pub duration: Option<std::time::Duration>,
    /// Responses of that rcode since the last report, and their rate per second (rates).
    pub count: Option<u64>,
    pub rate: Option<f64>,
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

/// The views of a typed `packet_drop` batch.
pub fn packet_drops(b: &wit::PacketDropBatch) -> Vec<PacketDrop<'_>> {
    let s = &b.symbols.strings;
    b.events
        .iter()
        .map(|e| PacketDrop {
            envelope: envelope(&b.node, s, &e.envelope),
            flow: flow(s, &e.flow),
            reason: text(s, e.reason),
            location: text(s, e.location),
            stack: stack(&b.symbols, e.stack),
        })
        .collect()
}

/// The views of a typed `tcp_retrans` batch.
pub fn tcp_retransmits(b: &wit::TcpRetransBatch) -> Vec<TcpRetrans<'_>> {
    let s = &b.symbols.strings;
    b.events
        .iter()
        .map(|e| TcpRetrans {
            envelope: envelope(&b.node, s, &e.envelope),
            flow: flow(s, &e.flow),
            state: text(s, e.state),
        })
        .collect()
}

/// The views of a typed `tcp_reset` batch.
pub fn tcp_resets(b: &wit::TcpResetBatch) -> Vec<TcpReset<'_>> {
    let s = &b.symbols.strings;
    b.events
        .iter()
        .map(|e| TcpReset {
            envelope: envelope(&b.node, s, &e.envelope),
            flow: flow(s, &e.flow),
            direction: text(s, e.direction),
            state: e.state.map(|i| text(s, i)),
        })
        .collect()
}

/// The views of a typed `tcp_connect` batch.
pub fn tcp_connects(b: &wit::TcpConnectBatch) -> Vec<TcpConnect<'_>> {
    let s = &b.symbols.strings;
    b.events
        .iter()
        .map(|e| TcpConnect {
            envelope: envelope(&b.node, s, &e.envelope),
            flow: flow(s, &e.flow),
            side: text(s, e.side),
            cause: e.cause.map(|i| text(s, i)),
            duration: e.duration_ns.map(std::time::Duration::from_nanos),
            retransmits: e.retransmits,
            error: e.error.map(|i| text(s, i)),
        })
        .collect()
}

/// The views of a typed `softirq` batch.
pub fn softirqs(b: &wit::SoftirqBatch) -> Vec<Softirq<'_>> {
    let s = &b.symbols.strings;
    b.events
        .iter()
        .map(|e| Softirq {
            envelope: envelope(&b.node, s, &e.envelope),
            vec: text(s, e.vec),
            stage: text(s, e.stage),
            duration: std::time::Duration::from_nanos(e.duration_ns),
            cpu: e.cpu,
        })
        .collect()
}

/// The views of a typed `netdev_latency` batch.
pub fn netdev_latencies(b: &wit::NetdevLatencyBatch) -> Vec<NetdevLatency<'_>> {
    let s = &b.symbols.strings;
    b.events
        .iter()
        .map(|e| NetdevLatency {
            envelope: envelope(&b.node, s, &e.envelope),
            interface: text(s, e.interface),
            ifindex: e.ifindex,
            stage: text(s, e.stage),
            duration: std::time::Duration::from_nanos(e.duration_ns),
            bytes: e.bytes,
        })
        .collect()
}

/// The views of a typed `io_latency` batch.
pub fn io_latencies(b: &wit::IoLatencyBatch) -> Vec<IoLatency<'_>> {
    let s = &b.symbols.strings;
    b.events
        .iter()
        .map(|e| IoLatency {
            envelope: envelope(&b.node, s, &e.envelope),
            device: text(s, e.device),
            dev: text(s, e.dev),
            op: text(s, e.op),
            duration: std::time::Duration::from_nanos(e.duration_ns),
            bytes: e.bytes,
            sector: e.sector,
            error: e.error,
        })
        .collect()
}

/// The views of a typed `dns` batch.
pub fn dns(b: &wit::DnsBatch) -> Vec<Dns<'_>> {
    let s = &b.symbols.strings;
    b.events
        .iter()
        .map(|e| Dns {
            envelope: envelope(&b.node, s, &e.envelope),
            flow: flow(s, &e.flow),
            outcome: text(s, e.outcome),
            id: e.id,
            duration: e.duration_ns.map(std::time::Duration::from_nanos),
            count: e.count,
            rate: e.rate,
        })
        .collect()
}

/// One record of a packed batch (`wit/PACKED.md`).
struct Packed<'a> {
    r: &'a [u8],
    node: &'a str,
    symbols: &'a wit::Symbols,
}

impl<'a> Packed<'a> {
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.r[at], self.r[at + 1], self.r[at + 2], self.r[at + 3]])
    }

    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.r[at..at + 8].try_into().unwrap_or_default())
    }

    fn duration(&self, at: usize) -> std::time::Duration {
        std::time::Duration::from_nanos(self.u64(at))
    }

    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.r[at], self.r[at + 1]])
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

/// The views of a packed `packet_drop` batch.
pub fn packed_packet_drops(b: &wit::PackedBatch) -> Vec<PacketDrop<'_>> {
    packed_records(b, 96)
        .map(|p| {
            let stack_index = p.u32(88);
            PacketDrop {
                envelope: p.envelope(),
                flow: p.flow(),
                reason: p.text(80),
                location: p.text(84),
                stack: stack(p.symbols, (stack_index != NONE).then_some(stack_index)),
            }
        })
        .collect()
}

/// The views of a packed `tcp_retrans` batch.
pub fn packed_tcp_retransmits(b: &wit::PackedBatch) -> Vec<TcpRetrans<'_>> {
    packed_records(b, 96)
        .map(|p| TcpRetrans {
            envelope: p.envelope(),
            flow: p.flow(),
            state: p.text(80),
        })
        .collect()
}

/// The views of a packed `tcp_reset` batch.
pub fn packed_tcp_resets(b: &wit::PackedBatch) -> Vec<TcpReset<'_>> {
    packed_records(b, 96)
        .map(|p| TcpReset {
            envelope: p.envelope(),
            flow: p.flow(),
            direction: p.text(80),
            state: p.opt_text(84),
        })
        .collect()
}

/// The views of a packed `tcp_connect` batch.
pub fn packed_tcp_connects(b: &wit::PackedBatch) -> Vec<TcpConnect<'_>> {
    packed_records(b, 104)
        .map(|p| {
            let ns = p.u64(88);
            TcpConnect {
                envelope: p.envelope(),
                flow: p.flow(),
                side: p.text(80),
                cause: p.opt_text(84),
                duration: (ns != u64::MAX).then(|| std::time::Duration::from_nanos(ns)),
                retransmits: p.r[96],
                error: p.opt_text(100),
            }
        })
        .collect()
}

/// The views of a packed `softirq` batch.
pub fn packed_softirqs(b: &wit::PackedBatch) -> Vec<Softirq<'_>> {
    packed_records(b, 104)
        .map(|p| Softirq {
            envelope: p.envelope(),
            vec: p.text(80),
            stage: p.text(84),
            duration: p.duration(88),
            cpu: p.u32(96),
        })
        .collect()
}

/// The views of a packed `netdev_latency` batch.
pub fn packed_netdev_latencies(b: &wit::PackedBatch) -> Vec<NetdevLatency<'_>> {
    packed_records(b, 104)
        .map(|p| NetdevLatency {
            envelope: p.envelope(),
            interface: p.text(80),
            ifindex: p.u32(84),
            stage: p.text(96),
            duration: p.duration(88),
            bytes: p.u32(100),
        })
        .collect()
}

/// The views of a packed `io_latency` batch.
pub fn packed_io_latencies(b: &wit::PackedBatch) -> Vec<IoLatency<'_>> {
    packed_records(b, 120)
        .map(|p| {
            let status = p.u32(112) as i32;
            IoLatency {
                envelope: p.envelope(),
                device: p.text(80),
                dev: p.text(84),
                op: p.text(96),
                duration: p.duration(88),
                bytes: p.u32(100),
                sector: p.u64(104),
                error: (status != 0).then_some(status),
            }
        })
        .collect()
}

/// The views of a packed `dns` batch.
pub fn packed_dns(b: &wit::PackedBatch) -> Vec<Dns<'_>> {
    packed_records(b, 112)
        .map(|p| {
            let u64_at =
                |at: usize| u64::from_le_bytes(p.r[at..at + 8].try_into().unwrap_or_default());
            let id = p.u32(84);
            let (ns, count) = (u64_at(88), u64_at(96));
            let rate = f64::from_le_bytes(p.r[104..112].try_into().unwrap_or_default());
            Dns {
                envelope: p.envelope(),
                flow: p.flow(),
                outcome: p.text(80),
                id: (id != u32::MAX).then_some(id as u16),
                duration: (ns != u64::MAX).then(|| std::time::Duration::from_nanos(ns)),
                count: (count != u64::MAX).then_some(count),
                rate: (!rate.is_nan()).then_some(rate),
            }
        })
        .collect()
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
}
