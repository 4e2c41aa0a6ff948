"""Component tests: run the built reset_report.wasm in a fake host (wasmtime-py).

Skipped unless RESET_REPORT_WASM names the built component and the `wasmtime` package imports;
`bash test.sh --component` builds the component and sets both up.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

WASM = os.environ.get("RESET_REPORT_WASM")
try:
    import wasmtime  # noqa: F401
    from fake_host import FakeHost, iface, packed_batch, tcp_reset, workload
    HAVE_WASMTIME = True
except ImportError:
    HAVE_WASMTIME = False

METRIC = "sonde_plugin_resets_reported_total"


@unittest.skipUnless(WASM and HAVE_WASMTIME, "set RESET_REPORT_WASM and install wasmtime")
class ComponentTest(unittest.TestCase):
    def host(self, **kw):
        return FakeHost(WASM, **kw)

    def test_world(self):
        h = self.host()
        # Only the interfaces it implements (its world, wit/world.wit).
        ours = [e for e in h.exports if e.startswith("sonde:plugin/")]
        self.assertEqual(ours, [iface(n) for n in ["init", "packed-handler",
                                                        "tcp-reset-handler", "tick"]])
        # Built with WASI stubbed out: the component imports nothing but sonde:plugin.
        self.assertEqual([i for i in h.imports if not i.startswith("sonde:plugin/")], [])

    def test_memory_fits_16mib(self):
        h = self.host(memory_limit=16 << 20)
        self.assertIsNone(h.init("{}"))
        h.on_tcp_reset([tcp_reset(i, workload("ns", f"p{i}"), "sent") for i in range(500)])
        h.tick()

    def test_reports_and_counter(self):
        h = self.host()
        self.assertIsNone(h.init('{"threshold": 2}'))
        self.assertEqual(h.metrics[0][:2], ("counter", METRIC))
        self.assertEqual(h.metrics[0][3], ["namespace", "pod", "direction"])
        cart, web = workload("shop", "cart"), workload("shop", "web")
        h.on_tcp_reset([tcp_reset(5, cart, "sent"), tcp_reset(5, cart, "received"),
                        tcp_reset(6, web, "received"), tcp_reset(1, None, "sent")])
        h.on_tcp_reset([tcp_reset(5, cart, "received")])
        self.assertEqual(h.events, [])
        h.tick()
        self.assertEqual(h.events, [{
            "kind": "reset_report", "severity": "warning", "netns": 5,
            "workload": ("shop", "cart"),
            "message": "3 TCP resets in the last interval (1 sent, 2 received), "
                       "over the threshold of 2",
            "fields": {"sent": 1, "received": 2, "threshold": 2},
        }])
        self.assertEqual(h.values, {
            (METRIC, ("shop", "cart", "sent")): 1.0,
            (METRIC, ("shop", "cart", "received")): 2.0,
            (METRIC, ("shop", "web", "received")): 1.0,
            (METRIC, ("", "", "sent")): 1.0,
        })
        # The window starts again; the counter keeps counting.
        h.tick()
        self.assertEqual(len(h.events), 1)
        h.on_tcp_reset([tcp_reset(5, cart, "sent")])
        self.assertEqual(h.values[(METRIC, ("shop", "cart", "sent"))], 2.0)
        self.assertEqual(len(h.series), 4)   # handles are resolved once per label set

    def test_packed_same_as_typed(self):
        cart, web = workload("shop", "cart"), workload("shop", "web")
        resets = [tcp_reset(5, cart, "sent"), tcp_reset(5, cart, "received", None),
                  tcp_reset(6, web, "received"), tcp_reset(1, None, "sent", None)]
        outputs = []
        for deliver in ["typed", "packed", "packed, longer records"]:
            with self.subTest(deliver=deliver):
                h = self.host()
                self.assertIsNone(h.init('{"threshold": 1}'))
                if deliver == "typed":
                    h.on_tcp_reset(resets)
                    h.on_tcp_reset(resets[:1])
                else:
                    size = 96 if deliver == "packed" else 128
                    h.on_packed(packed_batch(resets, record_size=size))
                    h.on_packed(packed_batch(resets[:1], record_size=size))
                    h.on_packed(packed_batch(resets, probe="tcp_retrans"))  # not subscribed: ignored
                h.tick()
                outputs.append((h.events, h.values, h.series, h.logs))
        self.assertEqual(outputs[0][0][0]["fields"], {"sent": 2, "received": 1, "threshold": 1})
        self.assertEqual(outputs[1], outputs[0])
        self.assertEqual(outputs[2], outputs[0])

    def test_malformed_packed_batch_skipped(self):
        h = self.host()
        self.assertIsNone(h.init("{}"))
        batch = packed_batch([tcp_reset(5, workload("a", "b"), "sent")])
        batch.count = 2                 # more records than its bytes hold
        h.on_packed(batch)
        h.on_packed(batch)
        self.assertEqual(h.values, {})
        self.assertEqual([m for lvl, m in h.logs if lvl == "warn"],
                         ["packed tcp_reset batch skipped: 96 bytes cannot hold 2 records of 96"])

    def test_bad_config_refused(self):
        self.assertIn("unknown config key", self.host().init('{"treshold": 1}'))
        self.assertIn("non-negative", self.host().init('{"threshold": -3}'))

    def test_without_capabilities(self):
        h = self.host(capabilities=())
        self.assertIsNone(h.init('{"threshold": 0}'))
        h.on_tcp_reset([tcp_reset(5, workload("a", "b"), "sent")])
        h.tick()
        self.assertEqual((h.events, h.values), ([], {}))
        warns = [m for lvl, m in h.logs if lvl == "warn"]
        self.assertEqual(len(warns), 2)   # counter not registered, event not emitted: once each

    def test_series_limit(self):
        h = self.host(series_limit=1)
        self.assertIsNone(h.init("{}"))
        h.on_tcp_reset([tcp_reset(5, workload("a", "b"), "sent"),
                        tcp_reset(5, workload("a", "b"), "received")])
        h.on_tcp_reset([tcp_reset(5, workload("a", "b"), "received")])
        self.assertEqual(len(h.values), 1)
        self.assertEqual(len([m for lvl, m in h.logs if lvl == "warn"]), 1)

if __name__ == "__main__":
    unittest.main()
