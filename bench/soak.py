"""Soak: many connections with churn for minutes; lost room frames, RSS, rooms left at the end.

    .venv/bin/python -m bench.soak                                  # 10,000 connections, 10 min,
                                                                    # one process, then two on Redis
    .venv/bin/python -m bench.soak --connections 2000 --duration 60 # the short run
    .venv/bin/python -m bench.soak --mode redis --churn 100
    .venv/bin/python -m bench.soak --heap                           # live Python objects left
                                                                    # per churned connection

Servers are uvicorn processes of this module's app (pinned to core 0, with ``redis-server`` in
``redis`` mode); the load is this process (pinned to core 1). ``--connections`` WebSockets are
opened (split evenly between the two servers in ``redis`` mode) and each joins one of
``connections / room-size`` rooms. Then, for ``--duration`` seconds:

- **churn**: ``--churn`` times a second a random churning connection closes and a new one opens
  (to a random server) and joins a random room;
- **room traffic**: every room gets a numbered ``msg`` frame every ``--publish-every`` seconds,
  sent by a publisher connection (one per server, alternating) through ``broadcast_to_room``;
- **observers**: two connections per room (one per server in ``redis`` mode) never churn: each
  must receive every numbered frame of its room, once and in order. A gap is a **lost frame**.
  Every client (churning ones too) checks that each frame it gets belongs to its room;
- every 5 s the servers report RSS and the manager's stats.

At the end: the loss count (observers' gaps, duplicates, frames of the wrong room, the
``framesLost``/``publishFailures`` the servers counted), RSS over the run (at the end of the
ramp-up, at the end of the churn, its slope over the second half of the churn, and after every
client left), and whether every room and connection was gone within 60 s of the last close.

Loopback only; bounded in count (``--connections`` <= 10,000) and time (``--duration`` <= 900 s,
every wait has a timeout); servers and Redis are stopped whatever happens. The connection caps
and the rate limit are lifted in the servers' environment (one address opens them all).
Results go to ``bench/results/soak.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fastapi_orcs_ws import Connection, WebSocketRouter

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "soak.json"
SERVER_CPU, CLIENT_CPU = 0, 1
SAMPLE_EVERY = 5.0
EMPTY_WITHIN = 60.0
CONNECT_CONCURRENCY = 100

# -- the server (imported by uvicorn in the node processes) ---------------------------------


def make_app() -> FastAPI:
    """One event route: ``join`` a room, ``publish`` to one; ``/soak/stats`` for the load."""
    router = WebSocketRouter()
    route = router.ws("/ws")

    @route.on("join")
    async def join(ws: Connection, payload: str) -> bool:
        return await ws.data.manager.join_room(ws.data.client_id, payload)

    @route.on("publish")
    async def publish(ws: Connection, payload: dict[str, Any]) -> int:
        return await ws.data.manager.broadcast_to_room(payload["room"], "msg", payload)

    app = FastAPI()
    app.include_router(router)

    @app.get("/soak/stats")
    async def stats() -> dict[str, Any]:
        manager = router.manager
        return {
            "rss_mb": _rss_mb(),
            "cpu_s": time.process_time(),
            "local": manager.local_connections,
            "stats": (await manager.get_stats()).model_dump(by_alias=False),
        }

    return app


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PIN = True
"""Pin the servers (and Redis) to core 0 and the load to core 1; ``--no-pin`` turns it off."""


def _pinned(cpu: int) -> Any:
    def pre() -> None:
        with contextlib.suppress(OSError, AttributeError):
            if PIN:
                os.sched_setaffinity(0, {cpu})
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return pre


def start_server(port: int, backend_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WS_AUTH_ENABLED": "false",
        "WS_BACKEND_URL": backend_url,
        # One loopback address opens every connection at a steady rate: lift the abuse caps.
        "WS_MAX_CONNECTIONS": "0",
        "WS_MAX_CONNECTIONS_PER_IP": "0",
        "WS_MAX_CONNECTIONS_PER_USER": "0",
        "WS_RATE_LIMIT_PER_SECOND": "0",
    }
    argv = [sys.executable, "-m", "uvicorn", "bench.soak:make_app", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--ws", "websockets-sansio"]
    argv += ["--ws-per-message-deflate", "false", "--backlog", "4096"]
    argv += ["--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, preexec_fn=_pinned(SERVER_CPU))


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis mode needs redis-server (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", workdir]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, preexec_fn=_pinned(SERVER_CPU))
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(timeout=10)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.05)


async def get_json(port: int, path: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


# -- the load -------------------------------------------------------------------------------


class Client:
    """One WebSocket: joins ``room``, reads everything, checks what it reads."""

    __slots__ = ("joined", "port", "reader", "room", "run", "seqs", "ws")

    def __init__(self, run: Run, port: int, room: str, observer: bool) -> None:
        self.run = run
        self.port = port
        self.room = room
        self.seqs: list[int] | None = [] if observer else None
        self.joined = asyncio.get_running_loop().create_future()
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        async with self.run.gate:
            self.ws = await connect(
                f"ws://127.0.0.1:{self.port}/ws",
                compression=None,
                open_timeout=60,
                close_timeout=10,
                max_size=None,
            )
        self.run.extensions.add(self.ws.response.headers.get("Sec-WebSocket-Extensions", "none"))
        self.reader = asyncio.create_task(self.read())
        await self.ws.send(json.dumps({"event": "join", "payload": self.room, "id": "j"}))
        await asyncio.wait_for(self.joined, 60)

    async def read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        run = self.run
        with contextlib.suppress(ConnectionClosed):
            async for text in self.ws:
                frame = json.loads(text)
                event = frame["event"]
                if event == "msg":
                    payload = frame["payload"]
                    run.received += 1
                    if payload["room"] != self.room:
                        run.misaddressed += 1
                    elif self.seqs is not None:
                        self.seqs.append(payload["seq"])
                elif event == "ack" and frame.get("id") == "j":
                    if not self.joined.done():
                        self.joined.set_result(None)
                elif event == "ack":
                    run.addressed += int(frame["payload"])
                else:
                    run.unexpected.append(text[:200])
        if not self.joined.done():
            self.joined.set_exception(ConnectionError("closed before its join was acknowledged"))
        code = self.ws.close_code
        if code not in (1000, None) and not self.run.closing:
            self.run.bad_closes[code] = self.run.bad_closes.get(code, 0) + 1

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 30)


class Run:
    def __init__(self, args: argparse.Namespace, ports: list[int]) -> None:
        self.args = args
        self.ports = ports
        self.rooms = [f"room-{i}" for i in range(max(1, args.connections // args.room_size))]
        self.gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.extensions: set[str] = set()
        self.received = 0
        self.addressed = 0
        self.misaddressed = 0
        self.unexpected: list[str] = []
        self.bad_closes: dict[int, int] = {}
        self.closing = False
        self.published: dict[str, int] = {room: 0 for room in self.rooms}
        self.churned = 0
        self.churn_failures = 0
        self.churn_skipped = 0
        self.samples: list[dict[str, Any]] = []

    async def sample(self, phase: str, start: float) -> None:
        row: dict[str, Any] = {"t": round(time.monotonic() - start, 1), "phase": phase}
        for i, port in enumerate(self.ports):
            data = await get_json(port, "/soak/stats")
            stats = data["stats"]
            row[f"s{i}"] = {
                "rss_mb": round(data["rss_mb"], 1),
                "cpu_s": round(data["cpu_s"], 1),
                "local": data["local"],
                "connections": stats["connections"],
                "rooms": stats["rooms"],
                "frames_lost": stats["frames_lost"],
                "publish_failures": stats["publish_failures"],
                "slow_consumers": stats["slow_consumer_disconnects"],
            }
        self.samples.append(row)
        print(
            f"  {row['t']:>6.1f} s {phase:<8} "
            + "  ".join(
                f"s{i}: {row[f's{i}']['local']:>5} conns {row[f's{i}']['rss_mb']:>6.1f} MB"
                for i in range(len(self.ports))
            ),
            flush=True,
        )


async def soak(
    args: argparse.Namespace, ports: list[int], procs: list[subprocess.Popen[bytes]]
) -> dict[str, Any]:
    run = Run(args, ports)
    for port, proc in zip(ports, procs, strict=True):
        await wait_port(port, proc)
    start = time.monotonic()
    cpu0 = time.process_time()

    # Observers (two per room, on different servers when there are two) and publishers.
    observers = [
        Client(run, ports[i % len(ports)], room, observer=True)
        for room in run.rooms
        for i in range(2)
    ]
    publishers = [Client(run, port, "publishers", observer=False) for port in ports]
    churners = [
        Client(run, ports[i % len(ports)], run.rooms[i % len(run.rooms)], observer=False)
        for i in range(args.connections - len(observers) - len(publishers))
    ]
    print(f"ramp-up: {args.connections} connections, {len(run.rooms)} rooms", flush=True)
    await asyncio.wait_for(
        asyncio.gather(*(c.open() for c in [*observers, *publishers, *churners])), 600
    )
    ramp_s = time.monotonic() - start
    await run.sample("ramp-up", start)

    stop_at = time.monotonic() + args.duration
    pool = churners

    async def churn() -> None:
        interval = 1.0 / args.churn
        next_at = time.monotonic()
        pending: set[asyncio.Task[None]] = set()

        free = list(range(len(pool)))  # slots not being replaced right now
        most = max(10, int(args.churn))  # replacements in flight at once: a second's worth

        async def replace(index: int) -> None:
            old = pool[index]
            new = Client(run, random.choice(ports), random.choice(run.rooms), observer=False)
            pool[index] = new
            try:
                await old.close()
                await new.open()
                run.churned += 1
            except Exception as exc:  # counted and reported; the run goes on
                run.churn_failures += 1
                if run.churn_failures <= 3:
                    print(f"  churn failure: {exc!r:.200}", flush=True)
            finally:
                free.append(index)

        while time.monotonic() < stop_at:
            now = time.monotonic()
            next_at = max(next_at + interval, now - 1.0)  # behind: no burst to catch up
            if len(pending) >= most or not free:
                run.churn_skipped += 1  # the load (or the server) cannot keep this rate
            else:
                pick = random.randrange(len(free))
                free[pick], free[-1] = free[-1], free[pick]
                task = asyncio.create_task(replace(free.pop()))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if pending:
            await asyncio.wait(pending, timeout=120)

    async def publish() -> None:
        per_room = args.publish_every / len(run.rooms)
        next_at = time.monotonic()
        turn = 0
        while time.monotonic() < stop_at:
            room = run.rooms[turn % len(run.rooms)]
            sender = publishers[turn % len(publishers)]
            turn += 1
            run.published[room] += 1
            body = {"room": room, "seq": run.published[room]}
            await sender.ws.send(json.dumps({"event": "publish", "payload": body, "id": "p"}))
            next_at += per_room
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def sampler() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(SAMPLE_EVERY)
            await run.sample("churn", start)

    churn_start = time.monotonic()
    await asyncio.wait_for(asyncio.gather(churn(), publish(), sampler()), args.duration + 300)
    churn_s = time.monotonic() - churn_start
    await run.sample("churned", start)

    # Every observer must end with 1..n of its room: wait (bounded) for frames in flight.
    def complete() -> bool:
        return all(len(o.seqs or ()) >= run.published[o.room] for o in observers)

    for _ in range(300):  # 30 s at most
        if complete():
            break
        await asyncio.sleep(0.1)
    gaps = duplicates = disorder = 0
    for observer in observers:
        seqs = observer.seqs or []
        expected = run.published[observer.room]
        gaps += expected - len(set(seqs))
        duplicates += len(seqs) - len(set(seqs))
        disorder += int(seqs != sorted(seqs))
    client_cpu = time.process_time() - cpu0

    # Everyone leaves; every room and connection must be gone.
    run.closing = True
    everyone = [*observers, *publishers, *pool]
    await asyncio.wait_for(asyncio.gather(*(c.close() for c in everyone)), 300)
    closed_at = time.monotonic()
    empty_after = None
    while time.monotonic() - closed_at < EMPTY_WITHIN:
        await run.sample("closed", start)
        last = run.samples[-1]
        if all(
            last[f"s{i}"]["rooms"] == 0
            and last[f"s{i}"]["connections"] == 0
            and last[f"s{i}"]["local"] == 0
            for i in range(len(ports))
        ):
            empty_after = round(time.monotonic() - closed_at, 2)
            break
        await asyncio.sleep(1)
    return summarize(run, ramp_s, churn_s, gaps, duplicates, disorder, empty_after, client_cpu)


def summarize(
    run: Run,
    ramp_s: float,
    churn_s: float,
    gaps: int,
    duplicates: int,
    disorder: int,
    empty_after: float | None,
    client_cpu: float,
) -> dict[str, Any]:
    servers = len(run.ports)
    churn_rows = [r for r in run.samples if r["phase"] in ("churn", "churned")]
    second_half = churn_rows[len(churn_rows) // 2 :]
    rss: dict[str, Any] = {}
    for i in range(servers):
        key = f"s{i}"
        ramp = next(r for r in run.samples if r["phase"] == "ramp-up")[key]["rss_mb"]
        churned = next(r for r in run.samples if r["phase"] == "churned")[key]["rss_mb"]
        closed = run.samples[-1][key]["rss_mb"]
        slope = None
        if len(second_half) >= 3:
            times = [r["t"] for r in second_half]
            values = [r[key]["rss_mb"] for r in second_half]
            slope = round(statistics.linear_regression(times, values).slope * 60, 2)
        rss[key] = {
            "after_ramp_up_mb": ramp,
            "after_churn_mb": churned,
            "after_all_closed_mb": closed,
            "growth_during_churn_mb": round(churned - ramp, 1),
            "second_half_slope_mb_per_min": slope,
        }
    last = run.samples[-1]
    return {
        "servers": servers,
        "connections": run.args.connections,
        "rooms": len(run.rooms),
        "duration_s": round(churn_s, 1),
        "ramp_up_s": round(ramp_s, 1),
        "churned": run.churned,
        "churn_per_s": round(run.churned / churn_s, 1) if churn_s else 0,
        "churn_failures": run.churn_failures,
        "churn_skipped": run.churn_skipped,
        "room_frames_published": sum(run.published.values()),
        "deliveries_addressed": run.addressed,
        "frames_received": run.received,
        "lost_frames": gaps,
        "duplicate_frames": duplicates,
        "observers_out_of_order": disorder,
        "misaddressed_frames": run.misaddressed,
        "unexpected_frames": len(run.unexpected),
        "first_unexpected": run.unexpected[:3],
        "abnormal_closes": run.bad_closes,
        "server_frames_lost": sum(last[f"s{i}"]["frames_lost"] for i in range(servers)),
        "server_publish_failures": sum(last[f"s{i}"]["publish_failures"] for i in range(servers)),
        "slow_consumer_disconnects": sum(last[f"s{i}"]["slow_consumers"] for i in range(servers)),
        "rss": rss,
        "rooms_left": [last[f"s{i}"]["rooms"] for i in range(servers)],
        "connections_left": [last[f"s{i}"]["connections"] for i in range(servers)],
        "empty_after_s": empty_after,
        "client_cpu_s": round(client_cpu, 1),
        "server_cpu_s": [last[f"s{i}"]["cpu_s"] for i in range(servers)],
        "extensions": sorted(run.extensions),
        "samples": run.samples,
    }


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"== {mode}", flush=True)
    with contextlib.ExitStack() as stack:
        if mode == "redis":
            backend = stack.enter_context(redis_server())
            count = 2
        else:
            backend, count = "memory://", 1
        ports = [free_port() for _ in range(count)]
        procs = [start_server(port, backend) for port in ports]
        stack.callback(stop, procs)
        result = asyncio.run(soak(args, ports, procs))
    result["mode"] = mode
    return result


def heap_check(mode: str, warm: int, churned: int) -> dict[str, Any]:
    """The Python heap's growth per churned connection, in-process (``--heap``).

    A real uvicorn in a thread serves the soak app; ``warm`` connect-join-close cycles warm
    it up, then ``tracemalloc`` compares the heap before and after ``churned`` more (after a
    full collection each time). RSS includes the allocator's own behaviour (pages it keeps);
    this counts only live Python objects, so a leak shows here as bytes per connection.
    """
    import gc
    import tracemalloc

    from websockets.asyncio.client import connect

    from fastapi_orcs_ws.testing import serve

    async def cycle(url: str, count: int) -> None:
        gate = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            async with gate, connect(url, compression=None, open_timeout=30) as ws:
                await ws.send(json.dumps({"event": "join", "payload": f"room-{i % 40}", "id": 1}))
                await asyncio.wait_for(ws.recv(), 30)

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 600)

    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(redis_server()) if mode == "redis" else "memory://"
        os.environ.update(
            {
                "WS_AUTH_ENABLED": "false",
                "WS_BACKEND_URL": backend,
                "WS_MAX_CONNECTIONS_PER_IP": "0",
                "WS_RATE_LIMIT_PER_SECOND": "0",
            }
        )
        server = stack.enter_context(serve(make_app()))
        url = server.ws_url("/ws")
        asyncio.run(cycle(url, warm))
        gc.collect()
        tracemalloc.start(8)
        before = tracemalloc.take_snapshot()
        asyncio.run(cycle(url, churned))
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    diff = after.compare_to(before, "lineno")
    grown = sum(d.size_diff for d in diff)
    return {
        "mode": mode,
        "warm_up_connections": warm,
        "churned_connections": churned,
        "heap_growth_bytes": grown,
        "bytes_per_churned_connection": round(grown / churned, 1),
        "top_growth": [f"{d.size_diff} B at {d.traceback}" for d in diff[:3]],
    }


def report(result: dict[str, Any]) -> str:
    rss = "; ".join(
        f"{key}: {r['after_ramp_up_mb']:.0f} -> {r['after_churn_mb']:.0f} MB "
        f"(slope {r['second_half_slope_mb_per_min']} MB/min, {r['after_all_closed_mb']:.0f} MB "
        "after all closed)"
        for key, r in result["rss"].items()
    )
    return (
        f"{result['mode']}: {result['connections']} connections, {result['rooms']} rooms, "
        f"{result['duration_s']} s; churned {result['churned']} "
        f"({result['churn_per_s']}/s, {result['churn_failures']} failed, "
        f"{result['churn_skipped']} skipped: load behind); "
        f"{result['room_frames_published']} room frames published, "
        f"{result['frames_received']} received; lost {result['lost_frames']}, duplicated "
        f"{result['duplicate_frames']}, misaddressed {result['misaddressed_frames']}, "
        f"server-counted lost {result['server_frames_lost']} / failed publishes "
        f"{result['server_publish_failures']}, abnormal closes {result['abnormal_closes']}, "
        f"slow consumers {result['slow_consumer_disconnects']}; RSS {rss}; rooms left "
        f"{result['rooms_left']}, connections left {result['connections_left']} "
        f"(empty after {result['empty_after_s']} s); client CPU {result['client_cpu_s']} s, "
        f"server CPU {result['server_cpu_s']} s; extensions {result['extensions']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of churn")
    parser.add_argument("--churn", type=float, default=200.0, help="reconnects per second")
    parser.add_argument("--room-size", type=int, default=50, help="connections per room")
    parser.add_argument(
        "--publish-every", type=float, default=2.0, help="seconds between two frames of a room"
    )
    parser.add_argument("--mode", choices=["both", "memory", "redis"], default="both")
    parser.add_argument(
        "--heap",
        action="store_true",
        help="instead: the Python heap's growth per churned connection (tracemalloc, in-process)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="let the OS place the servers and the load"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    global PIN
    PIN = not args.no_pin
    modes = ["memory", "redis"] if args.mode == "both" else [args.mode]
    if args.heap:
        for mode in modes:
            found = heap_check(mode, warm=1500, churned=min(args.connections, 3000))
            print(json.dumps(found, indent=1), flush=True)
        return
    if not 10 <= args.connections <= 10_000:
        parser.error("--connections 10..10,000")
    if not 1 <= args.duration <= 900 or not 0 < args.churn <= 1000:
        parser.error("--duration 1..900 s, --churn 0..1000 per second")
    if args.connections // args.room_size * 2 + 2 >= args.connections:
        parser.error("--room-size too small: observers would be most of the connections")
    # SIGTERM (timeout, a CI kill) unwinds like Ctrl-C: the servers and Redis are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 1000:
        print(f"note: RLIMIT_NOFILE hard limit {hard} may not hold {args.connections} sockets")
    if PIN:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, {CLIENT_CPU})
    command = " ".join([".venv/bin/python -m bench.soak", *sys.argv[1:]])
    results = [run_mode(mode, args) for mode in modes]
    for result in results:
        print(report(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "command": command,
        "pinned": PIN,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    args.out.write_text(json.dumps(out, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
