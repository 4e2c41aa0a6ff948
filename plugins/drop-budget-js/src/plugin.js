// drop-budget: the WIT glue (world `drop-budget` in ../wit/world.wit, on `sonde:plugin@0.2.1`).
// Each exported interface is an exported object whose methods are the interface's functions.
//
// The logic is in logic.js; this module only talks to the host. It must not use console,
// Date, Math.random or timers: the component is built with every WASI feature disabled, so
// those would trap or return fixed values.

import { log } from 'sonde:plugin/log@0.2.1';
import { registerGauge, withLabels, set } from 'sonde:plugin/metrics@0.2.1';
import { emit } from 'sonde:plugin/events@0.2.1';

import {
  ConfigError, DEFAULT_BUDGET, DropBudget, countBatch, dropsOfBatch, dropsOfPacked, labelsOf, parseConfig,
} from './logic.js';

const METRIC = 'sonde_plugin_drop_budget_used';
const METRIC_HELP = 'Packets a pod dropped in the last tick interval, as a fraction of the drop-budget plugin\'s budget.';
const EVENT_KIND = 'drop_budget_exceeded';

let state = new DropBudget(DEFAULT_BUDGET);
let gauge = null; // metric handle; null when metrics are not granted
const series = new Map(); // "namespace\0pod" -> handle, or null when the host refused it
const warned = new Set();

// Text of a `types.error` thrown by a host call (jco throws an Error whose `payload` is the
// variant {tag, val}).
function describe(e) {
  const v = e && Object.prototype.hasOwnProperty.call(e, 'payload') ? e.payload : e;
  if (v && typeof v === 'object' && 'tag' in v) return `${v.tag}: ${v.val}`;
  return String(v);
}

function warnOnce(what, e) {
  if (warned.has(what)) return;
  warned.add(what);
  log('warn', `${what}: ${describe(e)}`);
}

function seriesOf(workload) {
  const labels = labelsOf(workload);
  const k = labels.join('\u0000');
  if (series.has(k)) return series.get(k);
  let handle = null;
  try {
    handle = withLabels(gauge, labels);
  } catch (e) {
    warnOnce(`${METRIC} series refused`, e);
  }
  series.set(k, handle);
  return handle;
}

// An error for a `result<_, string>` export: jco lowers the own `payload` as `err`.
function refuse(message) {
  const e = new Error(message);
  e.payload = message;
  return e;
}

function initPlugin(config) {
  try {
    state = new DropBudget(parseConfig(config));
  } catch (e) {
    if (e instanceof ConfigError) throw refuse(e.message);
    throw e;
  }
  try {
    gauge = registerGauge(METRIC, METRIC_HELP, ['namespace', 'pod']);
  } catch (e) {
    gauge = null;
    warnOnce(`${METRIC} not registered`, e);
  }
  log('info', `drop-budget: budget ${state.budget} drops per pod per tick`);
}

// Counts a batch's drops, whichever delivery brought them.
function countDrops(drops) {
  for (const { workload, netns, count } of countBatch(drops)) {
    state.add(workload, netns, count);
  }
}

function onPacketDrop(batch) {
  countDrops(dropsOfBatch(batch));
}

function onPacked(batch) {
  if (batch.probe !== 'packet_drop') return;
  try {
    countDrops(dropsOfPacked(batch));
  } catch (e) {
    // A malformed batch is skipped; throwing here would trap and restart the plugin.
    if (!(e instanceof RangeError)) throw e;
    warnOnce('packed packet_drop batch skipped', e.message);
  }
}

function onTick(_nowNs) {
  const { gauges, reports } = state.tick();
  if (gauge !== null) {
    for (const { workload, ratio } of gauges) {
      const handle = seriesOf(workload);
      if (handle === null) continue;
      try {
        set(handle, ratio);
      } catch (e) {
        warnOnce(`${METRIC} set refused`, e);
      }
    }
  }
  for (const { workload, netns, drops } of reports) {
    try {
      emit({
        kind: EVENT_KIND,
        severity: 'warning',
        netns,
        workload: workload ?? undefined,
        message: `${drops} packets dropped in the last interval, over the budget of ${state.budget}`,
        fields: [
          ['drops', { tag: 'integer', val: BigInt(drops) }],
          ['budget', { tag: 'integer', val: BigInt(state.budget) }],
        ],
      });
    } catch (e) {
      warnOnce(`${EVENT_KIND} not emitted`, e);
    }
  }
}

export const init = { init: initPlugin };
export const tick = { tick: onTick };
export const packetDropHandler = { handle: onPacketDrop };
export const packedHandler = { handle: onPacked };
