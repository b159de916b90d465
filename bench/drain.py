"""Reconnect storm vs. graceful drain: what a second node sees when the first one restarts.

    .venv/bin/python -m bench.drain                       # 2,000 clients, 10 s window, both modes
    .venv/bin/python -m bench.drain --clients 500 --window 5 --mode drain

Two uvicorn processes of this module's app (`node A`, `node B`, both pinned to core 0) and a
load process (this one, pinned to core 1). The load process opens ``--clients`` WebSockets to
A; when A closes one, that client reconnects to B at once (no backoff: the worst case, so the
figure measures the server side alone). Then A gets SIGTERM:

- ``abrupt``: ``WS_DRAIN_SECONDS=0``, what uvicorn does by itself (every socket 1012 at once);
- ``drain``: ``WS_DRAIN_SECONDS=--window``, the library's drain (1012 spread with jitter).

B records the time of every accepted handshake; the result is B's accepts per second after
the SIGTERM (peak and series), the time until every client was back, and the close codes the
clients got. Results go to ``bench/results/drain.json``. Loopback only; everything is bounded
in count and time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fastapi_orcs_ws import Connection, WebSocketRouter

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "drain.json"


# -- the server (imported by uvicorn in the node processes) ---------------------------------


def make_app() -> FastAPI:
    """The node's app: one event route; B also keeps the time of every handshake it accepts."""
    if os.environ.get("BENCH_CORE"):
        os.sched_setaffinity(0, {int(os.environ["BENCH_CORE"])})
    accepts: list[float] = []
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("connect")
    async def connect(ws: Connection) -> None:
        accepts.append(time.time())

    @route.on("disconnect")
    async def disconnect(ws: Connection, payload: dict[str, Any]) -> None:
        return None  # runs for every client (the drain waits for it)

    app = FastAPI()
    app.include_router(router)

    @app.get("/accepts")
    async def accepted() -> list[float]:
        return accepts

    return app


# -- the load process -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_node(port: int, drain_seconds: float) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BENCH_CORE": "0",
        "WS_AUTH_ENABLED": "false",
        "WS_DRAIN_SECONDS": str(drain_seconds),
        # Loopback: every client has the same address; no per-address cap here.
        "WS_MAX_CONNECTIONS_PER_IP": "0",
        "WS_MAX_CONNECTIONS": "0",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.drain:make_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "websockets-sansio",
            "--ws-per-message-deflate",
            "false",
            "--backlog",
            "4096",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
    )


async def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


async def get_json(port: int, path: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


async def run_mode(mode: str, clients: int, window: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    port_a, port_b = free_port(), free_port()
    node_a = start_node(port_a, window if mode == "drain" else 0)
    node_b = start_node(port_b, 0)
    closes: collections.Counter[int] = collections.Counter()
    closed_at: list[float] = []
    moved = 0
    extensions: set[str] = set()
    done = asyncio.Event()
    opened = 0
    all_open = asyncio.Event()
    gate = asyncio.Semaphore(100)  # connects in flight at once

    async def one() -> None:
        nonlocal moved, opened
        async with gate:
            ws = await connect(
                f"ws://127.0.0.1:{port_a}/ws", compression=None, open_timeout=30, close_timeout=5
            )
        extensions.add(ws.response.headers.get("Sec-WebSocket-Extensions", "none"))
        opened += 1
        if opened == clients:
            all_open.set()
        try:
            await ws.wait_closed()
        finally:
            code = ws.close_code if ws.close_code is not None else 1006
            closes[code] += 1
            closed_at.append(time.time())
        async with connect(
            f"ws://127.0.0.1:{port_b}/ws", compression=None, open_timeout=60, close_timeout=5
        ):
            moved += 1
            await done.wait()

    try:
        await wait_port(port_a)
        await wait_port(port_b)
        start_cpu = time.process_time()
        tasks = [asyncio.create_task(one()) for _ in range(clients)]
        await asyncio.wait_for(all_open.wait(), 120)
        sigterm_at = time.time()
        node_a.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + window + 60
        while moved < clients and time.monotonic() < deadline:
            if any(t.done() and t.exception() for t in tasks):
                break
            await asyncio.sleep(0.05)
        all_back = time.time() - sigterm_at
        accepts = await get_json(port_b, "/accepts")
        node_a.wait(timeout=window + 60)
        a_exit = time.time() - sigterm_at
        client_cpu = time.process_time() - start_cpu
        done.set()
        await asyncio.wait(tasks, timeout=30)
        failed = [t.exception() for t in tasks if t.done() and t.exception()]
    finally:
        for node in (node_a, node_b):
            if node.poll() is None:
                node.terminate()
                node.wait(timeout=30)
    series = _per_second([t for t in accepts if t >= sigterm_at], sigterm_at)
    close_series = _per_second(closed_at, sigterm_at)
    return {
        "mode": mode,
        "clients": clients,
        "window_s": window if mode == "drain" else 0,
        "reconnected": moved,
        "failed_clients": len(failed),
        "first_failure": repr(failed[0])[:200] if failed else None,
        "close_codes": dict(sorted(closes.items())),
        "b_accepts_per_second": series,
        "a_closes_per_second": close_series,
        "peak_closes_per_second": max(close_series, default=0),
        "peak_per_second": max(series, default=0),
        "seconds_until_all_back": round(all_back, 2),
        "a_exit_after_s": round(a_exit, 2),
        "client_cpu_s": round(client_cpu, 2),
        "extensions": sorted(extensions),
    }


def _per_second(times: list[float], start: float) -> list[int]:
    counts = collections.Counter(int(t - start) for t in times)
    return [counts.get(s, 0) for s in range(max(counts, default=-1) + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--mode", choices=["both", "drain", "abrupt"], default="both")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not 1 <= args.clients <= 5000 or not 0 < args.window <= 60:
        parser.error("--clients 1..5000 and --window 0..60 s")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {1})
    modes = ["abrupt", "drain"] if args.mode == "both" else [args.mode]
    results = [asyncio.run(run_mode(mode, args.clients, args.window)) for mode in modes]
    for result in results:
        print(
            f"{result['mode']:>6}: {result['reconnected']}/{result['clients']} back on node B "
            f"in {result['seconds_until_all_back']} s, peak {result['peak_per_second']} "
            f"reconnects/s, closes {result['close_codes']}, extensions {result['extensions']}, "
            f"client CPU {result['client_cpu_s']} s"
        )
        print(f"        closes seen by clients per second: {result['a_closes_per_second']}")
        print(f"        B accepts per second after SIGTERM: {result['b_accepts_per_second']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
