// Scenarios for orcs-client.js, run the same way in Node 22 (client.test.mjs) and in headless
// Chromium (tests/test_js_client.py loads this file into a page). Each takes the client module
// and the servers' URLs, checks what a user of the client sees, and throws on any difference.

const WAIT_MS = 10_000; // upper bound for every wait

export function check(condition, message, detail) {
  if (!condition) throw new Error(`${message}${detail === undefined ? "" : `: ${JSON.stringify(detail)}`}`);
}

/** The next `event` (matching `where`) on `client`, or a rejection after `ms`. */
export function next(client, event, where = () => true, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${event}" within ${ms} ms`));
    }, ms);
    const off = client.on(event, (payload) => {
      if (!where(payload)) return;
      clearTimeout(timer);
      off();
      resolve(payload);
    });
  });
}

/** Settle `promise` as {ok, value} or {ok: false, error: {name, code, message, payload}}. */
export async function outcome(promise) {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    return { ok: false, error: { name: error.name, code: error.code, message: error.message, payload: error.payload } };
  }
}

export const scenarios = {
  /** request() resolves with the ack; the broadcast that follows reaches on(). */
  async requestAck({ connect }, env) {
    const client = connect(env.chatUrl);
    try {
      const welcome = await next(client, "welcome");
      check(typeof welcome.clientId === "string" && welcome.clientId, "welcome has a clientId", welcome);
      const ack = await client.request("join", { room: "js-room" });
      // The chat's join answers {room, recovered, offset, epoch} (its rooms keep history).
      check(
        JSON.stringify(Object.keys(ack)) === JSON.stringify(["room", "recovered", "offset", "epoch"]) &&
          Number.isSafeInteger(ack.offset) && typeof ack.epoch === "string" && ack.epoch,
        "the ack is the handler's return value",
        ack,
      );
      const received = next(client, "message", (p) => p.room === "js-room");
      await client.emit("message", { room: "js-room", text: "hello from js" });
      const message = await received;
      check(message.text === "hello from js" && message.from === welcome.clientId, "own broadcast", message);
      return { ack: { room: ack.room, recovered: ack.recovered }, message: { text: message.text, room: message.room } };
    } finally {
      await client.close();
    }
  },

  /** An error event answering a request rejects it with EventError (code, message, payload). */
  async errorEvent({ connect, EventError }, env) {
    const client = connect(env.chatUrl);
    try {
      const invalid = await outcome(client.request("join", {}));
      check(!invalid.ok && invalid.error.name === "EventError", "validation error rejects", invalid);
      check(invalid.error.code === "validation_error", "code", invalid.error);
      check(invalid.error.payload.errors[0].loc[0] === "room", "errors name the field", invalid.error.payload);
      const unknown = await outcome(client.request("no-such-event", null));
      check(!unknown.ok && unknown.error.code === "unknown_event", "unknown event rejects", unknown);
      // The connection is still usable.
      const ack = await client.request("join", { room: "after-errors" });
      check(ack.room === "after-errors", "still works", ack);
      check(typeof EventError === "function", "EventError is exported");
      return { invalid: invalid.error.code, unknown: unknown.error.code };
    } finally {
      await client.close();
    }
  },

  /** No ack in time rejects with ClientError("timeout"); later requests still work. */
  async timeout({ connect }, env) {
    const client = connect(env.slowUrl);
    try {
      const slow = await outcome(client.request("slow", { seconds: 5 }, { timeout: 200 }));
      check(!slow.ok && slow.error.name === "ClientError" && slow.error.code === "timeout", "times out", slow);
      const fast = await client.request("fast");
      check(fast === "fast", "a later request is answered", fast);
      return { slow: slow.error.code, fast };
    } finally {
      await client.close();
    }
  },

  /** 4401 stops reconnecting: one close event, willReconnect false, nothing retried. */
  async unauthorizedStops({ connect }, env) {
    let asked = 0;
    const client = connect(env.privateUrl, {
      token: () => {
        asked += 1;
        return "not-a-valid-token";
      },
      reconnect: { initialDelay: 10, maxDelay: 20 },
    });
    const reconnects = [];
    client.on("reconnect", (info) => reconnects.push(info));
    const closed = await next(client, "close");
    check(closed.code === 4401 && closed.willReconnect === false, "4401 is final", closed);
    check(client.state === "closed", "state closed", client.state);
    check(reconnects.length === 0, "no reconnect scheduled", reconnects);
    // The callback was asked for the connection and once more after the refusal (same token: stop).
    check(asked === 2, "token callback asked twice", asked);
    const after = await outcome(client.request("whoami"));
    check(!after.ok && after.error.code === "closed", "a closed client refuses requests", after);
    return { code: closed.code, asked };
  },

  /** After 4401 the token callback's new token is used for the reconnect. */
  async unauthorizedThenNewToken({ connect }, env) {
    const tokens = ["not-a-valid-token", env.token];
    const client = connect(env.privateUrl, {
      token: async () => tokens.shift() ?? env.token,
      reconnect: { initialDelay: 10, maxDelay: 20 },
    });
    try {
      const first = await next(client, "close");
      check(first.code === 4401 && first.willReconnect === true, "retries with the new token", first);
      const opened = await next(client, "open");
      check(opened.reconnected === true, "reconnected", opened);
      const who = await client.request("whoami");
      check(who === "alice", "authenticated as the new token's subject", who);
      return { who };
    } finally {
      await client.close();
    }
  },

  /** 1000 and 4403 from the server are final; other codes (4429 here) are retried. */
  async serverCloses({ connect }, env) {
    const seen = {};
    for (const code of [1000, 4403, 4429]) {
      const client = connect(env.slowUrl, { reconnect: { initialDelay: 10, maxDelay: 50 } });
      try {
        await next(client, "open");
        const closed = next(client, "close");
        await client.emit("kick", code);
        const info = await closed;
        check(info.code === code && info.reason === "kicked", "the server's code and reason", info);
        if (info.willReconnect) {
          await next(client, "open");
          check((await client.request("fast")) === "fast", "works after the retry");
        } else {
          check(client.state === "closed", "stopped", client.state);
        }
        seen[code] = info.willReconnect;
      } finally {
        await client.close();
      }
    }
    return seen;
  },

  /** Emits wait while disconnected, up to bufferSize; one more rejects; close() rejects the rest. */
  async bufferOverflow({ connect }, env) {
    const client = connect(env.deadUrl, { bufferSize: 2, reconnect: { initialDelay: 5000, maxDelay: 5000 } });
    const first = outcome(client.emit("message", { text: "1" }));
    const second = outcome(client.emit("message", { text: "2" }));
    const third = await outcome(client.emit("message", { text: "3" }));
    check(!third.ok && third.error.code === "buffer_full", "the third overflows", third);
    check(client.buffered === 2, "two wait", client.buffered);
    await client.close();
    const settled = [await first, await second];
    check(settled.every((o) => !o.ok && o.error.code === "closed"), "close() rejects what waited", settled);
    return { third: third.error.code, rest: settled.map((o) => o.error.code) };
  },

  /** Emits and requests made before the socket opens are sent, in order, once it does. */
  async bufferedBeforeOpen({ connect }, env) {
    const client = connect(env.chatUrl);
    try {
      check(client.state === "connecting", "not open yet", client.state);
      const received = next(client, "message", (p) => p.room === "early");
      const joined = client.request("join", { room: "early" });
      const sent = client.emit("message", { room: "early", text: "sent before open" });
      check(client.buffered === 2, "both wait", client.buffered);
      const ack = await joined;
      await sent;
      const message = await received;
      check(ack.room === "early" && message.text === "sent before open", "delivered in order", { ack, message });
      return { text: message.text };
    } finally {
      await client.close();
    }
  },

  /** Positions from frames are remembered per room and sent as `since` when rejoining. */
  async positions({ connect }, env) {
    const client = connect(env.positionsUrl, { reconnect: { initialDelay: 10, maxDelay: 50 } });
    const room = `p-${Math.random().toString(36).slice(2)}`; // fresh offsets on every run
    try {
      const joined = await client.request("join", { room });
      check(joined.offset === 0 && joined.epoch === "epoch-1", "join answers a position", joined);
      check(client.positions[room].offset === 0, "the join's answer is the baseline", client.positions);
      await client.request("publish", { room, count: 3 });
      check(client.positions[room].offset === 3 && client.positions[room].epoch === "epoch-1", "offset 3", client.positions);
      const recovered = next(client, "recovery");
      await client.emit("drop"); // the server closes with 1012; the client reconnects and rejoins
      const recovery = await recovered;
      check(recovery.room === room && recovery.recovered === true, "rejoined with recovery", recovery);
      check(
        recovery.since && recovery.since.offset === 3 && recovery.since.epoch === "epoch-1",
        "the rejoin sent the last position",
        recovery,
      );
      // A join the app sends itself carries the position too, unless it brings its own.
      const again = await client.request("join", { room });
      check(again.since && again.since.offset === 3, "an explicit join carries since", again);
      // Leaving forgets the room.
      await client.emit("leave", { room });
      check(!(room in client.positions), "leave forgets the position", client.positions);
      return { since: recovery.since, recovered: recovery.recovered };
    } finally {
      await client.close();
    }
  },

  /** A join's ack never moves a position back: frames that overtook it are not asked for again. */
  async positionsNeverBack({ connect }, env) {
    const client = connect(env.positionsUrl, { reconnect: { initialDelay: 10, maxDelay: 50 } });
    const room = `p-${Math.random().toString(36).slice(2)}`;
    const seen = [];
    client.on("message", (payload, frame) => seen.push(frame.offset));
    try {
      // Two live frames (offsets 1, 2) reach the client before the ack, which says offset 0.
      const joined = await client.request("join", { room, overtaken: 2 });
      check(joined.offset === 0, "the ack is behind the live frames", joined);
      check(seen.join() === "1,2", "the live frames came first", seen);
      const kept = client.positions[room];
      const recovered = next(client, "recovery");
      await client.emit("drop");
      const recovery = await recovered;
      return { kept, since: recovery.since };
    } finally {
      await client.close();
    }
  },
};
