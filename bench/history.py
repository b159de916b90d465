"""The cost of room history on broadcast: fan-out to N receivers with history off and on.

    .venv/bin/python -m bench.history                          # memory and Redis, N=1,000, 3 runs
    .venv/bin/python -m bench.history --backends memory --runs 1

The server is ``app`` below: the ``join`` / ``publish`` events of bench/servers/ours.py; with
``BENCH_HISTORY=SIZE`` every room keeps its last SIZE frames (``RoomHistory(size=SIZE)``), so
each broadcast also writes the frame into the room's history (a bounded buffer on memory; on
Redis a Stream entry and the room's offset, in the same Lua call as the publish). The load is
bench.client's ``fanout`` at the highest sustainable rate (bench.run's method), server and
client pinned to different cores; off and on alternate run by run, each on a fresh server
(Redis: a private ``redis-server`` on a free port, flushed between runs). Prints one table
and writes bench/results/history.json. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fastapi_orcs_ws import Connection, RoomHistory, WebSocketManager, WebSocketRouter

# -- the server -------------------------------------------------------------------------------

# As bench/servers/ours.py: the load client is one address sending as fast as it can.
for _name in ("MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_IP", "RATE_LIMIT_PER_SECOND"):
    os.environ.setdefault(f"WS_{_name}", "0")
manager = WebSocketManager()
_size = os.environ.get("BENCH_HISTORY", "")
if _size:
    manager.configure_rooms("*", history=RoomHistory(size=int(_size)))
router = WebSocketRouter(manager=manager)


async def join(ws: Connection, payload: Any) -> None:
    await ws.data.manager.join_room(ws.data.client_id, payload["room"])


async def publish(ws: Connection, payload: Any) -> None:
    await ws.data.manager.broadcast_to_room(payload["room"], "message", payload)


router.ws("/ws", {"join": join, "publish": publish})
app = FastAPI()
app.include_router(router)

# -- the driver -------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def private_redis() -> Any:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("bench.history: redis-server not found (apt install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_listening(port, proc, "redis-server")
            yield f"redis://127.0.0.1:{port}/0", port
        finally:
            stop(proc)


def flush(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        if not sock.recv(64).startswith(b"+OK"):
            raise RuntimeError("FLUSHALL failed")


def one_run(n: int, seconds: float, history: int, backend_url: str | None) -> dict[str, Any]:
    from bench import run  # the same client invocation, pinning and load figures as bench.run

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_HISTORY": str(history or "")}
    if backend_url:
        env["WS_BACKEND_URL"] = backend_url
    cmd = [sys.executable, "-m", "uvicorn", "bench.history:app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--ws", "websockets-sansio", *run.UVICORN_FLAGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=run._limits(run.SERVER_CPU))
    try:
        wait_listening(port, proc, "server")
        common = ["--ports", str(port), "--kind", "envelope", "--server-pids", str(proc.pid)]
        # discarded: a fresh server runs slow for its first second
        warm = ["fanout", *common, "--n", "100", "--k", str(run.MAX_K), "--warmup", "0"]
        run.client([*warm, "--timeout", "1"], 1)
        k = min(run.MAX_K, max(2000, int(2_000_000 * seconds / n)))
        args = ["fanout", *common, "--n", str(n), "--k", str(k), "--window", str(run.window(n))]
        args += ["--warmup", "1", "--timeout", str(seconds)]
        return run.client(args, seconds)
    finally:
        stop(proc)


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    return round(statistics.median(values), 1) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="memory,redis", help="memory,redis")
    parser.add_argument("--n", type=int, default=1000, help="receivers (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--size", type=int, default=100, help="frames kept per room when on")
    a = parser.parse_args()
    backends = [b for b in a.backends.split(",") if b]
    unknown = set(backends) - {"memory", "redis"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for backend in backends:
        got: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        with contextlib.ExitStack() as stack:
            url, redis_port = (None, 0)
            if backend == "redis":
                url, redis_port = stack.enter_context(private_redis())
            for r in range(a.runs):
                order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                for mode in order:
                    if redis_port:
                        flush(redis_port)
                    x = one_run(a.n, a.seconds, a.size if mode == "on" else 0, url)
                    got[mode].append(x)
                    print(
                        f"{backend:6} history {mode:3} run {r + 1}: "
                        f"{x.get('deliveries_per_s')} deliveries/s, p50 {x.get('p50_ms')} ms, "
                        f"p99 {x.get('p99_ms')} ms, server CPU {x.get('server_cpu_pct')} %, "
                        f"{x.get('error', '')}",
                        flush=True,
                    )
        results[backend] = got
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "n": a.n,
        "runs": a.runs,
        "seconds": a.seconds,
        "size": a.size,
        "cpus": os.cpu_count(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    (RESULTS / "history.json").write_text(json.dumps(out, indent=1))
    print(f"\nfan-out to {a.n} receivers, medians of {a.runs} (bench/results/history.json)")
    print("| backend | history | deliveries/s | p50 ms | p99 ms | server CPU % |")
    print("|---|---|---:|---:|---:|---:|")
    for backend, got in results.items():
        for mode in ("off", "on"):
            runs = got[mode]
            cpu = [c for r in runs for c in (r.get("server_cpu_pct") or [])[:1]]
            print(
                f"| {backend} | {mode if mode == 'off' else f'on ({a.size} frames)'} | "
                f"{median(runs, 'deliveries_per_s')} | {median(runs, 'p50_ms')} | "
                f"{median(runs, 'p99_ms')} | "
                f"{round(statistics.median(cpu)) if cpu else None} |"
            )


if __name__ == "__main__":
    main()
