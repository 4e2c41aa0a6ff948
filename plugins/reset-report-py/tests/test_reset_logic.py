"""Unit tests of the pure logic (plain CPython, no component): python3 -m unittest discover tests"""

import os
import sys
import unittest
from types import SimpleNamespace as NS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from reset_logic import (  # noqa: E402
    DEFAULT_THRESHOLD, ConfigError, ResetWindows, count_batch, labels_of, parse_config)


def reset(netns, ns_pod, direction):
    wl = NS(namespace=ns_pod[0], pod=ns_pod[1]) if ns_pod else None
    return NS(envelope=NS(time_ns=0, node="n", netns=netns, workload=wl), flow=None,
              direction=direction, state=None)


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


if __name__ == "__main__":
    unittest.main()
