// Pure logic of the drop-budget plugin: no WIT imports, so it runs under plain Node
// (test/logic.test.js). plugin.js feeds it the packet_drop batches (typed or packed, both read
// here into the same drops) and ticks, and turns what it returns into host calls.

export const DEFAULT_BUDGET = 100;
const CONFIG_KEYS = ['budget'];

export class ConfigError extends Error {}

/** Returns `budget` from the JSON config (default 100); throws ConfigError. */
export function parseConfig(text) {
  let config;
  try {
    config = text.trim() === '' ? {} : JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config is not JSON: ${e.message}`);
  }
  if (config === null) config = {};
  if (typeof config !== 'object' || Array.isArray(config)) {
    throw new ConfigError('config must be an object');
  }
  const unknown = Object.keys(config).filter((k) => !CONFIG_KEYS.includes(k)).sort();
  if (unknown.length > 0) {
    throw new ConfigError(`unknown config key '${unknown[0]}' (known: ${CONFIG_KEYS.join(', ')})`);
  }
  const budget = 'budget' in config ? config.budget : DEFAULT_BUDGET;
  if (typeof budget !== 'number' || !Number.isSafeInteger(budget) || budget < 1) {
    throw new ConfigError(`budget must be a positive integer, got ${JSON.stringify(budget)}`);
  }
  return budget;
}

/** The map key of a workload ({namespace, pod}), or of the host (no workload). */
export function keyOf(workload) {
  return workload ? `${workload.namespace}\u0000${workload.pod}` : '';
}

/** Metric labels [namespace, pod] of a workload; the host's are empty. */
export function labelsOf(workload) {
  return workload ? [workload.namespace, workload.pod] : ['', ''];
}

/** A `text` or stack index that means none in the packed layout (wit/PACKED.md). */
export const NONE = 0xffffffff;
/** The end of the last field of a packed `packet_drop` record this plugin reads (`pod`). */
const PACKED_DROP_READ = 24;

/**
 * The drops of a typed batch (shaped like the WIT `packet-drop-batch`) as
 * {workload: {namespace, pod} or null, netns}, the texts resolved through `symbols.strings`.
 */
export function* dropsOfBatch(batch) {
  const { strings } = batch.symbols;
  for (const { envelope } of batch.events) {
    const w = envelope.workload;
    const workload = w ? { namespace: strings[w.namespace], pod: strings[w.pod] } : null;
    yield { workload, netns: envelope.netns };
  }
}

/**
 * The drops of a packed `packet_drop` batch (shaped like the WIT `packed-batch`), as
 * `dropsOfBatch` gives them. Steps by `recordSize` (later versions append fields); throws
 * RangeError when the records are too short for the fields read or `events` holds fewer
 * than `count`.
 */
export function* dropsOfPacked({ symbols, recordSize, count, events }) {
  if (recordSize < PACKED_DROP_READ) throw new RangeError(`record-size ${recordSize} is below ${PACKED_DROP_READ}`);
  if (events.byteLength < count * recordSize) {
    throw new RangeError(`${events.byteLength} bytes cannot hold ${count} records of ${recordSize}`);
  }
  const { strings } = symbols;
  const view = new DataView(events.buffer, events.byteOffset, events.byteLength);
  for (let at = 0; at < count * recordSize; at += recordSize) {
    const netns = view.getUint32(at + 8, true);
    const namespace = view.getUint32(at + 16, true);
    const pod = view.getUint32(at + 20, true);
    const workload = namespace !== NONE ? { namespace: strings[namespace], pod: strings[pod] } : null;
    yield { workload, netns };
  }
}

/** Groups a batch's drops ({workload, netns}) by workload and netns. */
export function countBatch(drops) {
  const out = new Map();
  for (const { workload, netns } of drops) {
    const k = `${keyOf(workload)}\u0001${netns}`;
    const entry = out.get(k);
    if (entry) entry.count += 1;
    else out.set(k, { workload, netns, count: 1 });
  }
  return [...out.values()];
}

/** Drops per workload since the last tick, against a budget. */
export class DropBudget {
  constructor(budget = DEFAULT_BUDGET) {
    this.budget = budget;
    this.window = new Map(); // key -> {workload, netns, drops}
    this.previous = new Map(); // key -> workload, of the previous interval
  }

  add(workload, netns, n = 1) {
    const k = keyOf(workload);
    const w = this.window.get(k);
    if (w) {
      w.drops += n;
      w.netns = netns;
    } else {
      this.window.set(k, { workload, netns, drops: n });
    }
  }

  /**
   * Ends the interval. Returns
   * - `gauges`: [{workload, ratio}] for each workload seen in the interval (drops / budget),
   *   and ratio 0 for each seen in the previous interval but not in this one, so that a pod
   *   that stopped dropping does not keep its last ratio;
   * - `reports`: [{workload, netns, drops}] for each workload whose drops exceed the budget.
   * Both sorted by namespace, then pod (the host first).
   */
  tick() {
    const byLabels = (a, b) => {
      const [x, y] = [labelsOf(a.workload), labelsOf(b.workload)];
      return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0;
    };
    const gauges = [];
    const reports = [];
    const seen = new Map();
    for (const [k, w] of this.window) {
      seen.set(k, w.workload);
      gauges.push({ workload: w.workload, ratio: w.drops / this.budget });
      if (w.drops > this.budget) {
        reports.push({ workload: w.workload, netns: w.netns, drops: w.drops });
      }
    }
    for (const [k, workload] of this.previous) {
      if (!seen.has(k)) gauges.push({ workload, ratio: 0 });
    }
    this.previous = seen;
    this.window = new Map();
    return { gauges: gauges.sort(byLabels), reports: reports.sort(byLabels) };
  }
}
