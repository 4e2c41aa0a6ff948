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
  // One line: the first line of the error.
  const text = String((e && (e.message || e)) || 'unknown error');
  console.error(text.split('\n').find((l) => l.trim() !== '') ?? text);
  process.exit(1);
}
