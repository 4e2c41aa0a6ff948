// Unit tests of the pure logic (plain Node, no component): node --test test/
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ConfigError, DEFAULT_BUDGET, DropBudget, countBatch, dropsOfBatch, dropsOfPacked, keyOf, labelsOf, parseConfig,
} from '../src/logic.js';
import { packedBatch, typedBatch } from './batches.js';

const wl = (namespace, pod) => ({ namespace, pod });
const drop = (netns, workload) => ({ workload: workload ?? null, netns });
const DROPS = [
  { netns: 5, workload: wl('shop', 'cart') },
  { netns: 5, workload: wl('shop', 'cart'), reason: 'NO_SOCKET' },
  { netns: 6, workload: wl('shop', 'web') },
  { netns: 6, workload: wl('shop', 'web') },
  { netns: 6, workload: wl('shop', 'web') },
  { netns: 4026531840, workload: null },
];

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

test('typed batch: texts resolved through symbols', () => {
  assert.deepEqual([...dropsOfBatch(typedBatch(DROPS))], DROPS.map((d) => drop(d.netns, d.workload)));
  assert.deepEqual([...dropsOfBatch(typedBatch([]))], []);
});

test('packed batch: the same drops as the typed one, whatever the record size', () => {
  const typed = [...dropsOfBatch(typedBatch(DROPS))];
  assert.deepEqual([...dropsOfPacked(packedBatch(DROPS))], typed);
  assert.deepEqual([...dropsOfPacked(packedBatch(DROPS, { recordSize: 112 }))], typed);
  assert.deepEqual([...dropsOfPacked(packedBatch([]))], []);
  // A batch that is a view into a larger buffer (as lifted lists may be).
  const p = packedBatch(DROPS);
  const big = new Uint8Array(p.events.byteLength + 13);
  big.set(p.events, 7);
  assert.deepEqual([...dropsOfPacked({ ...p, events: big.subarray(7, 7 + p.events.byteLength) })], typed);
});

test('packed and typed batches give the same gauges and reports', () => {
  const run = (drops) => {
    const b = new DropBudget(2);
    for (const { workload, netns, count } of countBatch(drops)) b.add(workload, netns, count);
    return b.tick();
  };
  const typed = run(dropsOfBatch(typedBatch(DROPS)));
  assert.deepEqual(run(dropsOfPacked(packedBatch(DROPS))), typed);
  assert.deepEqual(typed.reports, [{ workload: wl('shop', 'web'), netns: 6, drops: 3 }]);
  assert.equal(typed.gauges.length, 3);
});

test('packed batch: malformed sizes are refused', () => {
  const p = packedBatch(DROPS);
  assert.throws(() => [...dropsOfPacked({ ...p, recordSize: 16 })], /record-size 16/);
  assert.throws(() => [...dropsOfPacked({ ...p, count: p.count + 1 })], /cannot hold 7 records of 96/);
});
