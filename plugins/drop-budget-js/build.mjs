// Builds the component with componentize-js through its JS API (the `jco componentize` command
// failed here on a path error, see DESIGN.md section 7).
// Usage: node build.mjs WIT_DIR OUT_FILE   (build.sh calls it)
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';

import { componentize } from '@bytecodealliance/componentize-js';

const [witDir, outFile] = process.argv.slice(2);
if (!witDir || !outFile) {
  console.error('usage: node build.mjs WIT_DIR OUT_FILE');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));

try {
  const { component } = await componentize({
    sourcePath: join(here, 'src', 'plugin.js'),
    witPath: resolve(witDir),
    worldName: 'plugin',
    // A pure component: no WASI imports at all (no stdio, clocks, randomness, HTTP).
    disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
  });
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
