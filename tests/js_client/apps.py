"""Servers for the client tests.

- :func:`extras_app`: what the chat example has no route for: a slow handler (timeouts), a
  route that requires a token (4401), and ``/ws/positions``, a stand-in for the server side of
  issue 13 that sends frames carrying room positions and answers ``join`` with
  ``{room, recovered, offset, epoch}``, so the clients' position bookkeeping is tested
  against the wire format without depending on a server feature.
- :class:`ChatProcess`: the chat example under uvicorn in its own process, restartable on the
  same port (a real server restart: the clients see 1012, then a refused connection).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse

from fastapi_orcs_ws import Connection, WebSocketRouter, WebSocketSettings

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = Path(__file__).resolve().parent
SECRET = "client-tests-secret-that-is-long-enough-0123456789"
EPOCH = "epoch-1"


def extras_app() -> FastAPI:
    settings = WebSocketSettings(jwt_secret=SECRET)
    router = WebSocketRouter(settings=settings)
    slow = router.ws("/ws/slow")

    @slow.on("slow")
    async def sleep(ws: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(payload.get("seconds", 5)))
        return {"slept": payload.get("seconds", 5)}

    @slow.on("fast")
    async def fast(ws: Connection) -> str:
        return "fast"

    @slow.on("kick")
    async def kick(ws: Connection, payload: int) -> None:
        await ws.close(payload, "kicked")

    private = router.ws("/ws/private", auth={"required": True})

    @private.on("whoami")
    async def whoami(ws: Connection) -> str:
        return str(ws.data.user.id)

    app = FastAPI(title="client test extras")
    app.include_router(router)

    @app.websocket("/ws/positions")
    async def positions(websocket: WebSocket) -> None:
        await positions_endpoint(websocket)

    @app.get("/js/blank", response_class=HTMLResponse)
    async def blank() -> str:
        return "<!doctype html><title>client tests</title>"

    @app.get("/js/{name}")
    async def js_file(name: str) -> FileResponse:
        # The scenarios for the browser (never node_modules: only files in this folder).
        path = JS_DIR / name
        if path.parent != JS_DIR or path.suffix != ".mjs" or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path, media_type="text/javascript")

    return app


async def positions_endpoint(websocket: WebSocket) -> None:
    """Issue 13's wire format, minimal: one epoch, offsets per room, no real history."""
    await websocket.accept()
    offsets = websocket.app.state.__dict__.setdefault("offsets", {})
    try:
        while True:
            frame = await websocket.receive_json()
            event, payload, msg_id = frame.get("event"), frame.get("payload") or {}, frame.get("id")
            if event == "join":
                room = payload["room"]
                since = payload.get("since")
                offset = offsets.setdefault(room, 0)
                recovered = bool(since) and since.get("epoch") == EPOCH
                # "overtaken": n live frames broadcast after the join took its position but
                # written before its ack (a race every real server has): the ack's offset is
                # behind what the client has already seen.
                for n in range(int(payload.get("overtaken", 0))):
                    offsets[room] += 1
                    await websocket.send_json(
                        {
                            "event": "message",
                            "payload": {"n": n},
                            "room": room,
                            "offset": offsets[room],
                            "epoch": EPOCH,
                        }
                    )
                ack = {"room": room, "recovered": recovered, "offset": offset, "epoch": EPOCH}
                await websocket.send_json(
                    {"event": "ack", "id": msg_id, "payload": {**ack, "since": since}}
                )
            elif event == "publish":
                room = payload["room"]
                for n in range(int(payload.get("count", 1))):
                    offsets[room] = offsets.get(room, 0) + 1
                    await websocket.send_json(
                        {
                            "event": "message",
                            "payload": {"n": n},
                            "room": room,
                            "offset": offsets[room],
                            "epoch": EPOCH,
                        }
                    )
                if msg_id is not None:
                    await websocket.send_json({"event": "ack", "id": msg_id, "payload": None})
            elif event == "drop":
                await websocket.close(1012, "Service Restart")
                return
    except WebSocketDisconnect:
        return


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChatProcess:
    """``uvicorn examples.chat_app.main:app`` in a child process; ``restart`` keeps the port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    def start(self, timeout: float = 20.0) -> None:
        assert self.process is None
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.chat_app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the chat server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the chat server did not start") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, as a deploy does: uvicorn closes the open sockets with 1012."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
