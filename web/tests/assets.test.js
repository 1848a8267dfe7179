// The page's modules under node, without running them: every module the app imports is
// preloaded by index.html and kept by the service worker's shell, so a module added to
// the split UI is neither fetched late nor missing offline.
// Runs with `node --test tests/assets.test.js`; needs no server or browser.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const read = (name) => readFile(path.join(web, name), "utf8");

/** The modules `entry` loads, itself included, following static relative imports. */
async function graph(entry, seen = new Set()) {
  if (seen.has(entry)) return seen;
  seen.add(entry);
  const source = await read(entry);
  for (const [, dep] of source.matchAll(/^import\s[^;]*?from\s+"\.\/([\w-]+\.js)";/gms)) await graph(dep, seen);
  return seen;
}

test("every module of the app is preloaded and kept offline", async () => {
  const modules = [...await graph("app.js")].sort();
  assert.ok(modules.includes("session-outbox.js"), modules.join(", "));
  const html = await read("index.html");
  const preloaded = new Set([...html.matchAll(/<link rel="modulepreload" href="\/([\w-]+\.js)">/g)].map((m) => m[1]));
  const sw = await read("sw.js");
  const shell = new Set([...sw.slice(sw.indexOf("const SHELL"), sw.indexOf("];")).matchAll(/"\/([\w-]+\.js)"/g)].map((m) => m[1]));
  for (const m of modules) {
    assert.ok(m === "app.js" || preloaded.has(m), `${m} is not preloaded by index.html`);
    assert.ok(shell.has(m), `${m} is not in the service worker's SHELL`);
  }
});
