// A fake Sonde host for component tests: transpiles the built component with jco (the
// component becomes core wasm + JS glue that Node runs) and implements the
// `sonde:plugin@0.2.0` imports in JS, recording what the plugin does.
//
// jco's conventions: records are objects with camelCase fields, options are undefined or the
// value, u64/s64 are BigInt, enums are strings, variants are {tag, val}; an import returning
// `result<T, error>` returns T or throws an object whose payload is the error variant.
import { mkdtemp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { transpile } from '@bytecodealliance/jco';

import { NODE } from './batches.js';

const IFACE = (name) => `sonde:plugin/${name}@0.2.0`;

let transpiled = null; // {dir, cores}: transpile once per process

async function load(wasmPath) {
  if (transpiled) return transpiled;
  const bytes = await readFile(wasmPath);
  const { files } = await transpile(bytes, { name: 'plugin', instantiation: 'async', noTypescript: true });
  const dir = await mkdtemp(join(tmpdir(), 'sonde-drop-budget-'));
  for (const [name, data] of Object.entries(files)) {
    await mkdir(dirname(join(dir, name)), { recursive: true });
    await writeFile(join(dir, name), data);
  }
  const mod = await import(pathToFileURL(join(dir, 'plugin.js')).href);
  const cores = new Map();
  transpiled = { dir, mod, cores };
  return transpiled;
}

const err = (tag, val) => ({ payload: { tag, val } });

export async function fakeHost(wasmPath, { capabilities = ['metrics', 'events'], seriesLimit = 1000 } = {}) {
  const { dir, mod, cores } = await load(wasmPath);
  const granted = new Set(capabilities);
  const h = { logs: [], metrics: [], series: [], values: new Map(), events: [] };
  const need = (cap) => {
    if (!granted.has(cap)) throw err('not-granted', cap);
  };
  const register = (kind) => (name, help, labelNames, buckets) => {
    need('metrics');
    if (!name.startsWith('sonde_')) throw err('invalid', `name ${name} must start with sonde_`);
    h.metrics.push({ kind, name, help, labelNames, buckets });
    return h.metrics.length - 1;
  };
  const update = (op) => (handle, value) => {
    need('metrics');
    const s = h.series[handle];
    if (!s) throw err('invalid', `unknown series ${handle}`);
    const m = h.metrics[s.metric];
    const key = `${m.name}{${s.labels.join(',')}}`;
    if (op === 'set') {
      if (m.kind !== 'gauge') throw err('invalid', 'set on a non-gauge');
      h.values.set(key, value);
    } else if (op === 'add') {
      if (m.kind !== 'counter' || value < 0) throw err('invalid', 'add');
      h.values.set(key, (h.values.get(key) ?? 0) + value);
    } else {
      h.values.set(key, [...(h.values.get(key) ?? []), value]);
    }
  };
  const notGranted = (cap) => () => {
    need(cap);
    return undefined;
  };
  const imports = {
    [IFACE('types')]: {},
    [IFACE('log')]: { log: (level, message) => h.logs.push([level, message]) },
    [IFACE('metrics')]: {
      registerCounter: register('counter'),
      registerGauge: register('gauge'),
      registerHistogram: register('histogram'),
      withLabels: (metric, labels) => {
        need('metrics');
        const m = h.metrics[metric];
        if (!m) throw err('invalid', `unknown metric ${metric}`);
        if (labels.length !== m.labelNames.length) throw err('invalid', 'wrong label count');
        if (h.series.length >= seriesLimit) throw err('limit', `${seriesLimit} series`);
        h.series.push({ metric, labels: [...labels] });
        return h.series.length - 1;
      },
      add: update('add'),
      set: update('set'),
      observe: update('observe'),
    },
    [IFACE('events')]: {
      emit: (event) => {
        need('events');
        h.events.push({
          ...event,
          fields: Object.fromEntries(event.fields.map(([k, v]) => [k, v])),
        });
      },
    },
    [IFACE('topology')]: { workloadOfNetns: notGranted('topology'), workloadOfIp: notGranted('topology') },
    [IFACE('maps')]: { counters: notGranted('maps'), flows: notGranted('maps') },
    [IFACE('control')]: { setEventRate: notGranted('control') },
  };
  // jco names the imports without their version ('sonde:plugin/log'); accept both spellings.
  for (const [name, impl] of Object.entries(imports)) imports[name.replace(/@[^@]*$/, '')] = impl;
  const getCoreModule = async (path) => {
    if (!cores.has(path)) cores.set(path, await WebAssembly.compile(await readFile(join(dir, path))));
    return cores.get(path);
  };
  const instance = await mod.instantiate(getCoreModule, imports);
  // Its exported interfaces (wit/world.wit), one function each, under the names the tests use.
  h.exports = Object.keys(instance).filter((k) => !k.includes(':')).sort();
  h.plugin = {
    init: (config) => instance.init.init(config),
    tick: (nowNs) => instance.tick.tick(nowNs),
    onPacketDrop: (batch) => instance.packetDropHandler.handle(batch),
    onPacked: (batch) => instance.packedHandler.handle(batch),
  };
  return h;
}

export const workload = (namespace, pod) => ({ namespace, pod });

export { NODE, packedBatch, typedBatch } from './batches.js';

/** A drop for `typedBatch` and `packedBatch`. */
export const packetDrop = (netns, workload, reason = 'NETFILTER_DROP') => ({ netns, workload, reason });

/** An empty batch of any typed handler. */
export const emptyBatch = () => ({ node: NODE, symbols: { strings: [], stacks: [] }, events: [] });
