// `packet_drop` batches for the tests, typed and packed, from one list of drops; no jco, so
// both the logic tests and the fake host use it.
// A drop here is {netns, workload: {namespace, pod} or null, reason}. Every other drop travels
// over IPv6 (fd00::1 to fd00::2), the others over IPv4 (198.18.0.1 to 198.18.0.2), so that both
// cases of `ip-address` and both address families of the packed layout are exercised.

export const NONE = 0xffffffff;
export const NODE = 'node-1';
const TIME_NS = 1_700_000_000_000_000_000n;

// (source, destination) of each family, as the WIT `ip-address` holds them, most significant
// bits first: IPv4 as a u32, IPv6 as [high 64 bits, low 64 bits] (BigInts, jco's u64).
const IPV4 = [0xc6120001, 0xc6120002]; // 198.18.0.1, .2
const IPV6 = [[0xfd00n << 48n, 1n], [0xfd00n << 48n, 2n]]; // fd00::1, fd00::2
const isIpv6 = (i) => i % 2 === 1;

// Interns strings the way the host builds `symbols.strings`.
function strings() {
  const list = [];
  const index = new Map();
  const text = (s) => {
    if (!index.has(s)) {
      index.set(s, list.length);
      list.push(s);
    }
    return index.get(s);
  };
  return { list, text };
}

/** A `packet-drop-batch` as jco's bindings spell it. */
export function typedBatch(drops) {
  const { list, text } = strings();
  const events = drops.map(({ netns, workload, reason = 'NETFILTER_DROP' }, i) => {
    const [saddr, daddr] = isIpv6(i)
      ? IPV6.map((val) => ({ tag: 'ipv6', val }))
      : IPV4.map((val) => ({ tag: 'ipv4', val }));
    return {
      envelope: {
        timeNs: TIME_NS,
        netns,
        workload: workload ? { namespace: text(workload.namespace), pod: text(workload.pod) } : undefined,
      },
      flow: { protocol: text('tcp'), saddr, sport: 40000, daddr, dport: 80, peer: undefined },
      reason: text(reason),
      location: text('nf_hook_slow'),
      extra: [],
      stack: undefined,
    };
  });
  return { node: NODE, symbols: { strings: list, stacks: [] }, events };
}

/**
 * A `packed-batch` of `packet_drop` records, written field by field at the offsets of
 * wit/PACKED.md (reserved bytes zero; the node is the batch's, not the records'); bytes past 96
 * stand for a later version's fields.
 */
export function packedBatch(drops, { recordSize = 96, probe = 'packet_drop' } = {}) {
  const { list, text } = strings();
  const events = new Uint8Array(drops.length * recordSize);
  const view = new DataView(events.buffer);
  drops.forEach(({ netns, workload, reason = 'NETFILTER_DROP' }, i) => {
    const at = i * recordSize;
    const u32 = (off, v) => view.setUint32(at + off, v, true);
    view.setBigUint64(at, TIME_NS, true);
    u32(8, netns); // 12..16 reserved
    u32(16, workload ? text(workload.namespace) : NONE);
    u32(20, workload ? text(workload.pod) : NONE);
    u32(24, NONE); // peer unknown
    u32(28, NONE);
    u32(32, text('tcp'));
    view.setUint16(at + 36, 40000, true);
    view.setUint16(at + 38, 80, true);
    if (isIpv6(i)) {
      events.set([6, 6], at + 40);
      IPV6.forEach(([hi, lo], k) => {
        view.setBigUint64(at + 48 + 16 * k, hi, false); // network order
        view.setBigUint64(at + 56 + 16 * k, lo, false);
      });
    } else {
      events.set([4, 4], at + 40);
      IPV4.forEach((a, k) => view.setUint32(at + 48 + 16 * k, a, false));
    }
    u32(80, text(reason));
    u32(84, text('nf_hook_slow'));
    u32(88, NONE); // no stack
    events.fill(0xee, at + 96, at + recordSize);
  });
  return { probe, node: NODE, symbols: { strings: list, stacks: [] }, recordSize, count: drops.length, events };
}
