// The outbox of a session's page (web/session-outbox.js) under node: a refused prompt
// is the one the error frame names by `error.refused_uuid`, whatever its wording.
// Runs with `node --test tests/outbox.test.js`; needs no server or browser.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Outbox } from "../session-outbox.js";

const bubble = () => ({ dataset: {} });
const prompt = (uuid) => ({ type: "user", uuid, message: { role: "user", content: uuid } });
const refusal = (message, refused_uuid) => ({ type: "error", error: { type: "invalid_request_error", message, refused_uuid } });

test("the prompt named by refused_uuid is marked failed, not the oldest one on its way", () => {
  const outbox = new Outbox();
  const [a, b] = [bubble(), bubble()];
  outbox.add("a", prompt("a"), a, true);
  outbox.add("b", prompt("b"), b, true);
  assert.equal(outbox.refuse(refusal("event 0 is 1126400 bytes", "b")).el, b);
  assert.equal(b.dataset.state, "failed");
  assert.equal(a.dataset.state, "sending");
  // A failed prompt is not sent again on reconnect; the others are.
  const sent = [];
  outbox.resend((m) => sent.push(m.uuid));
  assert.deepEqual(sent, ["a"]);
});

test("an error frame that names no waiting prompt marks none, whatever it says", () => {
  const outbox = new Outbox();
  const a = bubble();
  outbox.add("a", prompt("a"), a, true);
  assert.equal(outbox.refuse(refusal("event 0: message.content must not be empty")), null);
  assert.equal(outbox.refuse(refusal("event 0: unknown", "someone-else")), null);
  assert.equal(outbox.refuse({ type: "error" }), null);
  assert.equal(a.dataset.state, "sending");
});

test("an echo settles a prompt, waiting or failed; other uuids are not ours", () => {
  const outbox = new Outbox();
  const [a, b] = [bubble(), bubble()];
  outbox.add("a", prompt("a"), a, false);
  assert.equal(a.dataset.state, "queued");
  outbox.add("b", prompt("b"), b, true);
  outbox.refuse(refusal("no", "b"));
  assert.equal(outbox.echoed("a").el, a);
  assert.equal(outbox.echoed("b").el, b);
  assert.equal(a.dataset.state, undefined);
  assert.equal(b.dataset.state, undefined);
  assert.equal(outbox.echoed("a"), null);
  assert.equal(outbox.echoed("c"), null);
});
