"""Pure logic of the reset-report plugin: no WIT bindings, so it runs under plain CPython.

`app.py` feeds it the `tcp_reset` batches (typed or packed, both read here into the same
resets) and the ticks, and turns what it returns into host calls (metrics, events).
"""

import json
import struct
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

DEFAULT_THRESHOLD = 10
CONFIG_KEYS = ("threshold",)

# A workload key: (namespace, pod), or None for the host (events without a workload).
Key = Optional[Tuple[str, str]]


class ConfigError(ValueError):
    """`spec.config` is not what the plugin accepts; `init` refuses the bundle with it."""


def parse_config(text: str) -> int:
    """Returns `threshold` from the JSON config (default 10)."""
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError("config must be an object")
    unknown = sorted(k for k in config if k not in CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})")
    threshold = config.get("threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, float) and threshold.is_integer():
        threshold = int(threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ConfigError(
            f"threshold must be a non-negative integer, got {json.dumps(threshold)}")
    return threshold


def labels_of(key: Key) -> Tuple[str, str]:
    """Metric labels (namespace, pod) of a key; the host's are empty."""
    return key if key is not None else ("", "")


@dataclass
class Report:
    """A workload whose resets in one tick interval exceeded the threshold."""
    key: Key
    netns: int
    sent: int
    received: int

    @property
    def total(self) -> int:
        return self.sent + self.received


class _Window:
    __slots__ = ("netns", "sent", "received")

    def __init__(self, netns: int):
        self.netns = netns
        self.sent = 0
        self.received = 0


class ResetWindows:
    """Resets per workload and direction since the last tick."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD):
        self.threshold = threshold
        self._windows: Dict[Key, _Window] = {}

    def add(self, key: Key, netns: int, direction: str, n: int = 1) -> None:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window(netns)
        w.netns = netns
        if direction == "sent":
            w.sent += n
        elif direction == "received":
            w.received += n
        # Any other direction is counted by the metric only (the WIT promises just these two).

    def tick(self) -> List[Report]:
        """Reports of the workloads whose resets (sent + received) since the previous tick
        exceed the threshold, sorted by key; starts a new interval."""
        reports = [
            Report(key, w.netns, w.sent, w.received)
            for key, w in self._windows.items()
            if w.sent + w.received > self.threshold
        ]
        self._windows.clear()
        reports.sort(key=lambda r: labels_of(r.key) + (r.key is None,))
        return reports


# A reset as the plugin counts it: (workload key, netns, direction).
Reset = Tuple[Key, int, str]

# `text` and stack indices that mean none in the packed layout (wit/PACKED.md).
NONE = 0xFFFFFFFF
# The fields of a packed `tcp_reset` record this plugin reads (wit/PACKED.md): netns at 8,
# workload namespace and pod at 16 and 20, direction at 80. Bytes 84.. (state) are not read.
_PACKED_RESET = struct.Struct("<8xI4xII56xI")


def resets_of_batch(batch) -> Iterator[Reset]:
    """The resets of a typed batch (shaped like the WIT `tcp-reset-batch`), their texts
    resolved through `batch.symbols.strings`."""
    strings = batch.symbols.strings
    for r in batch.events:
        env = r.envelope
        wl = env.workload
        key = (strings[wl.namespace], strings[wl.pod]) if wl is not None else None
        yield key, env.netns, strings[r.direction]


def resets_of_packed(strings: Sequence[str], record_size: int, count: int,
                     events: bytes) -> Iterator[Reset]:
    """The resets of a packed `tcp_reset` batch (the fields of the WIT `packed-batch`).
    Steps by `record_size`, as later versions append fields; raises ValueError when the
    records are too short for the fields read or `events` holds fewer than `count`."""
    if record_size < _PACKED_RESET.size:
        raise ValueError(f"record-size {record_size} is below {_PACKED_RESET.size}")
    if len(events) < count * record_size:
        raise ValueError(f"{len(events)} bytes cannot hold {count} records of {record_size}")
    for at in range(0, count * record_size, record_size):
        netns, namespace, pod, direction = _PACKED_RESET.unpack_from(events, at)
        key = (strings[namespace], strings[pod]) if namespace != NONE else None
        yield key, netns, strings[direction]


def count_batch(resets: Iterable[Reset]) -> Dict[Reset, int]:
    """Groups a batch's resets by (workload key, netns, direction) so that each series is
    updated once per batch."""
    out: Dict[Reset, int] = {}
    for r in resets:
        out[r] = out.get(r, 0) + 1
    return out
