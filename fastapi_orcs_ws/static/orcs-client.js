// The official fastapi-orcs-ws client: a dependency-free ES module for browsers and Node 22+.
//
//   import { connect } from "/orcs-client.js";
//   const client = connect("/ws/chat", { token: () => getToken() });
//   client.on("message", (payload) => show(payload));
//   const ack = await client.request("join", { room: "blue" });
//
// The wire protocol is docs/protocol.md: JSON text frames {"event", "payload", "id"?}; an
// "id" asks for an "ack" (or an "error" carrying the same id). Types: orcs-client.d.ts.

/** How many emits and requests wait while the client is not connected (overflow rejects). */
export const DEFAULT_BUFFER_SIZE = 100;
/** How long a request waits for its ack, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** Reconnection: full-jitter exponential backoff, delay = random(0, min(maxDelay, initialDelay * factor ** attempt)). */
export const DEFAULT_RECONNECT = Object.freeze({ initialDelay: 500, maxDelay: 10_000, factor: 2, retries: Infinity });
/** The events the client itself emits; a server event with one of these names is refused. */
export const LIFECYCLE_EVENTS = Object.freeze(["open", "close", "reconnect", "recovery"]);

const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout fires at once for anything longer
const CLOSE_TIMEOUT_MS = 5_000; // close() gives up waiting for the peer's close frame after this
const UNAUTHORIZED = 4401;
const FORBIDDEN = 4403;
const NORMAL = 1000;
const LIFECYCLE = new Set(LIFECYCLE_EVENTS);

/** The server answered a request with an `error` event: `code`, `message` and the whole `payload`. */
export class EventError extends Error {
  constructor(payload, event) {
    const body = payload && typeof payload === "object" ? payload : {};
    super(typeof body.message === "string" ? body.message : "error");
    this.name = "EventError";
    this.code = typeof body.code === "string" ? body.code : "error";
    this.payload = body;
    this.event = event;
  }
}

/**
 * A failure on the client's side. `code` is one of:
 * "timeout" (no ack in time), "buffer_full" (too many frames waiting while disconnected),
 * "disconnected" (the connection dropped before the ack came), "closed" (the client is closed).
 */
export class ClientError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "ClientError";
    this.code = code;
  }
}

/** Open a client; it connects at once and reconnects by itself until `close()`. */
export function connect(url, options = {}) {
  return new Client(url, options);
}

export class Client {
  #url;
  #token;
  #protocols;
  #tokenInQuery;
  #backoff;
  #bufferSize;
  #timeout;
  #joinEvent;
  #leaveEvent;
  #WebSocket;
  #ws = null;
  #state = "connecting";
  #attempt = 0;
  #opened = 0;
  #timer = null;
  #stopped = null; // {code, reason} once the client is closed for good
  #closing = null; // {code, reason} while close() waits for the socket
  #closeWaiters = [];
  #handlers = new Map();
  #pending = new Map(); // id -> {event, payload, resolve, reject, timer, sent, auto}
  #buffer = []; // {frame, resolve, reject, id}
  #nextId = 1;
  #positions = new Map(); // room -> {offset, epoch}
  #rooms = new Set(); // rooms joined through the join event, rejoined after a reconnect

  constructor(url, options = {}) {
    if (options === null || typeof options !== "object") throw new TypeError("options must be an object");
    this.#url = resolveUrl(url);
    const { token, protocols = [], reconnect = true, bufferSize = DEFAULT_BUFFER_SIZE } = options;
    if (token !== undefined && token !== null && typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("token must be a string or a function returning one");
    }
    this.#token = token ?? null;
    if (!Array.isArray(protocols) || protocols.some((p) => typeof p !== "string")) {
      throw new TypeError("protocols must be an array of strings");
    }
    this.#protocols = [...protocols];
    if (options.tokenIn !== undefined && options.tokenIn !== "subprotocol" && options.tokenIn !== "query") {
      throw new TypeError('tokenIn must be "subprotocol" (the default) or "query"');
    }
    this.#tokenInQuery = options.tokenIn === "query";
    this.#backoff = reconnect === false ? null : { ...DEFAULT_RECONNECT, ...(reconnect === true ? {} : reconnect) };
    if (this.#backoff) {
      const { initialDelay, maxDelay, factor, retries } = this.#backoff;
      if (!(initialDelay > 0 && maxDelay >= initialDelay && maxDelay <= MAX_TIMER_MS && factor >= 1 && retries >= 0)) {
        throw new RangeError("reconnect needs initialDelay > 0, maxDelay >= initialDelay, factor >= 1, retries >= 0");
      }
    }
    if (!Number.isInteger(bufferSize) || bufferSize < 0) throw new RangeError("bufferSize must be an integer >= 0");
    this.#bufferSize = bufferSize;
    this.#timeout = positiveMs(options.timeout ?? DEFAULT_TIMEOUT_MS, "timeout");
    const rooms = options.rooms === undefined ? {} : options.rooms;
    this.#joinEvent = rooms === false ? null : rooms.join ?? "join";
    this.#leaveEvent = rooms === false ? null : rooms.leave ?? "leave";
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("no WebSocket implementation: use a browser or Node 22+, or pass options.WebSocket");
    }
    this.#dial(typeof this.#token === "function" ? this.#askToken() : this.#token);
  }

  /** "connecting", "open", "reconnecting" (waiting before the next attempt) or "closed". */
  get state() {
    return this.#state;
  }

  /** The last position seen per room: `{room: {offset, epoch}}` (from frames that carry one). */
  get positions() {
    return Object.fromEntries([...this.#positions].map(([room, pos]) => [room, { ...pos }]));
  }

  /** Frames waiting for a connection (emits and requests made while disconnected). */
  get buffered() {
    return this.#buffer.length;
  }

  /** Send an event without asking for an ack. Resolves once the frame is written to the socket. */
  emit(event, payload = null) {
    checkEvent(event);
    return new Promise((resolve, reject) => {
      this.#queue({ event, payload: this.#outgoing(event, payload) }, resolve, reject, null);
    });
  }

  /** Send an event with an id; resolves with the ack's payload, rejects with EventError or ClientError. */
  request(event, payload = null, options = {}) {
    checkEvent(event);
    const timeout = positiveMs(options.timeout ?? this.#timeout, "timeout");
    return this.#request(event, this.#outgoing(event, payload), timeout, false);
  }

  /** Call `handler(payload, frame)` for each `event` (or `handler(info)` for a lifecycle event). Returns `off`. */
  on(event, handler) {
    checkEvent(event);
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    let set = this.#handlers.get(event);
    if (!set) this.#handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => this.off(event, handler);
  }

  /** Remove one handler, or every handler of `event` when `handler` is left out. */
  off(event, handler) {
    if (handler === undefined) this.#handlers.delete(event);
    else this.#handlers.get(event)?.delete(handler);
  }

  /** Close for good: no reconnection; waiting emits and requests reject with ClientError("closed"). */
  close(code = NORMAL, reason = "") {
    if (code !== NORMAL && !(Number.isInteger(code) && code >= 3000 && code <= 4999)) {
      throw new RangeError("close code must be 1000 or in 3000-4999");
    }
    if (this.#stopped) return Promise.resolve();
    return new Promise((resolve) => {
      this.#closeWaiters.push(resolve);
      if (this.#closing) return;
      this.#closing = { code, reason };
      clearTimeout(this.#timer);
      const ws = this.#ws;
      if (ws && ws.readyState === 1) {
        ws.close(code, reason); // the socket's close event finishes the job...
        // ...or this, if the peer never answers the close frame.
        this.#timer = setTimeout(() => this.#stop({ code, reason, wasClean: false }), CLOSE_TIMEOUT_MS);
      } else {
        if (ws) {
          // A socket still connecting: abort it. (Node's WebSocket fires no close event then.)
          ws.onopen = ws.onmessage = ws.onclose = null;
          ws.close();
        }
        this.#stop({ code, reason, wasClean: true });
      }
    });
  }

  // -- sending ------------------------------------------------------------------------------

  #outgoing(event, payload) {
    // A join for a room we have a position in carries it, so the server can replay what we missed.
    if (event === this.#joinEvent && isRoomPayload(payload) && payload.since === undefined) {
      const since = this.#positions.get(payload.room);
      if (since) return { ...payload, since: { ...since } };
    }
    if (event === this.#leaveEvent && isRoomPayload(payload)) {
      this.#rooms.delete(payload.room);
      this.#positions.delete(payload.room);
    }
    return payload;
  }

  #request(event, payload, timeout, auto) {
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      const entry = { event, payload, resolve, reject, auto, timer: null };
      entry.timer = setTimeout(() => {
        this.#pending.delete(id);
        this.#buffer = this.#buffer.filter((item) => item.id !== id);
        reject(new ClientError("timeout", `no answer to "${event}" within ${timeout} ms`));
      }, timeout);
      this.#pending.set(id, entry);
      const fail = (error) => {
        clearTimeout(entry.timer);
        this.#pending.delete(id);
        reject(error);
      };
      this.#queue({ event, payload, id }, () => {}, fail, id);
    });
  }

  #queue(frame, resolve, reject, id) {
    if (this.#stopped || this.#closing) {
      reject(new ClientError("closed", "the client is closed"));
      return;
    }
    let text;
    try {
      text = JSON.stringify(frame);
    } catch (error) {
      reject(error); // a payload JSON cannot carry (a cycle, a BigInt)
      return;
    }
    const item = { frame, text, resolve, reject, id };
    if (this.#state === "open" && this.#write(item)) return;
    if (this.#buffer.length >= this.#bufferSize) {
      reject(
        new ClientError("buffer_full", `${this.#buffer.length} frames already wait for the connection (bufferSize)`),
      );
      return;
    }
    this.#buffer.push(item);
  }

  #write(item) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(item.text);
    const { frame } = item;
    const entry = frame.id === undefined ? null : this.#pending.get(frame.id);
    if (entry) entry.sent = true; // from now on a dropped connection fails it ("disconnected")
    if (frame.event === this.#joinEvent && frame.id === undefined && isRoomPayload(frame.payload)) {
      this.#rooms.add(frame.payload.room);
    }
    item.resolve();
    return true;
  }

  #flush() {
    while (this.#buffer.length && this.#state === "open") {
      if (!this.#write(this.#buffer[0])) return;
      this.#buffer.shift();
    }
  }

  // -- the connection -----------------------------------------------------------------------

  #askToken() {
    try {
      return Promise.resolve(this.#token());
    } catch (error) {
      return Promise.reject(error);
    }
  }

  async #dial(tokenOrPromise) {
    let token;
    try {
      token = await tokenOrPromise;
    } catch (error) {
      this.#stop({ code: UNAUTHORIZED, reason: `token callback failed: ${error}`, wasClean: false });
      return;
    }
    if (this.#stopped || this.#closing) {
      if (this.#closing) this.#stop({ ...this.#closing, wasClean: true });
      return;
    }
    this.#state = this.#opened ? "reconnecting" : "connecting";
    let url = this.#url;
    const protocols = [...this.#protocols];
    if (typeof token === "string" && token) {
      if (this.#tokenInQuery) {
        const u = new URL(url);
        u.searchParams.set("token", token);
        url = u.href;
      } else {
        protocols.unshift("token", token);
      }
    }
    let ws;
    try {
      ws = protocols.length ? new this.#WebSocket(url, protocols) : new this.#WebSocket(url);
    } catch (error) {
      this.#stop({ code: 1006, reason: `cannot open a WebSocket: ${error}`, wasClean: false });
      return;
    }
    this.#ws = ws;
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (message) => this.#onMessage(message.data);
    ws.onclose = (event) => this.#onClose(ws, event, token);
    ws.onerror = () => {
      // "error" is followed by "close", which decides what happens next; except in Node, whose
      // WebSocket may fire no "close" for a connection that failed to open (nodejs/undici#3546).
      if (ws.readyState !== 0) return;
      setTimeout(() => {
        if (ws !== this.#ws || ws.readyState === 1) return;
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        this.#onClose(ws, { code: 1006, reason: "", wasClean: false }, token);
      }, 0);
    };
  }

  #onOpen(ws) {
    if (ws !== this.#ws) return;
    const reconnected = this.#opened > 0;
    this.#opened += 1;
    this.#attempt = 0;
    this.#state = "open";
    // Rejoins first (so recovery comes before anything new), then what waited, then the app.
    if (reconnected) this.#rejoin();
    this.#flush();
    this.#fire("open", { reconnected });
  }

  #rejoin() {
    if (!this.#joinEvent) return;
    const rooms = new Set([...this.#rooms, ...this.#positions.keys()]);
    for (const room of rooms) {
      const payload = this.#outgoing(this.#joinEvent, { room });
      this.#request(this.#joinEvent, payload, this.#timeout, true).then(
        (ack) => this.#fire("recovery", { room, ...(ack && typeof ack === "object" ? ack : {}) }),
        (error) => this.#report("error", { code: error.code, message: `rejoining "${room}" failed: ${error.message}`, room }),
      );
    }
  }

  async #onClose(ws, event, token) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    const code = event.code;
    const reason = event.reason ?? "";
    for (const [id, entry] of this.#pending) {
      if (!entry.sent) continue;
      clearTimeout(entry.timer);
      this.#pending.delete(id);
      entry.reject(new ClientError("disconnected", `the connection closed (${code}) before "${entry.event}" was answered`));
    }
    const info = { code, reason, wasClean: Boolean(event.wasClean) };
    if (this.#closing) return this.#stop(info);
    // Server decisions that a retry cannot change.
    if (!this.#backoff || code === NORMAL || code === FORBIDDEN) return this.#stop(info);
    if (this.#attempt >= this.#backoff.retries) return this.#stop({ ...info, reason: reason || "gave up reconnecting" });
    let next = token;
    if (typeof this.#token === "function") {
      // Asked before each reconnect; after a refusal (4401) only a new token is worth a retry.
      this.#state = "reconnecting";
      try {
        next = await this.#askToken();
      } catch (error) {
        return this.#stop({ ...info, reason: `token callback failed: ${error}` });
      }
      if (this.#closing) return this.#stop({ ...info, ...this.#closing });
      if (code === UNAUTHORIZED && (!next || next === token)) return this.#stop(info);
    } else if (code === UNAUTHORIZED) {
      return this.#stop(info);
    }
    const { initialDelay, maxDelay, factor } = this.#backoff;
    const delay = Math.round(Math.random() * Math.min(maxDelay, initialDelay * factor ** this.#attempt));
    this.#attempt += 1;
    this.#state = "reconnecting";
    this.#fire("close", { ...info, willReconnect: true });
    this.#fire("reconnect", { attempt: this.#attempt, delay });
    this.#timer = setTimeout(() => this.#dial(next), delay);
  }

  #stop(info) {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    this.#stopped = info;
    this.#state = "closed";
    this.#ws = null;
    const closed = new ClientError("closed", `the client is closed (${info.code}${info.reason ? `: ${info.reason}` : ""})`);
    for (const entry of this.#pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(closed);
    }
    this.#pending.clear();
    for (const item of this.#buffer) item.reject(closed);
    this.#buffer = [];
    this.#fire("close", { ...info, willReconnect: false });
    for (const resolve of this.#closeWaiters.splice(0)) resolve();
  }

  // -- receiving ----------------------------------------------------------------------------

  #onMessage(data) {
    let frame;
    try {
      frame = typeof data === "string" ? JSON.parse(data) : null;
    } catch {
      frame = null;
    }
    if (!frame || typeof frame !== "object" || Array.isArray(frame) || typeof frame.event !== "string") {
      this.#report("error", { code: "invalid_frame", message: "the server sent a frame that is not an event envelope" });
      return;
    }
    const { event, payload = null, id } = frame;
    this.#remember(frame);
    if ((event === "ack" || event === "error") && id !== undefined && id !== null) {
      const entry = this.#pending.get(id);
      if (entry) {
        clearTimeout(entry.timer);
        this.#pending.delete(id);
        if (event === "ack") {
          this.#joined(entry, payload);
          entry.resolve(payload);
        } else {
          entry.reject(new EventError(payload, entry.event));
        }
        return;
      }
    }
    if (LIFECYCLE.has(event)) {
      console.warn(`orcs-client: the server sent "${event}", a name the client keeps for its own events; dropped`);
      return;
    }
    this.#report(event, payload, frame);
  }

  #remember(frame) {
    const { room, offset, epoch } = frame;
    if (typeof room !== "string" || !Number.isSafeInteger(offset) || typeof epoch !== "string") return;
    this.#advance(room, offset, epoch);
  }

  #advance(room, offset, epoch) {
    // Within one epoch a position only moves forward: a live frame that overtook the join's
    // ack (or came during its replay) is already behind us and must not be replayed again.
    const known = this.#positions.get(room);
    if (!known || known.epoch !== epoch || offset > known.offset) this.#positions.set(room, { offset, epoch });
  }

  #joined(entry, ack) {
    if (entry.event !== this.#joinEvent || !isRoomPayload(entry.payload)) return;
    const room = entry.payload.room;
    this.#rooms.add(room);
    // The answer of a join, {room, recovered, offset, epoch}, is the new baseline (never a step back).
    if (ack && typeof ack === "object" && Number.isSafeInteger(ack.offset) && typeof ack.epoch === "string") {
      this.#advance(room, ack.offset, ack.epoch);
    }
  }

  #report(event, payload, frame) {
    if (!this.#handlers.get(event)?.size && event === "error") {
      console.warn("orcs-client: unhandled error event", payload);
      return;
    }
    this.#fire(event, payload, frame);
  }

  #fire(event, payload, frame) {
    const handlers = this.#handlers.get(event);
    if (!handlers) return;
    for (const handler of [...handlers]) {
      try {
        handler(payload, frame);
      } catch (error) {
        // One faulty handler must not stop the others; the error still surfaces as uncaught.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}

function resolveUrl(url) {
  if (typeof url !== "string" && !(url instanceof URL)) throw new TypeError("url must be a string or a URL");
  const base = globalThis.location?.href;
  const parsed = base ? new URL(url, base) : new URL(url);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(`url must be ws:, wss:, http: or https:, not ${parsed.protocol}`);
  }
  return parsed.href;
}

function checkEvent(event) {
  if (typeof event !== "string" || !event) throw new TypeError("event names are non-empty strings");
}

function positiveMs(value, name) {
  if (typeof value !== "number" || !(value > 0 && value <= MAX_TIMER_MS)) {
    throw new RangeError(`${name} must be a number of milliseconds in (0, ${MAX_TIMER_MS}]`);
  }
  return value;
}

function isRoomPayload(payload) {
  return payload !== null && typeof payload === "object" && typeof payload.room === "string";
}
