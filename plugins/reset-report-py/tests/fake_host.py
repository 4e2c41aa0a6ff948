"""A fake Sonde host for component tests: loads a plugin component with the `wasmtime` Python
package (component model API) and implements the `sonde:plugin@0.2.0` imports in Python,
recording what the plugin does (metrics, events, logs).

Values follow wasmtime-py's conventions: records are objects whose attributes are the WIT field
names (kebab-case), enums are their case names, options are None or the value, results and
variants are plain values unless their cases are ambiguous (`types.error` is a `Variant`).
"""

import wasmtime
from wasmtime import component as cm

import batches

PKG = "sonde:plugin"
VER = "0.2.0"


def iface(name: str) -> str:
    return f"{PKG}/{name}@{VER}"


def record(**fields):
    """A WIT record value; `time_ns=` becomes the field `time-ns`."""
    r = cm.Record()
    for k, v in fields.items():
        setattr(r, k.replace("_", "-"), v)
    return r


def workload(namespace, pod):
    return record(namespace=namespace, pod=pod)


def tcp_reset(netns, wl, direction, state="ESTABLISHED"):
    """A reset for `reset_batch` and `packed_batch`; `wl` is a `workload` or None."""
    return (netns, (wl.namespace, wl.pod) if wl is not None else None, direction, state)


def reset_batch(resets):
    """A `tcp-reset-batch` of `tcp_reset`s."""
    # wasmtime-py tags a variant (`Variant(tag, payload)`) only when two of its cases have
    # the same Python type; `ip-address`'s cases are an int and a tuple, so it takes the bare
    # payload: 0xc6120001 for ipv4, (high, low) for ipv6.
    return batches.typed_batch(resets, record=record, ipv4=int, ipv6=tuple)


def packed_batch(resets, probe="tcp_reset", record_size=96):
    """A `packed-batch` of `tcp_reset`s."""
    strings, size, count, events = batches.packed_batch(resets, record_size)
    return record(probe=probe, node=batches.NODE, symbols=record(strings=strings, stacks=[]),
                  record_size=size, count=count, events=events)


_ENGINE = None
_COMPILED = {}


def compiled(wasm_path):
    """(engine, component), compiled once per process (an 18 MB component takes seconds)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = wasmtime.Engine()
    if wasm_path not in _COMPILED:
        _COMPILED[wasm_path] = cm.Component.from_file(_ENGINE, wasm_path)
    return _ENGINE, _COMPILED[wasm_path]


class FakeHost:
    def __init__(self, wasm_path, capabilities=("metrics", "events"), memory_limit=None,
                 series_limit=1000):
        self.engine, self.component = compiled(wasm_path)
        self.imports = sorted(self.component.type.imports(self.engine).keys())
        self.exports = sorted(self.component.type.exports(self.engine).keys())
        self.store = wasmtime.Store(self.engine)
        if memory_limit is not None:
            self.store.set_limits(memory_size=memory_limit)
        self.capabilities = set(capabilities)
        self.series_limit = series_limit
        self.logs = []          # (level, message)
        self.metrics = []       # (kind, name, help, label-names, buckets)
        self.series = []        # (metric, label-values)
        self.values = {}        # (metric name, label-values tuple) -> value
        self.events = []        # dicts
        linker = cm.Linker(self.engine)
        if any(i.startswith("wasi:") for i in self.imports):
            linker.add_wasip2()
            self.store.set_wasi(wasmtime.WasiConfig())
        self._define(linker)
        self.instance = linker.instantiate(self.store, self.component)

    # ---- imports -------------------------------------------------------------------------
    def _refuse(self, cap):
        if cap not in self.capabilities:
            return cm.Variant("not-granted", cap)
        return None

    def _define(self, linker):
        root = linker.root()
        with root.add_instance(iface("types")):
            pass
        with root.add_instance(iface("log")) as log:
            log.add_func("log", lambda _s, level, msg: self.logs.append((level, msg)))
        with root.add_instance(iface("metrics")) as m:
            def register(kind):
                def f(_s, name, help_, labels, buckets=None):
                    err = self._refuse("metrics")
                    if err:
                        return err
                    if not name.startswith("sonde_"):
                        return cm.Variant("invalid", f"name {name} must start with sonde_")
                    self.metrics.append((kind, name, help_, list(labels), buckets))
                    return len(self.metrics) - 1
                return f
            m.add_func("register-counter", register("counter"))
            m.add_func("register-gauge", register("gauge"))
            m.add_func("register-histogram", register("histogram"))

            def series(_s, metric, values):
                err = self._refuse("metrics")
                if err:
                    return err
                if metric >= len(self.metrics):
                    return cm.Variant("invalid", f"unknown metric {metric}")
                if len(values) != len(self.metrics[metric][3]):
                    return cm.Variant("invalid", "wrong label count")
                if len(self.series) >= self.series_limit:
                    return cm.Variant("limit", f"{self.series_limit} series")
                self.series.append((metric, tuple(values)))
                return len(self.series) - 1
            m.add_func("with-labels", series)

            def update(op):
                def f(_s, handle, value):
                    err = self._refuse("metrics")
                    if err:
                        return err
                    if handle >= len(self.series):
                        return cm.Variant("invalid", f"unknown series {handle}")
                    metric, values = self.series[handle]
                    kind, name = self.metrics[metric][0], self.metrics[metric][1]
                    key = (name, values)
                    if op == "add":
                        if kind != "counter" or value < 0:
                            return cm.Variant("invalid", "add")
                        self.values[key] = self.values.get(key, 0.0) + value
                    elif op == "set":
                        if kind != "gauge":
                            return cm.Variant("invalid", "set")
                        self.values[key] = value
                    else:
                        self.values.setdefault(key, []).append(value)
                    return None
                return f
            m.add_func("add", update("add"))
            m.add_func("set", update("set"))
            m.add_func("observe", update("observe"))
        with root.add_instance(iface("events")) as ev:
            def emit(_s, event):
                err = self._refuse("events")
                if err:
                    return err
                wl = event.workload
                self.events.append({
                    "kind": event.kind,
                    "severity": event.severity,
                    "netns": event.netns,
                    "workload": (wl.namespace, wl.pod) if wl is not None else None,
                    "message": event.message,
                    "fields": dict(event.fields),
                })
                return None
            ev.add_func("emit", emit)
        with root.add_instance(iface("topology")) as t:
            t.add_func("workload-of-netns", lambda _s, _n: self._refuse("topology") or None)
            t.add_func("workload-of-ip", lambda _s, _ip: self._refuse("topology") or None)
        with root.add_instance(iface("maps")) as mp:
            mp.add_func("counters", lambda _s, _p: self._refuse("maps") or [])
            mp.add_func("flows", lambda _s: self._refuse("maps") or [])
        with root.add_instance(iface("control")) as c:
            c.add_func("set-event-rate", lambda _s, _p, _r, _d: self._refuse("control"))

    # ---- exports -------------------------------------------------------------------------
    def call(self, interface, name, *args):
        """Calls function `name` of the exported interface `interface`."""
        at = self.instance.get_export_index(self.store, iface(interface))
        assert at is not None, f"export {iface(interface)} missing"
        func = self.instance.get_func(self.store, self.instance.get_export_index(self.store, name, at))
        assert func is not None, f"export {iface(interface)} has no {name}"
        result = func(self.store, *args)
        try:
            func.post_return(self.store)
        except wasmtime.WasmtimeError:
            pass
        return result

    def init(self, config="{}"):
        return self.call("init", "init", config)

    def on_tcp_reset(self, resets):
        return self.call("tcp-reset-handler", "handle", reset_batch(resets))

    def on_packed(self, batch):
        return self.call("packed-handler", "handle", batch)

    def tick(self, now_ns=1_700_000_001_000_000_000):
        return self.call("tick", "tick", now_ns)
