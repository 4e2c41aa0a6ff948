"""Unit tests of the pure logic (plain CPython, no component): python3 -m unittest discover tests"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))

from reset_logic import (  # noqa: E402
    DEFAULT_THRESHOLD, ConfigError, ResetWindows, count_batch, labels_of, parse_config,
    resets_of_batch, resets_of_packed)
from batches import packed_batch, typed_batch  # noqa: E402

# Resets as (netns, (namespace, pod) or None, direction, state or None).
RESETS = [
    (5, ("shop", "cart"), "sent", "ESTABLISHED"),
    (5, ("shop", "cart"), "sent", "ESTABLISHED"),
    (5, ("shop", "cart"), "received", None),
    (6, ("shop", "web"), "received", "SYN_SENT"),
    (4026531840, None, "sent", None),
]


def reset(netns, ns_pod, direction):
    """A reset as `count_batch` takes it."""
    return (ns_pod, netns, direction)


class ConfigTest(unittest.TestCase):
    def test_default(self):
        self.assertEqual(parse_config("{}"), DEFAULT_THRESHOLD)
        self.assertEqual(parse_config(""), 10)
        self.assertEqual(parse_config("null"), 10)

    def test_threshold(self):
        self.assertEqual(parse_config('{"threshold": 3}'), 3)
        self.assertEqual(parse_config('{"threshold": 0}'), 0)
        self.assertEqual(parse_config('{"threshold": 7.0}'), 7)

    def test_refused(self):
        for text, needle in [
            ("[1]", "object"),
            ("{", "not JSON"),
            ('{"treshold": 3}', "unknown config key 'treshold'"),
            ('{"threshold": -1}', "non-negative integer"),
            ('{"threshold": 2.5}', "non-negative integer"),
            ('{"threshold": "10"}', "non-negative integer"),
            ('{"threshold": true}', "non-negative integer"),
        ]:
            with self.subTest(text=text):
                with self.assertRaises(ConfigError) as cm:
                    parse_config(text)
                self.assertIn(needle, str(cm.exception))


class WindowTest(unittest.TestCase):
    def test_over_threshold_only_and_reset_each_tick(self):
        w = ResetWindows(threshold=3)
        w.add(("a", "p1"), 10, "sent", 2)
        w.add(("a", "p1"), 10, "received", 2)   # 4 > 3: reported
        w.add(("a", "p2"), 11, "sent", 3)       # 3 is not over 3
        reports = w.tick()
        self.assertEqual(len(reports), 1)
        r = reports[0]
        self.assertEqual((r.key, r.netns, r.sent, r.received, r.total), (("a", "p1"), 10, 2, 2, 4))
        self.assertEqual(w.tick(), [])          # a new interval starts empty

    def test_counts_are_per_interval(self):
        w = ResetWindows(threshold=1)
        w.add(("a", "p"), 1, "sent", 2)
        self.assertEqual(w.tick()[0].sent, 2)
        w.add(("a", "p"), 1, "received", 1)
        self.assertEqual(w.tick(), [])

    def test_host_and_unknown_direction(self):
        w = ResetWindows(threshold=0)
        w.add(None, 4026531840, "received", 1)
        w.add(("b", "q"), 2, "sideways", 5)     # counted by the metric only
        reports = w.tick()
        self.assertEqual([(r.key, r.received) for r in reports], [(None, 1)])
        self.assertEqual(labels_of(None), ("", ""))

    def test_sorted(self):
        w = ResetWindows(threshold=0)
        for pod in ["z", "a", "m"]:
            w.add(("ns", pod), 1, "sent")
        self.assertEqual([r.key[1] for r in w.tick()], ["a", "m", "z"])


class BatchTest(unittest.TestCase):
    def test_groups_by_workload_netns_direction(self):
        batch = [reset(5, ("a", "p"), "sent"), reset(5, ("a", "p"), "sent"),
                 reset(5, ("a", "p"), "received"), reset(1, None, "sent")]
        self.assertEqual(count_batch(batch), {
            (("a", "p"), 5, "sent"): 2,
            (("a", "p"), 5, "received"): 1,
            (None, 1, "sent"): 1,
        })

    def test_typed_batch_resolves_texts(self):
        self.assertEqual(list(resets_of_batch(typed_batch(RESETS))), [
            (("shop", "cart"), 5, "sent"),
            (("shop", "cart"), 5, "sent"),
            (("shop", "cart"), 5, "received"),
            (("shop", "web"), 6, "received"),
            (None, 4026531840, "sent"),
        ])
        self.assertEqual(list(resets_of_batch(typed_batch([]))), [])

    def test_packed_equals_typed(self):
        typed = list(resets_of_batch(typed_batch(RESETS)))
        self.assertEqual(list(resets_of_packed(*packed_batch(RESETS))), typed)
        # A later version's longer records: the same resets.
        self.assertEqual(list(resets_of_packed(*packed_batch(RESETS, record_size=112))), typed)
        self.assertEqual(list(resets_of_packed(*packed_batch([]))), [])

    def test_packed_and_typed_report_the_same(self):
        def run(resets):
            w = ResetWindows(threshold=2)
            counts = count_batch(resets)
            for (key, netns, direction), n in counts.items():
                w.add(key, netns, direction, n)
            return counts, w.tick()
        self.assertEqual(run(resets_of_packed(*packed_batch(RESETS))),
                         run(resets_of_batch(typed_batch(RESETS))))
        counts, reports = run(resets_of_packed(*packed_batch(RESETS)))
        self.assertEqual(counts[(("shop", "cart"), 5, "sent")], 2)
        self.assertEqual([(r.key, r.sent, r.received) for r in reports],
                         [(("shop", "cart"), 2, 1)])

    def test_packed_refuses_malformed(self):
        strings, size, count, events = packed_batch(RESETS)
        for args, needle in [
            ((strings, 80, count, events), "record-size 80"),
            ((strings, size, count + 1, events), "cannot hold"),
        ]:
            with self.subTest(needle=needle):
                with self.assertRaises(ValueError) as cm:
                    list(resets_of_packed(*args))
                self.assertIn(needle, str(cm.exception))


if __name__ == "__main__":
    unittest.main()
