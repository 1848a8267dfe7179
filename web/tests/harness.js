// Test harness for the browser end-to-end tests: the real server binary, a scripted
// v1 worker (ingress WebSocket to read, POST to write), and Debian's chromium driven by
// playwright-core. Nothing here downloads anything.

import { spawn, execFile } from "node:child_process";
import { mkdtemp, mkdir, readFile, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import WebSocket from "ws";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, "../..");
export const BIN = path.resolve(process.env.SWITCHBOARD_BIN || path.join(ROOT, "target/release/switchboard"));
export const SHOTS = path.join(ROOT, "test-output/screenshots");
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

const run = promisify(execFile);

/** Polls `fn` until it returns a truthy value (returned) or the time is up. */
export async function eventually(fn, { timeout = 10000, interval = 50, what = "condition" } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The switchboard server, run from its binary on 127.0.0.1 with its own data dir. */
export class Server {
  static async start() {
    if (!existsSync(BIN)) throw new Error(`no server binary at ${BIN}; build it with cargo build --release --bin switchboard`);
    const dataDir = await mkdtemp(path.join(tmpdir(), "switchboard-e2e-"));
    const { stdout } = await run(BIN, ["token", "create", "--name", "e2e", "--data-dir", dataDir]);
    const key = stdout.match(/sbk_[A-Za-z0-9_-]+/)?.[0];
    if (!key) throw new Error(`no key in the output of token create: ${stdout}`);
    const server = new Server(dataDir, key);
    await server.launch("127.0.0.1:0");
    return server;
  }

  constructor(dataDir, key) {
    this.dataDir = dataDir;
    this.key = key;
    this.proc = null;
    this.addr = null;
    this.log = "";
  }

  get url() {
    return `http://${this.addr}`;
  }

  async launch(listen) {
    // The tests' webhook and push doubles listen on 127.0.0.1.
    const proc = spawn(BIN, ["serve", "--listen", listen, "--data-dir", this.dataDir, "--notify-allow-private"], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
    });
    this.proc = proc;
    const keep = (chunk) => {
      this.log = (this.log + chunk).slice(-20000);
    };
    proc.stderr.on("data", keep);
    this.exited = new Promise((resolve) => proc.on("exit", resolve));
    this.addr = await new Promise((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => reject(new Error(`server did not start: ${out}${this.log}`)), 15000);
      proc.stdout.on("data", (chunk) => {
        out += chunk;
        keep(chunk);
        const m = out.match(/Switchboard listening on http:\/\/(\S+)/);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      proc.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code}) before listening: ${out}${this.log}`));
      });
    });
  }

  /** Kills the process (no graceful close: the browser sees the connection die). */
  async kill(signal = "SIGKILL") {
    if (!this.proc) return;
    this.proc.kill(signal);
    await this.exited;
    this.proc = null;
  }

  /** Starts the server again on the same address and data dir. */
  async restart() {
    const addr = this.addr;
    const end = Date.now() + 10000;
    for (;;) {
      try {
        await this.launch(addr);
        if (this.addr !== addr) throw new Error(`restarted on ${this.addr}, not ${addr}`);
        return;
      } catch (e) {
        if (Date.now() > end) throw e;
        await sleep(100); // the port may take a moment to come free
      }
    }
  }

  async stop() {
    await this.kill("SIGTERM");
    await rm(this.dataDir, { recursive: true, force: true });
  }

  /** A JSON API call; `auth` defaults to the API key. */
  async api(method, p, body, auth = this.key) {
    const res = await fetch(this.url + p, {
      method,
      headers: { authorization: `Bearer ${auth}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** A single-use sign-in link. */
  /** A sign-in link for the owner's browser: `admin`, as every browser was before roles
   * (a link gives `driver` unless its maker asks for another role). */
  async pairingUrl(role = "admin") {
    return (await this.api("POST", "/web/pairings", { role })).url;
  }

  /**
   * Registers an environment, creates a session on it, takes the work item and
   * connects a scripted worker. Returns { session, worker }.
   */
  async session({ title = "e2e session", machine = "laptop", directory = "/home/dev/project", connect = true } = {}) {
    const env = await this.api("POST", "/v1/environments/bridge", {
      machine_name: machine,
      directory,
      branch: "main",
      max_sessions: 1,
      metadata: { worker_type: "claude_code" },
    });
    const session = await this.api("POST", "/v1/sessions", {
      environment_id: env.environment_id,
      title,
      session_context: { cwd: directory },
      // The scripted worker speaks v1; a session that names no plane gets v2.
      use_code_sessions: false,
    });
    let work = null;
    for (let i = 0; i < 5 && !work; i++) {
      work = await this.api("GET", `/v1/environments/${env.environment_id}/work/poll`, undefined, env.environment_secret);
    }
    if (!work) throw new Error("no work item after creating a session");
    const secret = JSON.parse(Buffer.from(work.secret, "base64url").toString("utf8"));
    const worker = new Worker(this, work.data.id, secret.session_ingress_token);
    await this.api("POST", `/v1/environments/${env.environment_id}/work/${work.id}/ack`, {}, worker.token);
    if (connect) await worker.connect();
    return { session, worker, env };
  }
}

/** A scripted v1 worker: reads inbound messages from the ingress WebSocket, writes by POST. */
export class Worker {
  constructor(server, id, token) {
    this.server = server;
    this.id = id;
    this.token = token;
    this.received = [];
    this.ws = null;
  }

  connect() {
    const ws = new WebSocket(`ws://${this.server.addr}/v1/session_ingress/ws/${this.id}`, {
      headers: { authorization: `Bearer ${this.token}` },
    });
    this.ws = ws;
    ws.on("message", (data) => {
      for (const line of data.toString().split("\n")) {
        if (!line.trim()) continue;
        const msg = JSON.parse(line);
        if (msg.type !== "keep_alive") this.received.push(msg);
      }
    });
    ws.on("error", () => {});
    return new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("unexpected-response", (_, res) => reject(new Error(`ingress refused: ${res.statusCode}`)));
      ws.once("close", (code) => reject(new Error(`ingress closed: ${code}`)));
    });
  }

  close() {
    this.ws?.terminate();
  }

  /** POSTs events, as the worker writes its output. */
  async post(...events) {
    const res = await fetch(`${this.server.url}/v1/session_ingress/session/${this.id}/events`, {
      method: "POST",
      headers: { authorization: `Bearer ${this.token}`, "content-type": "application/json" },
      body: JSON.stringify({ events }),
    });
    if (!res.ok) throw new Error(`worker POST: ${res.status} ${await res.text()}`);
  }

  /** The first inbound message matching `pred`, waiting for it. */
  waitFor(pred, what = "a message for the worker", timeout = 10000) {
    return eventually(() => this.received.find(pred), { timeout, what });
  }
}

// ---- message builders ----------------------------------------------------------------

let n = 0;
export const id = (prefix) => `${prefix}-${Date.now().toString(36)}-${++n}`;

export const assistant = (content, extra = {}) => ({
  type: "assistant",
  uuid: id("a"),
  parent_tool_use_id: null,
  message: {
    id: id("msg"),
    role: "assistant",
    model: "claude-sonnet-4-5",
    content: typeof content === "string" ? [{ type: "text", text: content }] : content,
  },
  ...extra,
});

export const prompt = (text) => ({
  type: "user",
  uuid: id("u"),
  parent_tool_use_id: null,
  message: { role: "user", content: text },
});

export const delta = (text, index = 0) => ({
  type: "stream_event",
  uuid: id("s"),
  parent_tool_use_id: null,
  event: { type: "content_block_delta", index, delta: { type: "text_delta", text } },
});

export const result = (extra = {}) => ({
  type: "result",
  subtype: "success",
  uuid: id("r"),
  duration_ms: 1234,
  duration_api_ms: 1000,
  is_error: false,
  num_turns: 1,
  result: "ok",
  total_cost_usd: 0.0123,
  ...extra,
});

export const canUseTool = (requestId, toolName, input, extra = {}) => ({
  type: "control_request",
  request_id: requestId,
  request: { subtype: "can_use_tool", tool_name: toolName, input, tool_use_id: id("toolu"), ...extra },
});

// ---- browser -------------------------------------------------------------------------

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`no chromium at ${CHROMIUM}; apt-get install -y chromium`);
  await mkdir(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const newContext = browser.newContext.bind(browser);
  browser.newContext = async (...args) => {
    const ctx = await newContext(...args);
    ctx.setDefaultTimeout(10000);
    if (process.env.SWITCHBOARD_WEB_FROM_DISK) {
      // Development aid: serve the UI's files from web/ instead of the copies embedded
      // in the binary, so a UI change needs no rebuild. Real runs use the embedded ones.
      await ctx.route(
        (url) => /^\/[\w-]+\.(js|css|svg)$/.test(url.pathname),
        async (route) => {
          const file = new URL(route.request().url()).pathname.slice(1);
          const type = { js: "text/javascript", css: "text/css", svg: "image/svg+xml" }[file.split(".").pop()];
          route.fulfill({ body: await readFile(path.join(ROOT, "web", file)), contentType: type });
        },
      );
    }
    return ctx;
  };
  return browser;
}

export const PHONE = { width: 390, height: 844 };
export const DESKTOP = { width: 1280, height: 800 };

/** A browser context signed in through a pairing link, and its page on `/`. */
export async function signedInPage(browser, server, options = {}) {
  const context = await browser.newContext({ viewport: DESKTOP, ...options });
  const page = await context.newPage();
  watch(page);
  await page.goto(await server.pairingUrl());
  await page.waitForURL(`${server.url}/`);
  await page.locator("h1.page-title").waitFor();
  return { context, page };
}

/** Records dialogs and page errors, so tests can assert there were none. */
export function watch(page) {
  page.dialogs = [];
  page.errors = [];
  page.on("dialog", (d) => {
    page.dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.csp = [];
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) page.csp.push(m.text());
  });
  return page;
}

/** Texts of the nodes matching `selector`, in document order. */
export function texts(page, selector) {
  return page.$$eval(selector, (els) => els.map((e) => e.textContent.trim()));
}
