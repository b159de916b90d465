// A real server restart, driven by tests/test_js_client.py over stdin/stdout:
//   "joined"   -> the test stops the server (uvicorn closes with 1012)
//   "buffered" -> the client emitted while disconnected; the test starts the server again
//   "RESULT {...}" once the client reconnected, rejoined its room and delivered the emit.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { check, next } from "./scenarios.mjs";

const env = JSON.parse(process.env.ORCS_ENV);
const { connect } = await import(pathToFileURL(env.clientPath).href);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (line) => process.stdout.write(`${line}\n`);

const client = connect(env.chatUrl, { reconnect: { initialDelay: 100, maxDelay: 500 } });
const closes = [];
client.on("close", (info) => closes.push(info));
await next(client, "welcome");
await client.request("join", { room: "survivors" });
say("joined");

const dropped = await next(client, "close");
check(dropped.willReconnect === true, "a restart is retried", dropped);
const delivered = next(client, "message", (p) => p.room === "survivors", 30_000);
const reopened = next(client, "open", () => true, 30_000);
const sent = client.emit("message", { room: "survivors", text: "sent while the server was down" });
check(client.buffered >= 1, "the emit waits", client.buffered);
say("buffered");
await lines.next(); // the server is back

const opened = await reopened;
await sent;
const message = await delivered; // proves the automatic rejoin of "survivors" and the buffered emit
say(`RESULT ${JSON.stringify({ reconnected: opened.reconnected, code: dropped.code, text: message.text })}`);
await client.close();
process.exit(0);
