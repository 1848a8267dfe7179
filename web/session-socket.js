// The viewer WebSocket of one session (docs/PROTOCOL.md §13.1): connects, parses each
// frame into an event, and reconnects after a drop with a growing delay (at once when
// the network or the tab comes back), resuming where the page left off. Close 4003 and
// 4001 end it; the page is told and decides what to show.

const BACKOFF_MIN = 1000;
const BACKOFF_MAX = 10000;
const KEEP_ALIVE = 30000;

export class SessionSocket {
  /**
   * `url()` gives the address to (re)connect to. The callbacks: `onConnecting()`,
   * `onOpen()`, `onEvent(ev)` for each JSON object received, `onDown(why, seconds)`
   * while waiting to reconnect, `onLost()` whenever an open socket is gone, `onEnd(code,
   * reason)` after a close that ends it (4003, 4001), `onReconnect()` when a reconnect
   * is asked for.
   */
  constructor({ url, onConnecting, onOpen, onEvent, onDown, onLost, onEnd, onReconnect }) {
    Object.assign(this, { url, onConnecting, onOpen, onEvent, onDown, onLost, onEnd, onReconnect });
    this.ws = null;
    this.destroyed = false;
    this.final = false; // no more reconnecting
    this.backoff = BACKOFF_MIN;
    this.retryAt = 0;
    this.retryTimer = null;
    this.tickTimer = null;
    this.onOnline = () => {
      if (!this.ws && !this.final) {
        this.backoff = BACKOFF_MIN;
        this.reconnectNow();
      }
    };
    this.onOffline = () => {
      // The socket may linger half-open; start over once the network is back.
      if (!this.ws) return;
      this.drop();
      this.onLost();
      this.retry("You are offline");
    };
    this.onVisible = () => {
      if (document.visibilityState === "visible" && !this.ws && !this.final) this.reconnectNow();
    };
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.keepAlive = setInterval(() => this.send({ type: "keep_alive" }), KEEP_ALIVE);
  }

  /** Whether a socket is open now. */
  get live() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.retryTimer);
    clearInterval(this.tickTimer);
    this.retryTimer = null;
    if (this.destroyed || this.final) return;
    if (this.ws) return;
    this.onConnecting();
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      return this.retry(`Connection failed: ${e.message}`);
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.backoff = BACKOFF_MIN;
      this.onOpen();
    };
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch {
        return;
      }
      if (ev && typeof ev === "object") {
        try {
          this.onEvent(ev);
        } catch (err) {
          console.error("cannot show event", ev, err);
        }
      }
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.destroyed) return;
      this.onLost();
      if (e.code === 4003 || e.code === 4001) {
        this.final = true;
        return this.onEnd(e.code, e.reason);
      }
      if (e.code === 1013) return this.retry("The server asked us to reconnect", 300);
      if (e.code === 1001) return this.retry("The server is restarting");
      this.retry(navigator.onLine === false ? "You are offline" : "Connection lost");
    };
  }

  /** Waits (`delay`, else the backoff) and connects again, counting the seconds down. */
  retry(why, delay) {
    clearTimeout(this.retryTimer);
    clearInterval(this.tickTimer);
    const wait = delay ?? this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX);
    this.retryAt = Date.now() + wait;
    const tick = () => this.onDown(why, Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000)));
    tick();
    this.tickTimer = setInterval(tick, 1000);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  /** Connects now, also after the socket ended (a tap on the connection button). */
  reconnectNow() {
    if (this.ws || this.destroyed) return;
    this.final = false;
    this.onReconnect();
    this.connect();
  }

  /** Stops reconnecting: the session is gone or out of reach. */
  stop() {
    this.final = true;
  }

  /** Closes the socket without a reconnect. */
  drop() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onclose = ws.onmessage = ws.onopen = null;
    try { ws.close(1000, "leaving"); } catch { /* already closed */ }
  }

  /** Sends one message; false when no socket is open. */
  send(obj) {
    if (!this.live) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  destroy() {
    this.destroyed = true;
    this.drop();
    clearTimeout(this.retryTimer);
    clearInterval(this.tickTimer);
    clearInterval(this.keepAlive);
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    document.removeEventListener("visibilitychange", this.onVisible);
  }
}
