// Builds the component with componentize-js through its JS API (the `jco componentize` command
// failed on a path error with componentize-js 0.23; see README.md, "Notes on the toolchain").
// Usage: node build.mjs WIT_DIR OUT_FILE   (build.sh calls it)
import { writeFile } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join, resolve } from 'node:path';

import { componentize, version } from '@bytecodealliance/componentize-js';

const [witDir, outFile] = process.argv.slice(2);
if (!witDir || !outFile) {
  console.error('usage: node build.mjs WIT_DIR OUT_FILE');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));

// Workaround for a componentize-js bug (0.23.0, see README "u32 arguments of imports"): the
// native stub it generates for each import reads an `i32` argument as the low 32 bits of the
// JS::Value, without checking that the value is an int32. The generated bindings lower a `u32`
// with `val >>> 0`, which is a double for values >= 2^31, so the host received the low half of
// the double's bits (4026532386 arrived as 1145044992). The bindings' `toUint32` is rewritten
// to `val | 0`: the same 32 bits, always an int32, which the stub reads correctly. The build
// fails if the helper no longer looks as expected, so a toolchain update gets looked at.
const TO_UINT32 = /function toUint32\(val\) \{\s*return val >>> 0;\s*\}/g;
const splicerUrl = pathToFileURL(join(here, 'node_modules', '@bytecodealliance', 'componentize-js',
  'lib', 'spidermonkey-embedding-splicer.js')).href;
const { splicer } = await import(splicerUrl); // the instance componentize() calls
const spliceBindings = splicer.spliceBindings;
let patched = false;
splicer.spliceBindings = (...args) => {
  const result = spliceBindings(...args);
  const { jsBindings } = result;
  if (/\btoUint32\b/.test(jsBindings)) {
    const found = jsBindings.match(TO_UINT32)?.length ?? 0;
    if (found !== 1) {
      throw new Error(`componentize-js ${version}: the bindings' toUint32 helper is not the expected `
        + '`return val >>> 0` (README: u32 arguments of imports); re-check the workaround in build.mjs');
    }
    result.jsBindings = jsBindings.replace(TO_UINT32,
      'function toUint32(val) {\n  return val | 0; // sonde drop-budget-js: an int32 for the import stubs\n}');
  }
  patched = true;
  return result;
};

try {
  const { component } = await componentize({
    sourcePath: join(here, 'src', 'plugin.js'),
    witPath: resolve(witDir),
    worldName: 'drop-budget',
    // A pure component: no WASI imports at all (no stdio, clocks, randomness, HTTP).
    disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
  });
  if (!patched) throw new Error('componentize() did not go through the patched spliceBindings (build.mjs)');
  await writeFile(outFile, component);
} catch (e) {
  // One line: the error's message and causes, without backtraces.
  const parts = [];
  for (let err = e; err && parts.length < 8; err = err.cause) {
    const text = String(err.message ?? err);
    for (const line of text.split('\n')) {
      const l = line.trim();
      if (l !== '' && !/^at /.test(l) && !/^\d+: 0x/.test(l) && !parts.includes(l)) parts.push(l);
    }
  }
  console.error(parts.join(' -- ') || 'unknown error');
  process.exit(1);
}
