// Unit tests of the pure logic (plain Node, no component): node --test test/
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ConfigError, DEFAULT_BUDGET, DropBudget, countBatch, keyOf, labelsOf, parseConfig } from '../src/logic.js';

const wl = (namespace, pod) => ({ namespace, pod });
const drop = (netns, workload) => ({ envelope: { timeNs: 0n, node: 'n', netns, workload }, flow: {}, reason: 'X', location: 'f', stack: [] });

test('config: default and explicit budget', () => {
  assert.equal(parseConfig('{}'), DEFAULT_BUDGET);
  assert.equal(parseConfig(''), 100);
  assert.equal(parseConfig('null'), 100);
  assert.equal(parseConfig('{"budget": 5}'), 5);
  assert.equal(parseConfig('{"budget": 5.0}'), 5);
});

test('config: refused values name the problem', () => {
  for (const [text, needle] of [
    ['[1]', 'object'],
    ['{', 'not JSON'],
    ['{"budgte": 1}', "unknown config key 'budgte'"],
    ['{"budget": 0}', 'positive integer'],
    ['{"budget": -4}', 'positive integer'],
    ['{"budget": 1.5}', 'positive integer'],
    ['{"budget": "100"}', 'positive integer'],
    ['{"budget": true}', 'positive integer'],
  ]) {
    assert.throws(() => parseConfig(text), (e) => e instanceof ConfigError && e.message.includes(needle), text);
  }
});

test('keys and labels: the host has empty labels', () => {
  assert.deepEqual(labelsOf(null), ['', '']);
  assert.deepEqual(labelsOf(wl('a', 'b')), ['a', 'b']);
  assert.notEqual(keyOf(wl('a', 'bc')), keyOf(wl('ab', 'c')));
});

test('countBatch groups by workload and netns', () => {
  const a = wl('shop', 'cart');
  const groups = countBatch([drop(5, a), drop(5, { ...a }), drop(6, wl('shop', 'web')), drop(1, undefined)]);
  assert.deepEqual(groups.map((g) => [labelsOf(g.workload), g.netns, g.count]), [
    [['shop', 'cart'], 5, 2],
    [['shop', 'web'], 6, 1],
    [['', ''], 1, 1],
  ]);
});

test('tick: gauge for every workload seen, report over budget only', () => {
  const b = new DropBudget(4);
  b.add(wl('a', 'p1'), 10, 3);
  b.add(wl('a', 'p1'), 10, 2); // 5 > 4
  b.add(wl('a', 'p2'), 11, 4); // 4 is not over 4
  b.add(null, 1, 1);
  const { gauges, reports } = b.tick();
  assert.deepEqual(gauges.map((g) => [labelsOf(g.workload), g.ratio]), [
    [['', ''], 0.25],
    [['a', 'p1'], 1.25],
    [['a', 'p2'], 1],
  ]);
  assert.deepEqual(reports, [{ workload: wl('a', 'p1'), netns: 10, drops: 5 }]);
});

test('tick: counts are per interval; a quiet workload goes to 0 once', () => {
  const b = new DropBudget(1);
  b.add(wl('a', 'p'), 3, 2);
  assert.equal(b.tick().reports.length, 1);
  let t = b.tick();
  assert.deepEqual(t, { gauges: [{ workload: wl('a', 'p'), ratio: 0 }], reports: [] });
  t = b.tick();
  assert.deepEqual(t, { gauges: [], reports: [] });
});
