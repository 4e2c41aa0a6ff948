//! Turning the agent's events into what a plugin receives: typed batches (`list<record>`) or
//! packed batches (`list<u8>`, laid out as wit/PACKED.md says). Both share one enrichment step
//! ([`Common`]) and one string table per batch ([`Symbols`]): every string an event mentions is
//! sent once per batch and referred to by index, so an event costs a fixed-size copy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::sonde::plugin::types as wit;
use crate::event::{Event, Flow};
use crate::topology::Workload;

/// "None" for a `text` or a stack index in the packed layout.
pub const NONE: u32 = u32::MAX;
/// Bytes of the shortest packed records (others are longer, `Probe::record_size`).
pub const PACKED_RECORD_SIZE: usize = 96;

/// Keys of the intern tables: a string's (or stack's) address and length. The strings of one
/// batch live in the events until the batch is built, so equal
/// addresses mean equal strings; most of an event's strings are shared `Arc`s, so the address
/// is found again without reading the text.
type AddrMap<V> = crate::addr_hash::AddrMap<(usize, usize), V>;

/// Slots of the direct-mapped cache in front of `Symbols::text_index`.
const CACHE_SLOTS: usize = 256;

/// The string and stack tables of one batch being built. One is kept per plugin and reused
/// from batch to batch (`reset`), so that a small batch does not pay for its tables.
pub struct Symbols {
    /// The last string seen in each slot, by address and length, with its index and the
    /// batch it was seen in: most lookups end here without hashing.
    cache: Box<[(usize, usize, u32, u32); CACHE_SLOTS]>,
    /// The batch being built, as the cache knows it.
    generation: u32,
    strings: Vec<String>,
    stacks: Vec<Vec<u32>>,
    text_index: AddrMap<u32>,
    /// The same strings by content, for equal strings at different addresses.
    by_content: HashMap<String, u32>,
    stack_index: AddrMap<u32>,
}

impl Default for Symbols {
    fn default() -> Self {
        Symbols {
            cache: Box::new([(0, usize::MAX, 0, 0); CACHE_SLOTS]),
            generation: 1,
            strings: Vec::new(),
            stacks: Vec::new(),
            text_index: AddrMap::default(),
            by_content: HashMap::new(),
            stack_index: AddrMap::default(),
        }
    }
}

impl Symbols {
    /// Forgets the previous batch (keeping the tables' memory).
    pub(crate) fn reset(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.cache.fill((0, usize::MAX, 0, 0));
            self.generation = 1;
        }
        self.strings.clear();
        self.stacks.clear();
        self.text_index.clear();
        self.by_content.clear();
        self.stack_index.clear();
    }

    pub fn text(&mut self, s: &str) -> u32 {
        let key = (s.as_ptr() as usize, s.len());
        let slot = ((key.0 >> 4) ^ (key.0 >> 12)) % CACHE_SLOTS;
        let cached = self.cache[slot];
        if (cached.0, cached.1, cached.3) == (key.0, key.1, self.generation) {
            return cached.2;
        }
        let i = self.text_index_of(s, key);
        self.cache[slot] = (key.0, key.1, i, self.generation);
        i
    }

    fn text_index_of(&mut self, s: &str, key: (usize, usize)) -> u32 {
        if let Some(&i) = self.text_index.get(&key) {
            return i;
        }
        let i = match self.by_content.get(s) {
            Some(&i) => i,
            None => {
                let i = self.strings.len() as u32;
                self.strings.push(s.to_owned());
                self.by_content.insert(s.to_owned(), i);
                i
            }
        };
        self.text_index.insert(key, i);
        i
    }

    pub(crate) fn stack(&mut self, frames: &Arc<[Arc<str>]>) -> u32 {
        let key = (frames.as_ptr() as usize, frames.len());
        if let Some(&i) = self.stack_index.get(&key) {
            return i;
        }
        let texts = frames.iter().map(|f| self.text(f)).collect();
        let i = self.stacks.len() as u32;
        self.stacks.push(texts);
        self.stack_index.insert(key, i);
        i
    }

    fn workload(&mut self, w: &Workload) -> wit::WorkloadRef {
        wit::WorkloadRef {
            namespace: self.text(&w.namespace),
            pod: self.text(&w.pod),
        }
    }

    /// The batch's tables; the next batch starts afresh.
    pub(crate) fn finish(&mut self) -> wit::Symbols {
        let symbols = wit::Symbols {
            strings: std::mem::take(&mut self.strings),
            stacks: std::mem::take(&mut self.stacks),
        };
        self.reset();
        symbols
    }
}

/// What every event carries, with its strings interned; the flow's fields are none (text and
/// addresses) or 0 (ports) for events without one.
pub struct Common {
    time_ns: u64,
    netns: u32,
    workload: Option<wit::WorkloadRef>,
    protocol: u32,
    saddr: Option<IpAddr>,
    sport: u16,
    daddr: Option<IpAddr>,
    dport: u16,
    peer: Option<wit::WorkloadRef>,
}

impl Common {
    pub fn new(e: &Event, flow: Option<&Flow>, sym: &mut Symbols) -> Common {
        // The other end, as the enrichment stage found it.
        let peer = flow.and(e.peer.as_ref()).map(|w| sym.workload(w));
        Common {
            time_ns: e
                .time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64,
            netns: e.netns,
            workload: e.workload.as_ref().map(|w| sym.workload(w)),
            protocol: flow.map_or(NONE, |f| sym.text(&f.protocol)),
            saddr: flow.and_then(|f| f.saddr),
            sport: flow.map_or(0, |f| f.sport),
            daddr: flow.and_then(|f| f.daddr),
            dport: flow.map_or(0, |f| f.dport),
            peer,
        }
    }

    pub fn envelope(&self) -> wit::Envelope {
        wit::Envelope {
            time_ns: self.time_ns,
            netns: self.netns,
            workload: self.workload,
        }
    }

    pub fn flow(&self) -> wit::Flow {
        wit::Flow {
            protocol: self.protocol,
            saddr: self.saddr.map(ip_address),
            sport: self.sport,
            daddr: self.daddr.map(ip_address),
            dport: self.dport,
            peer: self.peer,
        }
    }

    /// Bytes 0 to 79 of a packed record.
    fn pack(&self, r: &mut [u8]) {
        let (ns, pod) = split(self.workload);
        let (peer_ns, peer_pod) = split(self.peer);
        r[0..8].copy_from_slice(&self.time_ns.to_le_bytes());
        put_u32(r, 8, self.netns);
        put_u32(r, 16, ns);
        put_u32(r, 20, pod);
        put_u32(r, 24, peer_ns);
        put_u32(r, 28, peer_pod);
        put_u32(r, 32, self.protocol);
        r[36..38].copy_from_slice(&self.sport.to_le_bytes());
        r[38..40].copy_from_slice(&self.dport.to_le_bytes());
        r[40] = pack_addr(self.saddr, &mut r[48..64]);
        r[41] = pack_addr(self.daddr, &mut r[64..80]);
    }
}

fn split(w: Option<wit::WorkloadRef>) -> (u32, u32) {
    w.map_or((NONE, NONE), |w| (w.namespace, w.pod))
}

fn put_u32(r: &mut [u8], at: usize, v: u32) {
    r[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes an address into its 16 bytes and returns its family byte.
fn pack_addr(a: Option<IpAddr>, out: &mut [u8]) -> u8 {
    match a {
        Some(IpAddr::V4(v4)) => {
            out[..4].copy_from_slice(&v4.octets());
            4
        }
        Some(IpAddr::V6(v6)) => {
            out.copy_from_slice(&v6.octets());
            6
        }
        None => 0,
    }
}

pub(super) fn ip_address(a: IpAddr) -> wit::IpAddress {
    match a {
        IpAddr::V4(v4) => wit::IpAddress::Ipv4(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            wit::IpAddress::Ipv6(((bits >> 64) as u64, bits as u64))
        }
    }
}

pub use crate::probes::{Delivery, EventProbe as Probe};

/// The events of `probe` in `events`, `chunk` at a time (each chunk with its own symbols), as
/// typed batches or packed ones.
pub fn batches(
    events: &[Event],
    probe: Probe,
    packed: bool,
    chunk: usize,
    sym: &mut Symbols,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    let mut of_probe = events
        .iter()
        .filter(|e| e.kind.probe() == Some(probe))
        .peekable();
    while of_probe.peek().is_some() {
        let part = of_probe.by_ref().take(chunk.max(1));
        out.push(if packed {
            Delivery::Packed(packed_batch(probe, part, sym))
        } else {
            typed_batch(probe, part, sym)
        });
    }
    out
}

/// A typed batch of `probe`'s events (the others in `events` are skipped).
pub fn typed_batch<'a>(
    probe: Probe,
    events: impl Iterator<Item = &'a Event>,
    sym: &mut Symbols,
) -> Delivery {
    Delivery::typed(probe, events, sym)
}

/// A packed batch of `probe`'s events (the others in `events` are skipped).
pub fn packed_batch<'a>(
    probe: Probe,
    events: impl Iterator<Item = &'a Event>,
    sym: &mut Symbols,
) -> wit::PackedBatch {
    sym.reset();
    let mut events = events.peekable();
    let node = events
        .peek()
        .map_or_else(String::new, |e| e.node.to_string());
    let size = probe.record_size();
    let mut bytes = Vec::with_capacity(events.size_hint().0 * size);
    let mut count = 0u32;
    let mut record = vec![0u8; size];
    for e in events.filter(|e| e.kind.probe() == Some(probe)) {
        let r = &mut record[..];
        r.fill(0);
        e.kind.pack(sym, r);
        Common::new(e, e.kind.flow(), sym).pack(r);
        bytes.extend_from_slice(r);
        count += 1;
    }
    wit::PackedBatch {
        probe: probe.name().to_string(),
        node: node.to_string(),
        symbols: sym.finish(),
        record_size: size as u32,
        count,
        events: bytes,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::net::Ipv4Addr;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::event::{Kind, Severity};
    use crate::probes::packet_drop::PacketDrop;
    use crate::probes::tcp_reset::TcpReset;

    fn drop_event(pod: &Workload, node: &Arc<str>, reason: &Arc<str>, dport: u16) -> Event {
        let mut e = Event::kernel(
            UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123),
            4026531993,
            Severity::Warning,
            Kind::PacketDrop(PacketDrop {
                flow: Flow {
                    protocol: Cow::Borrowed("udp"),
                    saddr: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
                    sport: 4000,
                    daddr: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
                    dport,
                },
                reason: Arc::clone(reason),
                location: Arc::from("nf_hook_slow"),
                stack: None,
            }),
        );
        e.node = Arc::clone(node);
        e.workload = Some(pod.clone());
        // The owner of daddr, as the enrichment stage finds it: a new allocation of "shop"
        // each time.
        e.peer = Some(Workload {
            namespace: Arc::from("shop"),
            pod: Arc::from("db"),
        });
        e
    }

    #[test]
    fn strings_are_sent_once_per_batch_and_records_agree_across_deliveries() {
        let node: Arc<str> = Arc::from("node-1");
        let reason: Arc<str> = Arc::from("NETFILTER_DROP");
        let web = Workload {
            namespace: Arc::from("shop"),
            pod: Arc::from("web"),
        };
        let mut events: Vec<Event> = (0..5)
            .map(|i| drop_event(&web, &node, &reason, 53 + i))
            .collect();
        events.push(Event::kernel(
            SystemTime::now(),
            1,
            Severity::Info,
            Kind::TcpReset(TcpReset {
                flow: events[0].kind.flow().unwrap().clone(),
                direction: "sent",
                state: None,
            }),
        ));

        let mut sym = Symbols::default();
        let typed = batches(&events, Probe::PacketDrop, false, 3, &mut sym);
        assert_eq!(typed.iter().map(Delivery::len).collect::<Vec<_>>(), [3, 2]);
        let Delivery::PacketDrop(first) = &typed[0] else {
            panic!("typed batch expected")
        };
        // shop, web, udp, db (the peer), NETFILTER_DROP, nf_hook_slow: each once, even where
        // equal strings are different allocations.
        assert_eq!(first.node, "node-1");
        assert_eq!(
            first.symbols.strings.len(),
            6,
            "{:?}",
            first.symbols.strings
        );
        let s = |i: u32| first.symbols.strings[i as usize].as_str();
        let e = &first.events[1];
        assert_eq!(e.envelope.time_ns, 1_700_000_000_123);
        let w = e.envelope.workload.unwrap();
        assert_eq!((s(w.namespace), s(w.pod)), ("shop", "web"));
        let peer = e.flow.peer.unwrap();
        assert_eq!((s(peer.namespace), s(peer.pod)), ("shop", "db"));
        assert!(matches!(
            e.flow.daddr,
            Some(wit::IpAddress::Ipv4(0x0a00_0002))
        ));
        assert_eq!((e.flow.sport, e.flow.dport), (4000, 54));
        assert_eq!(
            (s(e.reason), s(e.location)),
            ("NETFILTER_DROP", "nf_hook_slow")
        );
        assert_eq!(e.stack, None);

        let packed = batches(&events, Probe::PacketDrop, true, 1024, &mut sym);
        let [Delivery::Packed(p)] = &packed[..] else {
            panic!("one packed batch expected")
        };
        assert_eq!(
            (p.probe.as_str(), p.count, p.record_size),
            ("packet_drop", 5, 96)
        );
        assert_eq!(p.events.len(), 5 * PACKED_RECORD_SIZE);
        let r = &p.events[PACKED_RECORD_SIZE..2 * PACKED_RECORD_SIZE];
        let u32_at = |at: usize| u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
        let text = |at: usize| p.symbols.strings[u32_at(at) as usize].as_str();
        assert_eq!(
            u64::from_le_bytes(r[0..8].try_into().unwrap()),
            1_700_000_000_123
        );
        assert_eq!(u32_at(8), 4026531993);
        assert_eq!(p.node, "node-1");
        assert_eq!(u32_at(12), 0, "reserved");
        assert_eq!((text(16), text(20)), ("shop", "web"));
        assert_eq!((text(24), text(28), text(32)), ("shop", "db", "udp"));
        assert_eq!(u16::from_le_bytes([r[36], r[37]]), 4000);
        assert_eq!(u16::from_le_bytes([r[38], r[39]]), 54);
        assert_eq!((r[40], r[41]), (4, 4));
        assert_eq!(&r[48..52], &[10, 0, 0, 1]);
        assert_eq!(&r[64..68], &[10, 0, 0, 2]);
        assert!(r[42..48].iter().chain(&r[68..80]).all(|b| *b == 0));
        assert_eq!(
            (text(80), text(84), u32_at(88)),
            ("NETFILTER_DROP", "nf_hook_slow", NONE)
        );

        let resets = batches(&events, Probe::TcpReset, true, 1024, &mut sym);
        let [Delivery::Packed(p)] = &resets[..] else {
            panic!("one packed batch expected")
        };
        let r = &p.events[..];
        assert_eq!(p.count, 1);
        assert_eq!(
            p.symbols.strings[u32::from_le_bytes(r[80..84].try_into().unwrap()) as usize],
            "sent"
        );
        assert_eq!(&r[84..88], &NONE.to_le_bytes());
        // No workload: namespace and pod are none.
        assert_eq!(&r[16..24], &[0xff; 8]);
        assert!(batches(&events, Probe::TcpRetrans, false, 1024, &mut sym).is_empty());
    }

    #[test]
    fn latency_events_have_no_flow_and_their_own_fields_in_both_deliveries() {
        use crate::probes::io_latency::IoLatency;
        use crate::probes::netdev_latency::NetdevLatency;
        let node: Arc<str> = Arc::from("node-1");
        let kinds = [
            Kind::NetdevLatency(NetdevLatency {
                interface: "eth0".into(),
                ifindex: 2,
                stage: "xmit",
                duration: Duration::from_micros(15),
                bytes: 64,
            }),
            Kind::IoLatency(IoLatency {
                device: "loop3".into(),
                dev: "7:3".into(),
                op: "write",
                duration: Duration::from_millis(2),
                bytes: 4096,
                sector: 8,
                error: Some(10),
            }),
        ];
        let events: Vec<Event> = kinds
            .into_iter()
            .map(|k| {
                let mut e = Event::kernel(UNIX_EPOCH, 7, Severity::Warning, k);
                e.node = Arc::clone(&node);
                e
            })
            .collect();
        let mut sym = Symbols::default();
        let Delivery::NetdevLatency(b) = typed_batch(Probe::NetdevLatency, events.iter(), &mut sym)
        else {
            panic!("typed netdev_latency batch expected")
        };
        let e = &b.events[0];
        let s = |i: u32| b.symbols.strings[i as usize].as_str();
        assert_eq!((s(e.interface), s(e.stage)), ("eth0", "xmit"));
        assert_eq!((e.ifindex, e.duration_ns, e.bytes), (2, 15_000, 64));
        assert_eq!(e.envelope.netns, 7);
        assert!(e.envelope.workload.is_none());
        let Delivery::IoLatency(b) = typed_batch(Probe::IoLatency, events.iter(), &mut sym) else {
            panic!("typed io_latency batch expected")
        };
        assert_eq!((b.events.len(), b.events[0].error), (1, Some(10)));

        let [Delivery::Packed(p)] = &batches(&events, Probe::IoLatency, true, 64, &mut sym)[..]
        else {
            panic!("one packed batch expected")
        };
        assert_eq!(
            (p.probe.as_str(), p.count, p.record_size),
            ("io_latency", 1, 120)
        );
        let r = &p.events[..];
        let u32_at = |at: usize| u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().unwrap());
        let text = |at: usize| p.symbols.strings[u32_at(at) as usize].as_str();
        // No flow: protocol, peer and workload none, no addresses, ports 0.
        assert_eq!(&r[16..36], &[0xff; 20]);
        assert!(r[36..80].iter().all(|b| *b == 0));
        assert_eq!((text(80), text(84), text(96)), ("loop3", "7:3", "write"));
        assert_eq!((u64_at(88), u32_at(100), u64_at(104)), (2_000_000, 4096, 8));
        assert_eq!(u32_at(112), 10);
    }

    #[test]
    fn stacks_are_interned_frame_by_frame() {
        let node: Arc<str> = Arc::from("n");
        let reason: Arc<str> = Arc::from("NO_SOCKET");
        let web = Workload {
            namespace: Arc::from(""),
            pod: Arc::from("web"),
        };
        let stack: Arc<[Arc<str>]> =
            vec![Arc::from("kfree_skb+0x1"), Arc::from("ip_rcv+0x20")].into();
        let events: Vec<Event> = (0..3)
            .map(|_| {
                let mut e = drop_event(&web, &node, &reason, 80);
                if let Kind::PacketDrop(d) = &mut e.kind {
                    d.stack = Some(Arc::clone(&stack));
                }
                e
            })
            .collect();
        let Delivery::PacketDrop(b) =
            typed_batch(Probe::PacketDrop, events.iter(), &mut Symbols::default())
        else {
            panic!("typed batch expected")
        };
        assert_eq!(b.symbols.stacks.len(), 1);
        let frames: Vec<&str> = b.symbols.stacks[0]
            .iter()
            .map(|i| b.symbols.strings[*i as usize].as_str())
            .collect();
        assert_eq!(frames, ["kfree_skb+0x1", "ip_rcv+0x20"]);
        assert!(b.events.iter().all(|e| e.stack == Some(0)));
    }
}
