// Browser end-to-end tests of the web UI: the real server, a scripted worker, and
// Debian's chromium. Run with `npm test` (node --test) from web/.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { mkdir } from "node:fs/promises";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import {
  Server, launchBrowser, signedInPage, watch, eventually, sleep, texts, id, BIN,
  assistant, prompt, delta, result, canUseTool, PHONE, DESKTOP, SHOTS,
} from "./harness.js";

const execFileP = promisify(execFile);

let server;
let browser;
let context;
let page;

before(async () => {
  [server, browser] = await Promise.all([Server.start(), launchBrowser()]);
  ({ context, page } = await signedInPage(browser, server));
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Opens a session's page and waits until its socket is live. */
async function open(p, session) {
  await p.goto(`${server.url}/s/${session.id}`);
  await p.locator('.conn[data-state="live"]').waitFor();
}

describe("sign-in", () => {
  test("a pairing link signs a browser in; the session shows up in the list", async () => {
    const { session, worker } = await server.session({ title: "Pairing check", directory: "/srv/pairing" });
    const ctx = await browser.newContext({ viewport: PHONE });
    const p = watch(await ctx.newPage());
    const link = await server.pairingUrl();
    await p.goto(link);
    await p.waitForURL(`${server.url}/`);
    const item = p.locator("ul.sessions li", { hasText: "Pairing check" });
    await item.waitFor();
    assert.match(await item.innerText(), /\/srv\/pairing/);
    assert.match(await item.innerText(), /idle/);

    // The session cookie is HttpOnly, and nothing is kept in the page's storage.
    const cookies = await ctx.cookies();
    assert.ok(cookies.length >= 1 && cookies.every((c) => c.httpOnly), "session cookie is HttpOnly");
    assert.equal(await p.evaluate(() => document.cookie), "");
    assert.equal(await p.evaluate(() => localStorage.length + sessionStorage.length), 0);

    // A pairing link works once.
    const again = watch(await (await browser.newContext()).newPage());
    await again.goto(link);
    await again.getByText("This pairing link didn't work").waitFor();
    await again.context().close();

    // The list follows the worker: offline when it goes away.
    worker.close();
    await item.locator(".state.offline").waitFor({ timeout: 10000 });

    // Sign out, then in again with the API key.
    await p.getByRole("button", { name: "Sign out", exact: true }).click();
    await p.getByLabel("API key").waitFor();
    assert.equal((await ctx.cookies()).filter((c) => c.value).length, 0);
    await p.getByLabel("API key").fill("sbk_wrong_key");
    await p.getByRole("button", { name: "Sign in" }).click();
    await p.getByText("That API key is not valid.").waitFor();
    await p.getByLabel("API key").fill(server.key);
    await p.getByRole("button", { name: "Sign in" }).click();
    await p.locator("ul.sessions li", { hasText: "Pairing check" }).waitFor();
    assert.equal(await p.evaluate(() => localStorage.length), 0);

    // Pair another device from the list.
    await p.getByRole("button", { name: "Pair device" }).click();
    const shown = await p.getByLabel("Pairing link").inputValue();
    assert.match(shown, new RegExp(`^${server.url}/pair/`));
    assert.deepEqual(p.errors, []);
    await ctx.close();
    assert.ok(session.id);
  });
});

describe("a session", () => {
  test("an assistant reply streams in, then the final message replaces it", async () => {
    const { session, worker } = await server.session({ title: "Streaming" });
    await worker.post(prompt("Say hello"));
    await open(page, session);
    await page.locator(".msg.user", { hasText: "Say hello" }).waitFor();

    await worker.post({ type: "stream_event", uuid: id("s"), event: { type: "message_start", message: {} } }, delta("Hello"));
    const typing = page.locator(".msg.typing");
    await typing.filter({ hasText: "Hello" }).waitFor();
    await worker.post(delta(", wor"));
    await typing.filter({ hasText: "Hello, wor" }).waitFor();
    await worker.post(delta("ld"));
    await typing.filter({ hasText: "Hello, world" }).waitFor();

    await worker.post(assistant("Hello, world! Here is **bold** and `code`."));
    await page.locator(".msg.assistant:not(.typing)", { hasText: "Hello, world!" }).waitFor();
    await typing.waitFor({ state: "detached" });
    assert.equal(await page.locator(".msg.assistant strong").innerText(), "bold");
    assert.equal(await page.locator(".msg.assistant code").innerText(), "code");

    await worker.post(result({ duration_ms: 4200, total_cost_usd: 0.0123 }));
    const done = page.locator(".note.result");
    await done.waitFor();
    assert.equal(await done.innerText(), "Turn finished · 4.2 s · $0.01");
    // Exactly one copy of the reply.
    assert.equal(await page.locator(".msg.assistant", { hasText: "Hello, world!" }).count(), 1);
  });

  test("a v2 session's text deltas are cumulative snapshots: shown once, not appended", async () => {
    const created = await server.api("POST", "/v1/code/sessions", { bridge: {}, title: "Code session" });
    const sid = created.session.id;
    const creds = await server.api("POST", `/v1/code/sessions/${sid}/bridge`);
    const write = (...payloads) => server.api("POST", `/v1/code/sessions/${sid}/worker/events`,
      { worker_epoch: creds.worker_epoch, events: payloads.map((payload) => ({ payload, ephemeral: payload.type === "stream_event" })) },
      creds.worker_jwt);
    await page.goto(`${server.url}/s/${sid}`);
    await page.locator('.conn[data-state="live"]').waitFor();
    const typing = page.locator(".msg.typing");
    await write(delta("Hel"));
    await typing.filter({ hasText: "Hel" }).waitFor();
    await write(delta("Hello wor"));
    await typing.filter({ hasText: "Hello wor" }).waitFor();
    await write(delta("Hello world"));
    await page.waitForFunction(() => document.querySelector(".msg.typing")?.textContent === "Hello world");
    await write(assistant("Hello world"));
    await typing.waitFor({ state: "detached" });
    assert.deepEqual(await texts(page, ".msg.assistant"), ["Hello world"]);
  });

  test("tool calls show their input and result, collapsed; errors are shown", async () => {
    const { session, worker } = await server.session({ title: "Tools" });
    await open(page, session);
    await worker.post(
      assistant([
        { type: "thinking", thinking: "I should list the files." },
        { type: "tool_use", id: "toolu_ls", name: "Bash", input: { command: "ls -la", description: "List files" } },
      ]),
      { type: "user", uuid: id("u"), parent_tool_use_id: null, message: { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_ls", content: "README.md\nsrc" }] } },
      assistant([{ type: "tool_use", id: "toolu_cat", name: "Read", input: { file_path: "/nope" } }]),
      { type: "user", uuid: id("u"), parent_tool_use_id: null, message: { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_cat", content: [{ type: "text", text: "File does not exist." }], is_error: true }] } },
      assistant("Rate limited", { error: "rate_limit" }),
      result({ subtype: "error_during_execution", is_error: true, errors: ["boom"] }),
    );
    const tool = page.locator('details.tool[data-tool-use-id="toolu_ls"]');
    await tool.locator(".tool-status", { hasText: "done" }).waitFor();
    assert.equal(await tool.evaluate((d) => d.open), false, "collapsed by default");
    assert.match(await tool.locator("summary").innerText(), /Bash\s+ls -la/);
    await tool.locator("summary").click();
    assert.match(await tool.locator("pre.json").innerText(), /"command": "ls -la"/);
    assert.equal(await tool.locator("pre.out").innerText(), "README.md\nsrc");

    const failed = page.locator('details.tool[data-tool-use-id="toolu_cat"]');
    await failed.locator(".tool-status", { hasText: "error" }).waitFor();
    assert.equal(await failed.locator("pre.out", { hasText: "File does not exist." }).count(), 1);

    await page.locator(".msg.error", { hasText: "Agent error: rate_limit" }).waitFor();
    await page.locator(".msg.error", { hasText: "Turn failed (error_during_execution)" }).waitFor();
    assert.match(await page.locator(".msg.error.result").innerText(), /boom/);
    assert.equal(await page.locator("details.thinking").evaluate((d) => d.open), false);
  });

  test("a prompt from the page reaches the worker exactly once", async () => {
    const { session, worker } = await server.session({ title: "Prompting" });
    await open(page, session);
    await page.getByLabel("Prompt").fill("Please run the tests");
    await page.getByRole("button", { name: "Send" }).click();
    const got = await worker.waitFor((m) => m.type === "user");
    assert.equal(got.message.role, "user");
    assert.equal(got.message.content, "Please run the tests");
    assert.equal(got.parent_tool_use_id, null);
    assert.match(got.uuid, /^[0-9a-f-]{36}$/);
    // The echo came back (the bubble stops saying "sending") and nothing is doubled.
    const bubble = page.locator(".msg.user", { hasText: "Please run the tests" });
    await page.waitForFunction(() => !document.querySelector(".msg.user[data-state]"));
    await sleep(700);
    assert.equal(worker.received.filter((m) => m.type === "user").length, 1);
    assert.equal(await bubble.count(), 1);
    assert.equal(await page.getByLabel("Prompt").inputValue(), "");
    // After a reload it is still there once.
    await page.reload();
    await page.locator('.conn[data-state="live"]').waitFor();
    await bubble.first().waitFor();
    assert.equal(await bubble.count(), 1);
    assert.equal(worker.received.filter((m) => m.type === "user").length, 1);
  });

  test("permission requests: allow, deny with a reason, answered elsewhere, pending after reload", async () => {
    const { session, worker } = await server.session({ title: "Permissions" });
    await open(page, session);

    const input = { command: "npm test", description: "Run the test suite", timeout: 120000 };
    await worker.post(canUseTool("req-allow", "Bash", input, { description: "Run the test suite" }));
    const card = page.locator('.perm[data-request-id="req-allow"]');
    await card.waitFor();
    assert.match(await card.innerText(), /Bash/);
    // Bash shows its command and description in full; the raw input is one tap away.
    assert.equal(await card.locator(".review.command pre.cmd").innerText(), "npm test");
    assert.equal(await card.locator(".review-desc").innerText(), "Run the test suite");
    await card.locator(".raw-input summary").click();
    assert.equal(JSON.parse(await card.locator("pre.json").innerText()).command, "npm test");
    assert.equal(await page.title(), "(1) Permissions — Switchboard");
    await card.getByRole("button", { name: "Allow" }).click();
    const allow = await worker.waitFor((m) => m.type === "control_response" && m.response?.request_id === "req-allow");
    assert.deepEqual(allow.response, {
      subtype: "success",
      request_id: "req-allow",
      response: { behavior: "allow", updatedInput: input },
    });
    await card.waitFor({ state: "detached" });
    await page.locator(".note", { hasText: "Allowed Bash" }).waitFor();

    await worker.post(canUseTool("req-deny", "Write", { file_path: "/etc/passwd", content: "x" }));
    const card2 = page.locator('.perm[data-request-id="req-deny"]');
    await card2.waitFor();
    await card2.getByLabel("Reason for denying").fill("Not that file");
    await card2.getByRole("button", { name: "Deny" }).click();
    const deny = await worker.waitFor((m) => m.type === "control_response" && m.response?.request_id === "req-deny");
    assert.deepEqual(deny.response.response, { behavior: "deny", message: "Not that file" });
    await card2.waitFor({ state: "detached" });
    await page.locator(".note", { hasText: "Denied Write: Not that file" }).waitFor();

    // Another viewer (or the terminal) answers first: the dialog closes by itself.
    await worker.post(canUseTool("req-cancel", "Edit", { file_path: "a.txt" }));
    await page.locator('.perm[data-request-id="req-cancel"]').waitFor();
    await worker.post({ type: "control_cancel_request", request_id: "req-cancel" });
    await page.locator('.perm[data-request-id="req-cancel"]').waitFor({ state: "detached" });

    await worker.post(canUseTool("req-other", "Edit", { file_path: "b.txt" }));
    await page.locator('.perm[data-request-id="req-other"]').waitFor();
    await worker.post({ type: "control_response", response: { subtype: "success", request_id: "req-other", response: { behavior: "allow", updatedInput: {} } } });
    await page.locator('.perm[data-request-id="req-other"]').waitFor({ state: "detached" });

    // After a reload only the unanswered request is pending.
    await worker.post(canUseTool("req-open", "Bash", { command: "rm -rf build" }));
    await page.locator('.perm[data-request-id="req-open"]').waitFor();
    await page.reload();
    await page.locator('.conn[data-state="live"]').waitFor();
    await page.locator('.perm[data-request-id="req-open"]').waitFor();
    assert.deepEqual(await page.$$eval(".perm", (els) => els.map((e) => e.dataset.requestId)), ["req-open"]);
    // The list shows the session waiting for approval.
    await page.goto(`${server.url}/`);
    const item = page.locator("ul.sessions li", { hasText: "Permissions" });
    await item.locator(".badge", { hasText: "Approval needed" }).waitFor();
    assert.match(await item.innerText(), /needs approval/);
  });

  test("interrupt, model and permission mode go to the worker", async () => {
    const { session, worker } = await server.session({ title: "Controls" });
    await open(page, session);
    await page.getByRole("button", { name: "Interrupt" }).click();
    const interrupt = await worker.waitFor((m) => m.type === "control_request" && m.request?.subtype === "interrupt");
    assert.ok(interrupt.request_id);
    await page.locator(".note", { hasText: "Interrupt requested" }).waitFor();
    await worker.post({ type: "control_response", response: { subtype: "error", request_id: interrupt.request_id, error: "nothing to interrupt" } });
    await page.locator(".msg.error", { hasText: "interrupt failed" }).waitFor();

    await page.locator(".settings summary").click();
    await page.getByLabel("Permission mode").selectOption("plan");
    await page.locator(".settings-form", { has: page.getByLabel("Permission mode") }).getByRole("button", { name: "Set" }).click();
    const mode = await worker.waitFor((m) => m.request?.subtype === "set_permission_mode");
    assert.equal(mode.request.mode, "plan");

    await page.locator(".settings summary").click();
    await page.getByLabel("Model").fill("opus");
    await page.locator(".settings-form", { has: page.getByLabel("Model") }).getByRole("button", { name: "Set" }).click();
    const model = await worker.waitFor((m) => m.request?.subtype === "set_model");
    assert.equal(model.request.model, "opus");
  });

  test("server error frames are shown; a session that goes away says so (4001)", async () => {
    const { session, worker } = await server.session({ title: "Going away" });
    await open(page, session);
    // The server refuses a prompt over its size limit with an error frame.
    await page.getByLabel("Prompt").fill("x".repeat(1100 * 1024));
    await page.getByRole("button", { name: "Send" }).click();
    await page.locator(".msg.error", { hasText: "Server:" }).waitFor();
    await page.locator('.msg.user[data-state="failed"] .failed-note').waitFor();
    await sleep(300);
    assert.equal(worker.received.filter((m) => m.type === "user").length, 0);

    await server.api("POST", `/v1/sessions/${session.id}/archive`, {});
    await page.locator('.conn[data-state="gone"]').waitFor();
    await page.locator(".banner.error", { hasText: "ended" }).waitFor();

    await page.goto(`${server.url}/s/session_doesnotexist`);
    await page.locator(".banner.error", { hasText: "This session does not exist." }).waitFor();
  });

  test("a refused prompt is the one the error frame names, not the oldest still on its way", async () => {
    const { session, worker } = await server.session({ title: "Refusals" });
    const p = await context.newPage();
    watch(p);
    // Between page and server, hold back the echo of every prompt until the refusal of
    // the second one has arrived: both prompts are still on their way when it does.
    let holding = true;
    const held = [];
    await p.routeWebSocket(/\/subscribe/, (ws) => {
      const upstream = ws.connectToServer();
      ws.onMessage((m) => upstream.send(m));
      upstream.onMessage((m) => {
        const ev = JSON.parse(m);
        if (holding && ev.type === "user") return void held.push(m);
        ws.send(m);
        if (ev.type === "error") {
          holding = false;
          for (const h of held.splice(0)) ws.send(h);
        }
      });
    });
    await open(p, session);
    await p.getByLabel("Prompt").fill("a prompt that goes through");
    await p.getByRole("button", { name: "Send" }).click();
    await worker.waitFor((m) => m.type === "user");
    await p.getByLabel("Prompt").fill("y".repeat(1100 * 1024));
    await p.getByRole("button", { name: "Send" }).click();
    await p.locator(".msg.error", { hasText: "Server:" }).waitFor();
    const failed = p.locator('.msg.user[data-state="failed"]');
    await failed.locator(".failed-note").waitFor();
    assert.equal(await failed.count(), 1);
    assert.match(await failed.locator(".md").innerText(), /^y+$/);
    // The first prompt's echo, released after the refusal, settles it.
    await p.waitForFunction(() => document.querySelectorAll(".msg.user:not([data-state])").length === 1);
    assert.equal(await p.locator(".msg.user:not([data-state])").innerText(), "a prompt that goes through");
    await sleep(300);
    assert.deepEqual(worker.received.filter((m) => m.type === "user").map((m) => m.message.content), ["a prompt that goes through"]);
    assert.deepEqual(p.errors, []);
    assert.deepEqual(p.csp, []);
    await p.close();
  });

  test("agent text with HTML is shown as text, never run", async () => {
    const { session, worker } = await server.session({ title: "<b>Hostile</b> title" });
    const evil = "Look: <script>alert(1)</script> and <img src=x onerror=alert(2)> and [click](javascript:alert(3)) and [ok](https://example.com/a)";
    await worker.post(prompt("<img src=x onerror=alert(4)>"), assistant(evil), assistant([{ type: "tool_use", id: "t1", name: "<svg onload=alert(5)>", input: { html: "<iframe src=javascript:alert(6)>" } }]));
    await open(page, session);
    const msg = page.locator(".msg.assistant", { hasText: "Look:" });
    await msg.waitFor();
    const shown = await msg.innerText();
    assert.ok(shown.includes("<script>alert(1)</script>"), shown);
    assert.ok(shown.includes("<img src=x onerror=alert(2)>"), shown);
    assert.ok(shown.includes("[click](javascript:alert(3))"), shown);
    await page.locator(".msg.user", { hasText: "<img src=x onerror=alert(4)>" }).waitFor();
    assert.equal(await page.locator("h1.title").innerText(), "<b>Hostile</b> title");
    assert.equal(await page.locator(".log script, .log img, .log iframe, .log svg, .title b").count(), 0);
    const links = await page.$$eval(".log a", (as) => as.map((a) => a.href));
    assert.deepEqual(links, ["https://example.com/a"]);
    await sleep(300);
    assert.deepEqual(page.dialogs, []);
    assert.deepEqual(page.errors, []);
    assert.deepEqual(page.csp, []);

    // The Markdown renderer itself, on the constructs it supports.
    const rendered = await page.evaluate(async () => {
      const { renderMarkdown } = await import("/markdown.js");
      const div = document.createElement("div");
      div.append(renderMarkdown([
        "# Title", "", "para *em* **b** `c` <u>u</u>", "", "```js", "<b>x</b>", "```", "",
        "- one", "- two", "  - nested", "", "1. first", "2. second", "", "> quote", "",
        "| a | b |", "|---|---|", "| 1 | 2 |", "", "[bad](data:text/html,x) https://example.org/x.",
      ].join("\n")));
      return {
        tags: [...div.querySelectorAll("*")].map((e) => e.tagName.toLowerCase()).join(","),
        code: div.querySelector("pre code").textContent,
        links: [...div.querySelectorAll("a")].map((a) => a.getAttribute("href")),
        text: div.textContent,
      };
    });
    assert.equal(rendered.code, "<b>x</b>");
    assert.deepEqual(rendered.links, ["https://example.org/x"]);
    assert.ok(rendered.text.includes("<u>u</u>"));
    for (const tag of ["h3", "em", "strong", "code", "pre", "ul", "ol", "li", "blockquote", "table", "td"]) {
      assert.ok(rendered.tags.split(",").includes(tag), `${tag} in ${rendered.tags}`);
    }
    assert.ok(!/\bu\b|\bb\b/.test(rendered.tags.replace(/blockquote/g, "")), rendered.tags);
  });

  test("edit permissions show a diff on a phone: numbered, coloured by sign, long ones collapsed, text never markup", async () => {
    const { session, worker } = await server.session({ title: "Diffs" });
    const ctx = await browser.newContext({ viewport: PHONE, deviceScaleFactor: 2, hasTouch: true, isMobile: true });
    await ctx.addCookies(await context.cookies());
    const p = watch(await ctx.newPage());
    await open(p, session);
    const old = "fn main() {\n    let x = 1;\n    println!(\"{x}\");\n}\n";
    const neu = "fn main() {\n    let x = 2; // <img src=x onerror=alert(1)>\n    println!(\"{x}\");\n}\n";
    await worker.post(canUseTool("req-edit", "Edit", { file_path: "/home/ana/src/main.rs", old_string: old, new_string: neu }));
    const card = p.locator('.perm[data-request-id="req-edit"]');
    await card.waitFor();
    assert.equal(await card.locator(".diff-path").innerText(), "/home/ana/src/main.rs");
    assert.equal(await card.locator(".diff-hunk").innerText(), "@@ -1,4 +1,4 @@");
    const rows = await card.locator(".diff-line").evaluateAll((els) => els.map((e) => [e.className, [...e.children].map((c) => c.textContent)]));
    assert.deepEqual(rows, [
      ["diff-line ctx", ["1", "1", " ", "fn main() {"]],
      ["diff-line del", ["2", "", "-", "    let x = 1;"]],
      ["diff-line add", ["", "2", "+", "    let x = 2; // <img src=x onerror=alert(1)>"]],
      ["diff-line ctx", ["3", "3", " ", "    println!(\"{x}\");"]],
      ["diff-line ctx", ["4", "4", " ", "}"]],
    ]);
    assert.equal(await card.locator(".diff-body img").count(), 0, "the diff is text, never markup");
    const colours = await card.locator(".diff-line.add, .diff-line.del").evaluateAll((els) => els.map((e) => getComputedStyle(e).backgroundColor));
    assert.notEqual(colours[0], colours[1], "added and removed lines differ in colour");
    const overflow = () => p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(await overflow() <= 0, "the card fits the phone's width");
    await mkdir(SHOTS, { recursive: true });
    await p.screenshot({ path: path.join(SHOTS, "diff-edit-phone.png") });

    // A long new file: the first lines show, the rest waits behind a button.
    const content = Array.from({ length: 80 }, (_, i) => `line ${i + 1} ${"x".repeat(i % 7 ? 10 : 120)}`).join("\n");
    await worker.post(canUseTool("req-write", "Write", { file_path: "/home/ana/src/long.txt", content }));
    const card2 = p.locator('.perm[data-request-id="req-write"]');
    await card2.waitFor();
    assert.equal(await card2.locator(".diff-stat").innerText(), "+80 −0");
    const shown = await card2.locator(".diff-line").count();
    assert.ok(shown < 80, `collapsed: ${shown} lines shown`);
    assert.ok(await overflow() <= 0, "a long line scrolls inside the diff, not the page");
    await p.screenshot({ path: path.join(SHOTS, "diff-write-phone-collapsed.png") });
    await card2.getByRole("button", { name: /Show \d+ more lines/ }).click();
    assert.equal(await card2.locator(".diff-line").count(), 80);
    assert.equal(await card2.locator(".diff-line .code").last().innerText(), `line 80 ${"x".repeat(10)}`);

    // Allow answers with the input unchanged.
    await card.getByRole("button", { name: "Allow" }).click();
    const allow = await worker.waitFor((m) => m.type === "control_response" && m.response?.request_id === "req-edit");
    assert.equal(allow.response.response.updatedInput.new_string, neu);
    assert.deepEqual(p.errors, []);
    assert.deepEqual(p.csp, []);
    await ctx.close();
  });

  test("screenshots: the session list and a pending permission request, phone and desktop, light and dark", async () => {
    // A server of its own, so the list shows just these sessions.
    const own = await Server.start();
    try {
      const idle = await own.session({ title: "Refactor the parser", directory: "/home/ana/src/parser" });
      await idle.worker.post(prompt("Refactor the parser"), assistant("Done."), result());
      const running = await own.session({ title: "Add dark mode to the settings page", directory: "/home/ana/src/webapp" });
      await running.worker.post(prompt("Add dark mode"), assistant([{ type: "tool_use", id: "t-run", name: "Read", input: { file_path: "src/settings.tsx" } }]));
      const offline = await own.session({ title: "Investigate flaky CI job", directory: "/home/ana/src/ci" });
      offline.worker.close();
      const waiting = await own.session({ title: "Fix the failing login test", directory: "/home/ana/src/api" });
      await waiting.worker.post(
        prompt("The login test fails on CI. Can you find out why and fix it?"),
        assistant([{ type: "thinking", thinking: "Let me run the tests first." }, { type: "text", text: "I'll start by running the **login** tests to see the failure." }]),
        assistant([{ type: "tool_use", id: "t-grep", name: "Grep", input: { pattern: "fn login", path: "src/" } }]),
        { type: "user", uuid: id("u"), parent_tool_use_id: null, message: { role: "user", content: [{ type: "tool_result", tool_use_id: "t-grep", content: "src/auth.rs:42: pub fn login(" }] } },
        assistant("The test expects a `302`, but the handler answers `200`. I need to run the suite to confirm:"),
        canUseTool("shot-req", "Bash", { command: "cargo test --package api login -- --nocapture", description: "Run the login tests" }, { description: "Run the login tests" }),
      );
      const signed = await signedInPage(browser, own);
      const cookies = await signed.context.cookies();
      await signed.context.close();

      const shots = [];
      const variants = [["phone", PHONE], ["desktop", DESKTOP], ["small", { width: 360, height: 740 }]];
      for (const scheme of ["light", "dark"]) {
        for (const [size, viewport] of variants) {
          const mobile = size !== "desktop";
          const ctx = await browser.newContext({ viewport, colorScheme: scheme, deviceScaleFactor: mobile ? 2 : 1, hasTouch: mobile, isMobile: mobile });
          await ctx.addCookies(cookies);
          const p = watch(await ctx.newPage());
          const overflow = () => p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
          await p.goto(`${own.url}/`);
          await p.locator("ul.sessions li", { hasText: "Fix the failing login test" }).waitFor();
          await p.locator("ul.sessions li .state.offline").waitFor();
          assert.ok(await overflow() <= 0, `${size} ${scheme}: the list is wider than the screen`);
          if (size !== "small") {
            const file = path.join(SHOTS, `list-${size}-${scheme}.png`);
            await p.screenshot({ path: file });
            shots.push(file);
          }
          await p.locator("ul.sessions li", { hasText: "Fix the failing login test" }).click();
          await p.locator('.perm[data-request-id="shot-req"]').waitFor();
          await p.locator('.conn[data-state="live"]').waitFor();
          await p.locator(".state.action").waitFor();
          assert.ok(await overflow() <= 0, `${size} ${scheme}: the session is wider than the screen`);
          if (size !== "small") {
            const file = path.join(SHOTS, `permission-${size}-${scheme}.png`);
            await p.screenshot({ path: file });
            shots.push(file);
          }
          assert.deepEqual(p.errors, []);
          assert.deepEqual(p.csp, []);
          await ctx.close();
        }
      }
      assert.equal(shots.length, 8);
    } finally {
      await own.stop();
    }
  });
});

describe("from the phone", () => {
  test("start a session on an online environment: pick it, type the first prompt, land on the session", async () => {
    // A bridge that keeps polling (online) and one that stopped long ago is not offered;
    // its own server, so the list holds only these.
    const own = await Server.start();
    const ctx = await browser.newContext({ viewport: PHONE });
    let polling = true;
    try {
      const env = await own.api("POST", "/v1/environments/bridge", {
        machine_name: "workstation", directory: "/home/dev/app", branch: "main", max_sessions: 4,
        metadata: { worker_type: "claude_code" },
      });
      const works = [];
      (async () => {
        for (let n = 0; polling && n < 100; n++) {
          try {
            const w = await own.api("GET", `/v1/environments/${env.environment_id}/work/poll`, undefined, env.environment_secret);
            if (w) works.push(w);
          } catch { await sleep(100); }
        }
      })();
      const p = watch(await ctx.newPage());
      await p.goto(await own.pairingUrl());
      await p.waitForURL(`${own.url}/`);
      await p.getByRole("button", { name: "New session" }).click();
      const select = p.getByLabel("Environment");
      await select.waitFor();
      assert.deepEqual(await select.locator("option").allInnerTexts(), ["workstation:/home/dev/app (main)"]);
      await p.getByLabel("First prompt").fill("Fix the flaky test in ci.yml\nand explain why it flaked");
      await p.getByRole("button", { name: "Start" }).click();
      await p.waitForURL(/\/s\/session_[A-Za-z0-9]+$/);
      const id = new URL(p.url()).pathname.split("/").pop();
      await p.locator(".msg.user", { hasText: "Fix the flaky test" }).waitFor();
      assert.equal(await p.locator("h1.title").innerText(), "Fix the flaky test in ci.yml");
      // The environment got the session as work, with the prompt waiting in its log.
      const work = await eventually(() => works.find((w) => w.data.id.replace(/^(cse|session)_/, "") === id.replace(/^(cse|session)_/, "")), { what: "the work item" });
      assert.ok(work);
      const events = await own.api("GET", `/v1/sessions/${id}/events`);
      const prompts = (events.data || []).filter((e) => e.type === "user");
      assert.equal(prompts.length, 1);
      assert.match(JSON.stringify(prompts[0]), /Fix the flaky test in ci\.yml\\nand explain/);
      assert.deepEqual(p.errors, []);
    } finally {
      polling = false;
      await ctx.close();
      await own.stop();
    }
  });

  test("sign out everywhere signs every browser of the owner out", async () => {
    const own = await Server.start();
    const one = await browser.newContext({ viewport: PHONE });
    const two = await browser.newContext({ viewport: DESKTOP });
    try {
      const a = watch(await one.newPage());
      const b = watch(await two.newPage());
      for (const p of [a, b]) {
        await p.goto(await own.pairingUrl());
        await p.waitForURL(`${own.url}/`);
        await p.locator("h1.page-title").waitFor();
      }
      // The other browser watches a session: its live socket is what tells it.
      const { session } = await own.session({ title: "Watched elsewhere" });
      await b.goto(`${own.url}/s/${session.id}`);
      await b.locator('.conn[data-state="live"]').waitFor();
      await a.getByRole("button", { name: "Sign out everywhere" }).click();
      await a.getByLabel("API key").waitFor();
      // Its socket is closed (4003) at once, and the page goes back to signing in.
      await b.getByLabel("API key").waitFor({ timeout: 5000 });
      const me = await b.evaluate(async () => (await fetch("/web/me")).status);
      assert.equal(me, 401);
      assert.deepEqual([...a.errors, ...b.errors], []);
    } finally {
      await one.close();
      await two.close();
      await own.stop();
    }
  });

  test("a session another owner shared shows in the list marked shared, and the page offers only what the share allows", async () => {
    // Bob is another owner, with a key made at the server.
    const { stdout } = await execFileP(BIN, ["token", "create", "--name", "bob", "--owner", "bob", "--data-dir", server.dataDir]);
    const bobKey = stdout.trim();
    const { session, worker } = await server.session({ title: "Shared with bob" });
    await server.api("PUT", `/v1/sessions/${session.id}/shares/bob`, { role: "viewer" });
    const ctx = await browser.newContext({ viewport: PHONE });
    try {
      const p = watch(await ctx.newPage());
      const link = (await server.api("POST", "/web/pairings", { role: "admin" }, bobKey)).url;
      await p.goto(link);
      await p.waitForURL(`${server.url}/`);
      const entry = p.locator(`a.session-link[data-id="${session.id}"]`);
      await entry.waitFor();
      assert.equal(await entry.locator(".badge.shared").innerText(), "shared · viewer");
      await entry.click();
      await p.locator('.conn[data-state="live"]').waitFor();
      // As a viewer: no prompt box, no interrupt, and a permission card without answers.
      await worker.post(canUseTool("req-shared", "Bash", { command: "ls" }));
      const card = p.locator('.perm[data-request-id="req-shared"]');
      await card.waitFor();
      assert.match(await card.innerText(), /Your role can't answer permission requests/);
      assert.equal(await p.locator("form.composer").isVisible(), false);
      assert.equal(await p.getByRole("button", { name: "Interrupt" }).isVisible(), false);
      // Raised to approver: after the page reconnects, the card can be answered, but
      // not turned into a rule (bob's rules would not answer alice's session).
      await server.api("PUT", `/v1/sessions/${session.id}/shares/bob`, { role: "approver" });
      await p.reload();
      const card2 = p.locator('.perm[data-request-id="req-shared"]');
      await card2.getByRole("button", { name: "Allow" }).waitFor();
      assert.equal(await card2.locator(".always-allow").count(), 0);
      assert.equal(await p.locator("form.composer").isVisible(), false);
      await card2.getByRole("button", { name: "Allow" }).click();
      const answer = await worker.waitFor((m) => m.type === "control_response" && m.response?.request_id === "req-shared");
      assert.equal(answer.response.response.behavior, "allow");
      assert.deepEqual(p.errors, []);
      // Bob's page offers no Share (the session is not his); alice's does, and ends it.
      assert.equal(await p.locator("details.share-panel").isVisible(), false);
      await open(page, session);
      await page.locator("details.share-panel > summary").click();
      const bobRow = page.locator('.shares li[data-owner="bob"]');
      assert.equal(await bobRow.locator(".share-role").innerText(), "approver");
      await page.getByLabel("Share with (owner name)").fill("nobody");
      await page.getByRole("button", { name: "Share", exact: true }).click();
      await page.getByText(/Couldn't share: no owner named/).waitFor();
      await bobRow.getByRole("button", { name: "Remove" }).click();
      await page.getByText("No longer shared with bob.").waitFor();
      // Bob's socket is closed, and his page says he has no access any more.
      await p.getByText("You don't have access to this session.").waitFor({ timeout: 10000 });
      assert.deepEqual((await server.api("GET", "/v1/shared_sessions", undefined, bobKey)).data, []);
      await page.getByLabel("Share with (owner name)").fill("bob");
      await page.getByLabel("Share role").selectOption("viewer");
      await page.getByRole("button", { name: "Share", exact: true }).click();
      await page.getByText("Shared with bob as viewer.").waitFor();
      assert.equal((await server.api("GET", "/v1/shared_sessions", undefined, bobKey)).data[0].shared_role, "viewer");
      assert.deepEqual(page.errors, []);
    } finally {
      await ctx.close();
    }
  });
});

describe("connection", () => {
  test("after the server dies and comes back, the page reconnects; every message shows once, in order", async () => {
    const own = await Server.start();
    const ctx = await browser.newContext({ viewport: PHONE });
    try {
      const p = watch(await ctx.newPage());
      await p.goto(await own.pairingUrl());
      await p.waitForURL(`${own.url}/`);
      const { session, worker } = await own.session({ title: "Flaky network" });
      await worker.post(prompt("step 0"), assistant("reply 1"), assistant("reply 2"));
      await p.goto(`${own.url}/s/${session.id}`);
      await p.locator('.conn[data-state="live"]').waitFor();
      await p.locator(".msg.assistant", { hasText: "reply 2" }).waitFor();

      // The server goes away for real: its process is killed.
      await own.kill("SIGKILL");
      await p.locator('.conn[data-state="down"]').waitFor();
      // A prompt typed while the server is down waits, and goes once it is back.
      await p.getByLabel("Prompt").fill("queued while down");
      await p.getByRole("button", { name: "Send" }).click();
      await p.locator('.msg.user[data-state="queued"]').waitFor();
      await sleep(300);
      await own.restart();
      await worker.connect();
      // The worker writes more while the page is still disconnected.
      await worker.post(assistant("reply 3"), assistant("reply 4"));
      await p.locator('.conn[data-state="live"]').waitFor({ timeout: 15000 });
      await worker.post(assistant("reply 5"));
      await p.locator(".msg.assistant", { hasText: "reply 5" }).waitFor();
      assert.deepEqual(await texts(p, ".msg.assistant"), ["reply 1", "reply 2", "reply 3", "reply 4", "reply 5"]);
      await worker.waitFor((m) => m.type === "user" && m.message.content === "queued while down");
      await p.waitForFunction(() => !document.querySelector(".msg.user[data-state]"));
      await sleep(300);
      assert.equal(worker.received.filter((m) => m.type === "user").length, 1);

      // A network drop in the browser (DevTools offline emulation), then back online.
      const cdp = await ctx.newCDPSession(p);
      await cdp.send("Network.enable");
      await cdp.send("Network.emulateNetworkConditions", { offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
      await p.locator('.conn[data-state="down"]').waitFor();
      await worker.post(assistant("reply 6"), prompt("step 7"));
      await sleep(1200);
      await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
      await p.locator('.conn[data-state="live"]').waitFor({ timeout: 15000 });
      await p.locator(".msg.user", { hasText: "step 7" }).waitFor();
      await worker.post(assistant("reply 8"));
      await p.locator(".msg.assistant", { hasText: "reply 8" }).waitFor();
      assert.deepEqual(await texts(p, ".msg.assistant, .msg.user"), [
        "step 0", "reply 1", "reply 2", "queued while down", "reply 3", "reply 4", "reply 5", "reply 6", "step 7", "reply 8",
      ]);
      // A fresh page shows the same log, in the server's order, each message once.
      await p.reload();
      await p.locator(".msg.assistant", { hasText: "reply 8" }).waitFor();
      const fresh = await texts(p, ".msg.assistant, .msg.user");
      assert.equal(fresh.length, 10);
      assert.deepEqual(fresh.filter((t) => t !== "queued while down"), [
        "step 0", "reply 1", "reply 2", "reply 3", "reply 4", "reply 5", "reply 6", "step 7", "reply 8",
      ]);
      assert.deepEqual(p.errors, []);
    } finally {
      await ctx.close();
      await own.stop();
    }
  });
});
