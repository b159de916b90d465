// node --test client.test.mjs, with ORCS_ENV (JSON: the servers' URLs and a token) set by
// tests/test_js_client.py. Runs every scenario against real servers with Node's own WebSocket.
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { scenarios } from "./scenarios.mjs";

const env = JSON.parse(process.env.ORCS_ENV);
const lib = await import(pathToFileURL(env.clientPath).href);

test("Node has a global WebSocket (Node 22+)", () => {
  if (typeof globalThis.WebSocket !== "function") throw new Error("no global WebSocket");
});

for (const [name, scenario] of Object.entries(scenarios)) {
  test(name, async () => {
    const result = await scenario(lib, env);
    console.log(`RESULT ${name} ${JSON.stringify(result)}`);
  });
}
