"""Instructions the server executes per echo round trip or fan-out delivery, counted exactly.

    python -m bench.instructions                                  # ours, plain-orjson, plain
    python -m bench.instructions --servers ours,ours-before --before fa7d361
    python -m bench.instructions --only echo --ours-at snapshot

Each server runs as in ``bench.run`` (the same uvicorn command line: websockets-sansio, h11,
uvloop, no compression) but under ``valgrind --tool=cachegrind --cache-sim=no``, which counts
every instruction the process executes (Python, C extensions, libc; not the kernel). The load
comes from a client outside valgrind:

- ``echo``: 100 clients, each with one round trip in flight (as ``bench.run``'s echo), ``K``
  round trips each;
- ``fanout``: ``N`` receivers join one room, one sender publishes ``K`` times and waits until
  every receiver has each frame (``N x K`` deliveries).

The same server is run twice, with a small and a large ``K``; start-up, handshakes and
shutdown cost the same in both, so the difference divided by the extra round trips (or
deliveries) is what one costs. Unlike a rate on a shared 2-core machine (``bench.run``'s
ratios move by 10-30 % from run to run), the count does not depend on what else runs: two
runs of the same code agree to within a fraction of a percent. It does not see cache misses or
the kernel's share (the socket writes and reads, the same for every server here), so it
complements the timed runs; it does not replace them.

Needs ``valgrind`` (``apt-get install valgrind``). About 40 s per server and workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import run

ECHO_FRAME = json.dumps(
    {"event": "echo", "payload": {"room": "bench", "seq": 12, "t": 1234.5678, "pad": "x" * 40}},
    separators=(",", ":"),
)
PUBLISH_FRAME = ECHO_FRAME.replace('"echo"', '"publish"', 1)
SERVERS = ("ours", "ours-before", "plain-orjson", "plain")
"""The servers this counts (named as in ``bench.run``, which builds their command lines)."""
STARTUP_TIMEOUT = 180.0
"""Seconds a server under valgrind may take to listen (imports run ~50x slower)."""
DRIVE_TIMEOUT = 600.0
SHUTDOWN_TIMEOUT = 120.0


async def _echo(port: int, rounds: int, clients: int = 100) -> None:
    import websockets

    async def one() -> None:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws", compression=None, max_size=None, open_timeout=60
        ) as ws:
            for _ in range(rounds):
                await ws.send(ECHO_FRAME)
                await ws.recv()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(clients))), DRIVE_TIMEOUT)


async def _fanout(port: int, publishes: int, receivers: int) -> None:
    import websockets

    url = f"ws://127.0.0.1:{port}/ws"
    opts: dict[str, Any] = {"compression": None, "max_size": None, "open_timeout": 60}
    joined = [await websockets.connect(url, **opts) for _ in range(receivers)]
    try:
        for ws in joined:
            # Every server handles one connection's frames in order: the echo's reply says the
            # join before it is done (the plain loops ack nothing). The same in both runs.
            await ws.send('{"event":"join","payload":{"room":"bench"}}')
            await ws.send(ECHO_FRAME)
            await asyncio.wait_for(ws.recv(), 60)
        async with websockets.connect(url, **opts) as sender:

            async def drain(ws: Any) -> None:
                for _ in range(publishes):
                    await ws.recv()

            readers = [asyncio.create_task(drain(ws)) for ws in joined]
            for _ in range(publishes):
                await sender.send(PUBLISH_FRAME)
            await asyncio.wait_for(asyncio.gather(*readers), DRIVE_TIMEOUT)
    finally:
        await asyncio.gather(*(ws.close() for ws in joined))


def count(server: str, workload: str, k: int, n: int, env: dict[str, str]) -> int:
    """Instructions of one server process from start to exit, serving ``k`` rounds."""
    port = run.free_port()
    with tempfile.TemporaryDirectory(prefix="orcs-instr-") as tmp:
        out = Path(tmp) / "cachegrind.out"
        server_cmd, server_env = run.uvicorn_command(server, port)  # as bench.run starts it
        cmd = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            f"--cachegrind-out-file={out}",
            *server_cmd,
        ]
        full_env = {**os.environ, "PYTHONHASHSEED": "0", **env, **server_env}
        errors = (Path(tmp) / "stderr").open("w+")  # a file: a full pipe would stall it
        proc = subprocess.Popen(
            cmd, cwd=run.ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=errors
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        errors.seek(0)
                        err = errors.read()[-2000:]
                        raise RuntimeError(
                            f"{server} did not start under valgrind: {err}"
                        ) from None
                    time.sleep(0.2)
            if workload == "echo":
                asyncio.run(_echo(port, k))
            else:
                asyncio.run(_fanout(port, k, n))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            errors.close()
        found = re.search(r"^summary: (\d+)", out.read_text(), re.M)
        if found is None:
            raise RuntimeError(f"no cachegrind summary for {server}")
        return int(found.group(1))


def per_unit(server: str, workload: str, n: int, env: dict[str, str]) -> float:
    """Instructions per echo round trip (100 clients) or per fan-out delivery (N receivers)."""
    if workload == "echo":
        small, large = 20, 120
        units = (large - small) * 100
    else:
        small, large = 10, 60
        units = (large - small) * n
    a = count(server, workload, small, n, env)
    b = count(server, workload, large, n, env)
    return (b - a) / units


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--servers", default="ours,plain-orjson,plain")
    ap.add_argument("--only", default="echo,fanout")
    ap.add_argument("--n", type=int, default=200, help="fanout: receivers")
    ap.add_argument("--before", default=run.BEFORE_COMMIT, help="the commit ours-before imports")
    ap.add_argument(
        "--ours-at", default="", help="import ours from this commit, or 'snapshot' (as bench.run)"
    )
    ap.add_argument("--out", default=str(run.RESULTS / "instructions.json"))
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench.instructions needs valgrind (apt-get install valgrind)")
    servers = [s for s in a.servers.split(",") if s]
    workloads = [w for w in a.only.split(",") if w]
    for s in servers:
        if s not in SERVERS:
            ap.error(f"unknown server {s} (one of {', '.join(SERVERS)})")
    if "ours-before" in servers:
        why = run.ensure_worktree(run.BEFORE_DIR, a.before)
        if why:
            sys.exit(why)
        run.WORKTREES["ours-before"] = run.BEFORE_DIR
    if a.ours_at == "snapshot":
        run.log(run.snapshot_tree(run.OURS_SNAPSHOT_DIR))
        run.WORKTREES["ours"] = run.OURS_SNAPSHOT_DIR
    elif a.ours_at:
        why = run.ensure_worktree(run.OURS_AT_DIR, a.ours_at)
        if why:
            sys.exit(why)
        run.WORKTREES["ours"] = run.OURS_AT_DIR
    # The bench servers' own settings (no connection caps or rate limit: bench/servers/ours.py).
    env = {"WS_AUTH_ENABLED": "false"}
    results: dict[str, dict[str, float]] = {}
    for workload in workloads:
        for server in servers:
            value = per_unit(server, workload, a.n, env)
            results.setdefault(workload, {})[server] = value
            unit = "round trip" if workload == "echo" else f"delivery (N = {a.n})"
            run.log(f"  {server:13s} {workload:7s} {value:10,.0f} instructions per {unit}")
    print()
    for workload, row in results.items():
        base_name = "plain-orjson" if "plain-orjson" in row else "plain"
        base = row.get(base_name)
        print(f"{workload}:")
        for server, value in row.items():
            ratio = f"{value / base:.3f}x of {base_name}" if base else ""
            print(f"  {server:13s} {value:10,.0f}  {ratio}")
    Path(a.out).write_text(
        json.dumps(
            {
                "results": results,
                "n": a.n,
                "servers": servers,
                "before": a.before if "ours-before" in servers else None,
                "ours_at": a.ours_at or None,
                "head": subprocess.run(
                    ["git", "-C", str(run.ROOT), "log", "-1", "--format=%h"],
                    capture_output=True,
                    text=True,
                ).stdout.strip(),
            },
            indent=2,
        )
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
