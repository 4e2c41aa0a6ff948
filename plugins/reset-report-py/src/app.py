"""reset-report: the WIT glue (world `reset-report` in ../wit/world.wit, on `sonde:plugin@0.2.1`).

Each exported interface is a class of this module named after it (`Init`, `Tick`,
`TcpResetHandler`, `PackedHandler`), subclassing the protocol componentize-py generates.

The logic is in `reset_logic.py`; this module only talks to the host. It must not print or use
time, randomness or files: the component is built with WASI stubbed out, so any of those traps.
"""

from typing import Dict, Iterable, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import events, log, metrics, types

from reset_logic import (
    ConfigError, Reset, ResetWindows, count_batch, labels_of, parse_config, resets_of_batch,
    resets_of_packed)

METRIC = "sonde_plugin_resets_reported_total"
METRIC_HELP = "TCP resets seen by the reset-report plugin, by workload and direction."
EVENT_KIND = "reset_report"

_windows = ResetWindows()
_counter: Optional[int] = None  # metric handle; None when metrics are not granted
_series: Dict[Tuple[str, str, str], Optional[int]] = {}  # None: the host refused that series
_warned = set()


def _describe(err) -> str:
    """Text of a `types.error` raised by a host call."""
    value = err.value if isinstance(err, Err) else err
    if isinstance(value, types.Error_NotGranted):
        return f"not granted: {value.value}"
    if isinstance(value, types.Error_Invalid):
        return f"invalid: {value.value}"
    if isinstance(value, types.Error_Limit):
        return f"limit: {value.value}"
    return str(value)


def _warn_once(what: str, err) -> None:
    if what not in _warned:
        _warned.add(what)
        log.log(log.Level.WARN, f"{what}: {_describe(err)}")


def _series_of(namespace: str, pod: str, direction: str) -> Optional[int]:
    k = (namespace, pod, direction)
    if k in _series:
        return _series[k]
    handle = None
    try:
        handle = metrics.with_labels(_counter, [namespace, pod, direction])
    except Err as e:
        _warn_once(f"{METRIC} series refused", e)
    _series[k] = handle
    return handle


def _count(resets: Iterable[Reset]) -> None:
    """Counts a batch's resets, whichever delivery brought them."""
    for (key, netns, direction), n in count_batch(resets).items():
        _windows.add(key, netns, direction, n)
        if _counter is not None:
            namespace, pod = labels_of(key)
            handle = _series_of(namespace, pod, direction)
            if handle is not None:
                try:
                    metrics.add(handle, float(n))
                except Err as e:
                    _warn_once(f"{METRIC} add refused", e)


class Init(exports.Init):
    def init(self, config: str) -> None:
        global _windows, _counter
        try:
            _windows = ResetWindows(parse_config(config))
        except ConfigError as e:
            raise Err(str(e))
        try:
            _counter = metrics.register_counter(
                METRIC, METRIC_HELP, ["namespace", "pod", "direction"])
        except Err as e:
            _counter = None
            _warn_once(f"{METRIC} not registered", e)
        log.log(log.Level.INFO, f"reset-report: threshold {_windows.threshold} resets per tick")


class TcpResetHandler(exports.TcpResetHandler):
    def handle(self, batch: types.TcpResetBatch) -> None:
        _count(resets_of_batch(batch))


class PackedHandler(exports.PackedHandler):
    def handle(self, batch: types.PackedBatch) -> None:
        if batch.probe != "tcp_reset":
            return
        try:
            _count(resets_of_packed(batch.symbols.strings, batch.record_size, batch.count,
                                    batch.events))
        except ValueError as e:
            # A malformed batch is skipped; raising here would trap and restart the plugin.
            _warn_once("packed tcp_reset batch skipped", e)


class Tick(exports.Tick):
    def tick(self, now_ns: int) -> None:
        for r in _windows.tick():
            workload = types.Workload(r.key[0], r.key[1]) if r.key is not None else None
            event = events.Event(
                kind=EVENT_KIND,
                severity=events.Severity.WARNING,
                netns=r.netns,
                workload=workload,
                message=(f"{r.total} TCP resets in the last interval ({r.sent} sent, "
                         f"{r.received} received), over the threshold of {_windows.threshold}"),
                fields=[
                    ("sent", events.Value_Integer(r.sent)),
                    ("received", events.Value_Integer(r.received)),
                    ("threshold", events.Value_Integer(_windows.threshold)),
                ],
            )
            try:
                events.emit(event)
            except Err as e:
                _warn_once(f"{EVENT_KIND} not emitted", e)
