"""`tcp_reset` batches for the tests, typed and packed, from one list of resets; no WIT
bindings and no wasmtime, so both the logic tests and the fake host use it.

A reset here is (netns, (namespace, pod) or None, direction, state or None). Every other reset
travels over IPv6 (fd00::1 to fd00::2), the others over IPv4 (198.18.0.1 to 198.18.0.2), so
that both cases of `ip-address` and both address families of the packed layout are exercised.
"""

import struct
from types import SimpleNamespace

NONE = 0xFFFFFFFF
TIME_NS = 1_700_000_000_000_000_000
NODE = "node-1"

# (source, destination) of each family, as the WIT `ip-address` holds them: IPv4 as a u32,
# IPv6 as (high 64 bits, low 64 bits); most significant bits first.
IPV4 = (0xC6120001, 0xC6120002)                                        # 198.18.0.1, .2
IPV6 = ((0xFD00 << 48, 1), (0xFD00 << 48, 2))                          # fd00::1, fd00::2


def is_ipv6(i):
    """Whether the i-th reset of a batch travels over IPv6."""
    return i % 2 == 1


def _ipv4_bytes(a):
    return a.to_bytes(4, "big")


def _ipv6_bytes(a):
    return a[0].to_bytes(8, "big") + a[1].to_bytes(8, "big")


class Strings:
    """Interns strings the way the host builds `symbols.strings`."""

    def __init__(self):
        self.strings = []
        self._index = {}

    def __call__(self, s):
        if s is None:
            return None
        if s not in self._index:
            self._index[s] = len(self.strings)
            self.strings.append(s)
        return self._index[s]


def record(**fields):
    """A record readable both as componentize-py's (`time_ns`) and wasmtime-py's (`time-ns`)."""
    r = SimpleNamespace(**fields)
    for k, v in fields.items():
        setattr(r, k.replace("_", "-"), v)
    return r


def typed_batch(resets, record=record, ipv4=lambda a: SimpleNamespace(value=a),
                ipv6=lambda a: SimpleNamespace(value=a)):
    """A `tcp-reset-batch`; `record` builds the records, `ipv4` (given a u32) and `ipv6` (given
    (high, low)) the addresses."""
    text = Strings()
    events = []
    for i, (netns, wl, direction, state) in enumerate(resets):
        ref = record(namespace=text(wl[0]), pod=text(wl[1])) if wl else None
        env = record(time_ns=TIME_NS, netns=netns, workload=ref)
        saddr, daddr = map(ipv6, IPV6) if is_ipv6(i) else map(ipv4, IPV4)
        flow = record(protocol=text("tcp"), saddr=saddr, sport=40000, daddr=daddr, dport=80,
                      peer=None)
        events.append(record(envelope=env, flow=flow, direction=text(direction),
                             state=text(state), extra=[]))
    return record(node=NODE, symbols=record(strings=text.strings, stacks=[]), events=events)


def packed_batch(resets, record_size=96):
    """(strings, record_size, count, events) of a packed `tcp_reset` batch, written field by
    field at the offsets of wit/PACKED.md (reserved bytes zero; the node is the batch's, not
    the records'); bytes past 96 stand for a later version's fields."""
    text = Strings()
    some = lambda i: NONE if i is None else i  # noqa: E731
    events = bytearray()
    for i, (netns, wl, direction, state) in enumerate(resets):
        r = bytearray(record_size)
        struct.pack_into("<QI", r, 0, TIME_NS, netns)               # 12..16 reserved
        struct.pack_into("<II", r, 16, *((text(wl[0]), text(wl[1])) if wl else (NONE, NONE)))
        struct.pack_into("<II", r, 24, NONE, NONE)                  # peer unknown
        family = 6 if is_ipv6(i) else 4
        struct.pack_into("<IHHBB", r, 32, text("tcp"), 40000, 80, family, family)
        if family == 6:
            r[48:64], r[64:80] = map(_ipv6_bytes, IPV6)
        else:
            r[48:52], r[64:68] = map(_ipv4_bytes, IPV4)
        struct.pack_into("<II", r, 80, text(direction), some(text(state)))
        r[96:] = b"\xee" * (record_size - 96)
        events += r
    return text.strings, record_size, len(resets), bytes(events)
