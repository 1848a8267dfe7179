// The page's own prompts on their way to the worker: each waits (sent, or queued while
// the socket is down) until the server echoes it back by its uuid, and is sent again on
// every reconnect meanwhile (the server keeps one per uuid). A prompt the server refuses
// is named by the `refused_uuid` of its error frame (docs/PROTOCOL.md §13.1); it is
// kept as failed, not sent again, and cleared if an echo still comes.
//
// The element of each prompt carries its state in `data-state`: "queued", "sending",
// "failed", or none once echoed. No DOM beyond that, so it runs under node too.

export class Outbox {
  #waiting = new Map(); // uuid -> { msg, el }
  #failed = new Map(); // uuid -> { msg, el }

  /** Adds a prompt; `sent` says whether it went out at once. */
  add(key, msg, el, sent) {
    this.#waiting.set(key, { msg, el });
    el.dataset.state = sent ? "sending" : "queued";
  }

  /** Sends every prompt still waiting (after a socket opened). */
  resend(send) {
    for (const { msg, el } of this.#waiting.values()) {
      send(msg);
      el.dataset.state = "sending";
    }
  }

  /**
   * Marks the prompt an error frame refused, by the uuid the frame names; returns it,
   * or null when the frame names none of the waiting prompts.
   */
  refuse(frame) {
    const key = frame?.error?.refused_uuid;
    if (typeof key !== "string") return null;
    const own = this.#waiting.get(key);
    if (!own) return null;
    this.#waiting.delete(key);
    this.#failed.set(key, own);
    own.el.dataset.state = "failed";
    return own;
  }

  /** Takes back a prompt the server echoed (waiting or failed); null if not ours. */
  echoed(key) {
    const own = this.#waiting.get(key) || this.#failed.get(key);
    if (!own) return null;
    this.#waiting.delete(key);
    this.#failed.delete(key);
    delete own.el.dataset.state;
    return own;
  }
}
