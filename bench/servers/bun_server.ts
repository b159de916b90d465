// Bun's native WebSocket server (uWebSockets pub/sub), same envelope and events.
//   PORT=8000 bun run bench/servers/bun_server.ts
const port = Number(process.env.PORT ?? 8000);
const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, srv) {
    if (srv.upgrade(req)) return undefined;
    return new Response("upgrade required", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    message(ws, msg) {
      const m = JSON.parse(typeof msg === "string" ? msg : new TextDecoder().decode(msg));
      const p = m.payload;
      if (m.event === "publish") server.publish(p.room, JSON.stringify({ event: "message", payload: p }));
      else if (m.event === "echo") ws.send(JSON.stringify({ event: "echo", payload: p }));
      else if (m.event === "join") ws.subscribe(p.room);
    },
  },
});
console.log(`bun ${Bun.version} listening on ${server.hostname}:${server.port}`);
