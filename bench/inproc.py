"""The library's own Python cost per echo round trip or fan-out delivery, in-process.

    python -m bench.inproc echo ours            # or plain-orjson, plain
    python -m bench.inproc fanout ours --n 1000 # per delivery, one room of N

No sockets, no uvicorn: each bench server's ASGI app (`bench/servers`) runs in this process
with an ASGI ``receive`` that waits on a queue (as uvicorn's does) and a ``send`` that only
counts. What remains is what the application side costs (Starlette, FastAPI's routing, the
library or the plain loop): the part of `bench.run`'s figures that a change to the library can
move, measured without the noise of a shared machine (CPU time of this process, uvloop).
Run each server a few times, alternating; compare within one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import time
from typing import Any

APPS = {
    "ours": "bench.servers.ours",
    "plain": "bench.servers.plain",
    "plain-orjson": "bench.servers.plain_orjson",
}
_TASKS: list[asyncio.Task[Any]] = []  # held: an unreferenced task may be collected mid-run
PAYLOAD = '{"room":"bench","seq":12,"t":1234.5678,"pad":"' + "x" * 40 + '"}'


def _scope() -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"upgrade", b"websocket")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "extensions": {"websocket.http.response": {}},
        "state": {},
    }


class Peer:
    """One client: its frames wait in a queue the app's ``receive`` awaits."""

    def __init__(self, on_frame: Any = None) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.queue.put_nowait({"type": "websocket.connect"})
        self.frames = 0
        self.on_frame = on_frame

    async def receive(self) -> dict[str, Any]:
        return await self.queue.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            self.frames += 1
            if self.on_frame is not None:
                self.on_frame(self)

    def text(self, text: str) -> None:
        self.queue.put_nowait({"type": "websocket.receive", "text": text})


async def _start(app: Any) -> None:
    started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not started.is_set():
            started.set()
            return {"type": "lifespan.startup"}
        await asyncio.Event().wait()  # never shut down: the process exits
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        pass

    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    _TASKS.append(asyncio.get_running_loop().create_task(app(lifespan, receive, send)))
    await asyncio.sleep(0.05)


async def echo(app: Any, clients: int, total: int) -> str:
    frame = '{"event":"echo","payload":' + PAYLOAD + "}"
    count = 0
    done = asyncio.get_running_loop().create_future()

    def on_frame(peer: Peer) -> None:
        nonlocal count
        count += 1
        if count >= total:
            if not done.done():
                done.set_result(None)
        else:
            peer.text(frame)

    peers = [Peer(on_frame) for _ in range(clients)]
    for p in peers:
        _TASKS.append(asyncio.get_running_loop().create_task(app(_scope(), p.receive, p.send)))
    await asyncio.sleep(0.1)
    cpu = time.process_time()
    for p in peers:
        p.text(frame)
    await done
    cpu = time.process_time() - cpu
    per = cpu / total * 1e6
    return f"{per:.2f} us of CPU per round trip ({total:,} round trips, {clients} clients)"


async def fanout(app: Any, n: int, publishes: int) -> str:
    counting = False
    count = 0
    done = asyncio.get_running_loop().create_future()

    def on_frame(peer: Peer) -> None:
        nonlocal count
        if counting:
            count += 1
            if count == n * publishes:
                done.set_result(None)

    peers = [Peer(on_frame) for _ in range(n)]
    for p in peers:
        _TASKS.append(asyncio.get_running_loop().create_task(app(_scope(), p.receive, p.send)))
    await asyncio.sleep(0.1)
    for p in peers:
        p.text('{"event":"join","payload":{"room":"bench"}}')
    await asyncio.sleep(0.3)
    sender = Peer()
    _TASKS.append(
        asyncio.get_running_loop().create_task(app(_scope(), sender.receive, sender.send))
    )
    await asyncio.sleep(0.05)
    frame = '{"event":"publish","payload":' + PAYLOAD + "}"
    counting = True
    cpu = time.process_time()
    for _ in range(publishes):
        sender.text(frame)
        await asyncio.sleep(0)
    await done
    cpu = time.process_time() - cpu
    per = cpu / (n * publishes) * 1e9
    return f"{per:.0f} ns of CPU per delivery (N = {n:,}, {publishes} publishes)"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("workload", choices=["echo", "fanout"])
    ap.add_argument("server", choices=sorted(APPS))
    ap.add_argument("--n", type=int, default=1000, help="fanout: receivers")
    ap.add_argument("--publishes", type=int, default=300)
    ap.add_argument("--clients", type=int, default=100, help="echo: clients")
    ap.add_argument("--round-trips", type=int, default=300_000)
    a = ap.parse_args()
    os.environ.setdefault("WS_AUTH_ENABLED", "false")
    app = importlib.import_module(APPS[a.server]).app

    async def go() -> str:
        await _start(app)
        if a.workload == "echo":
            return await echo(app, a.clients, a.round_trips)
        return await fanout(app, a.n, a.publishes)

    try:
        import uvloop

        result = uvloop.run(go())
    except ImportError:
        result = asyncio.run(go())
    print(f"{a.server} {a.workload}: {result}", flush=True)
    os._exit(0)  # the apps' connections are never closed: do not wait for them


if __name__ == "__main__":
    main()
