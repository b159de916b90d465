"""Run the attacks against each server set-up and print one table.

    python -m bench.attacks                                   # all set-ups (~15 min)
    python -m bench.attacks --setups run,uvicorn-httptools    # some of them
    python -m bench.attacks --attacks heads,halfopen --out /tmp/attacks.json
    python -m bench.attacks --setups run --attacks halfopen --halfopen-count 1050 --nofile 1024
    python -m bench.attacks --setups run --attacks pingflood --idle-timeout 20 --flood-seconds 35

Each set-up gets fresh servers: one for the oversized and half-sent handshakes, one for the
ping flood, both with the default settings (or ``--idle-timeout``), and one with
``WS_IDLE_TIMEOUT=4`` and ``WS_MAX_PAYLOAD_LENGTH=65536`` for the guarantee probes (so pings
and dead-peer drops show within seconds). The servers run pinned to core 0, the attacker to
core 1. Results go to ``bench/results/attacks.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from . import probes
from .setups import BY_NAME, SETUPS, SetUp

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
ATTACKS = ["heads", "bigheads", "halfopen", "pingflood", "guarantees"]
PROBE_IDLE_TIMEOUT = 4.0
PROBE_MAX_SIZE = 65536


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {cpu})


def _child_limits(nofile: int | None) -> None:
    _pin(0)
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


@contextlib.contextmanager
def server(
    setup: SetUp, env: dict[str, str], scratch: Path, nofile: int | None = None
) -> Iterator[tuple[int, int]]:
    """Start ``setup`` on a free port; yield (port, pid) once it accepts connections.

    ``nofile`` sets the server's open-file limit (RLIMIT_NOFILE), as a deployment's would be.
    """
    port = free_port()
    idle = float(env.get("WS_IDLE_TIMEOUT", "120"))
    size = int(env.get("WS_MAX_PAYLOAD_LENGTH", str(16 * 2**20)))
    logfile = scratch / f"{setup.name}-{port}.log"
    with open(logfile, "w") as out:
        proc = subprocess.Popen(
            setup.command(port, idle, size, scratch),
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _child_limits(nofile),
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{setup.name} exited: {logfile.read_text()[-400:]}")
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{setup.name} did not listen within 20 s")
                time.sleep(0.1)
            time.sleep(0.3)  # granian's worker starts after the listener
            yield port, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def server_fds(pid: int) -> int | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.num_fds() for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return None


async def attack_setup(
    setup: SetUp, attacks: list[str], opts: argparse.Namespace
) -> dict[str, Any]:
    """Every attack on ``setup``: heads and half-sent handshakes share a server; the ping flood
    and the guarantee probes each get a fresh one, so one attack's memory never shows in
    another's figure."""
    out: dict[str, Any] = {"setup": setup.describe(), "note": setup.note}
    env = {"WS_IDLE_TIMEOUT": str(opts.idle_timeout)} if opts.idle_timeout else {}
    if set(attacks) & {"heads", "bigheads", "halfopen"}:
        with server(setup, env, opts.scratch, opts.nofile) as (port, pid):
            out["baseline"] = await probes.normal_client(port)
            out["fds_idle"] = server_fds(pid)
            if "heads" in attacks:
                log(f"  {setup.name}: oversized heads (15 s)")
                out["heads"] = await probes.oversized_heads(port)
                out["heads"]["after"] = await probes.normal_client(port)
            if "bigheads" in attacks:
                log(f"  {setup.name}: 100 handshakes with a 1 MiB header (5 s)")
                out["bigheads"] = await probes.big_heads(port, pid)
                out["bigheads"]["after"] = await probes.normal_client(port)
            if "halfopen" in attacks:
                log(f"  {setup.name}: {opts.halfopen_count:,} half-sent handshakes (15 s)")

                async def during() -> dict[str, Any]:
                    return {"server_fds": server_fds(pid), **await probes.normal_client(port)}

                out["halfopen"] = await probes.half_open(
                    port, count=opts.halfopen_count, during=during
                )
                out["halfopen"]["after"] = await probes.normal_client(port)
            if "limit_concurrency" in setup.options:
                limit = int(setup.options["limit_concurrency"])
                out["concurrency"] = await concurrency(port, limit)
    if "pingflood" in attacks:
        with server(setup, env, opts.scratch, opts.nofile) as (port, pid):
            log(f"  {setup.name}: ping flood ({opts.flood_seconds:g} s)")
            out["pingflood"] = await probes.ping_flood(port, pid, duration=opts.flood_seconds)
            out["pingflood"]["after"] = await probes.normal_client(port)
    if "guarantees" in attacks:
        env = {
            "WS_IDLE_TIMEOUT": str(PROBE_IDLE_TIMEOUT),
            "WS_MAX_PAYLOAD_LENGTH": str(PROBE_MAX_SIZE),
        }
        with server(setup, env, opts.scratch, opts.nofile) as (port, _pid):
            log(f"  {setup.name}: guarantees (~12 s)")
            out["guarantees"] = await probes.guarantees(port, PROBE_MAX_SIZE, PROBE_IDLE_TIMEOUT)
    return out


async def concurrency(port: int, limit: int) -> dict[str, Any]:
    """What ``limit_concurrency`` counts: open ``limit + 20`` WebSockets, then one HTTP GET."""
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}{probes.WS_PATH}"
    async with contextlib.AsyncExitStack() as stack:
        opened = refused = 0
        for _ in range(limit + 20):
            try:
                await stack.enter_async_context(connect(url, compression=None, open_timeout=5))
                opened += 1
            except Exception:  # counted: a refusal is the result being measured
                refused += 1
        http = await probes.http_get(port, "/health")
    return {"limit": limit, "websockets_tried": limit + 20, "opened": opened,
            "refused": refused, "http_get_meanwhile": http}  # fmt: skip


def machine() -> dict[str, Any]:
    versions = {}
    for name in ("uvicorn", "websockets", "wsproto", "h11", "httptools", "hypercorn", "granian"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
    }


# -- the table -----------------------------------------------------------------------------------


def _head_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    answer = f"{r['status']}" if r["status"] is not None else "no answer"
    held = f"held {r['hold_s']:g} s+" if r["held"] else f"closed {r['closed_after_s']:g} s"
    return f"{answer}, {held}"


def _served(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    ws, http = r.get("ws"), r.get("http")
    return "served" if ws == "served" and http == 200 else f"ws: {ws}; http: {http}"


def _seconds(value: float | None, none: str) -> str:
    return none if value is None else f"{value:g} s"


def _flood_cell(flood: dict[str, Any] | None) -> str:
    if not flood:
        return "-"
    peak = flood["rss_peak_mb"] - flood["rss_start_mb"]
    closed = flood["closed_after_s"]
    return f"+{flood['steady_growth_mb_s']:g} MB/s (peak +{peak:.0f} MB" + (
        f", closed {closed:g} s)" if closed else ")"
    )


def _guarantee_cell(g: dict[str, Any] | None) -> str:
    if not g:
        return "-"
    return (
        f"deflate {'on' if g['deflate'] else 'off'}; max {g['max_size']}; pings {g['pings']}; "
        f"dead peer {_seconds(g['dead_peer_closed_s'], 'kept')}"
    )


def row(name: str, r: dict[str, Any]) -> list[str]:
    heads = r.get("heads", {})
    half = r.get("halfopen")
    flood = r.get("pingflood")
    g = r.get("guarantees")
    return [
        name,
        _head_cell(heads.get("header-line-9k")),
        _head_cell(heads.get("headers-200")),
        _head_cell(heads.get("request-line-9k")),
        _head_cell(heads.get("header-line-9k-dripped")),
        _head_cell(heads.get("header-line-17k-dripped")),
        (
            f"{big['held']} held, +{big['rss_growth_mb']:g} MB"
            + (f" ({', '.join(map(str, big['statuses']))})" if big["statuses"] else "")
            if (big := r.get("bigheads"))
            else "-"
        ),
        f"{half['held']} / {half['opened']} held" if half else "-",
        _served(half["during"]) if half else "-",
        _flood_cell(flood),
        _guarantee_cell(g),
    ]


HEADER = [
    "set-up",
    "9 KiB header line",
    "200 headers",
    "9 KiB request line",
    "9 KiB header line, dripped",
    "17 KiB header line, dripped",
    "100 x 1 MiB header, after 5 s",
    "half-sent handshakes held after 15 s",
    "normal client meanwhile",
    "ping flood, never read",
    "guarantees (idle 4 s, max 64 KiB)",
]


def table(results: dict[str, Any]) -> str:
    rows = [HEADER, ["---"] * len(HEADER)]
    rows += [row(name, r) for name, r in results.items() if "error" not in r]
    lines = ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += [f"\n{name}: {r['error']}" for name, r in results.items() if "error" in r]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__)
    parser.add_argument("--setups", default=",".join(s.name for s in SETUPS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--out", type=Path, default=RESULTS / "attacks.json")
    parser.add_argument("--halfopen-count", type=int, default=1000, help="half-sent sockets")
    parser.add_argument("--flood-seconds", type=float, default=10.0, help="ping flood length")
    parser.add_argument("--idle-timeout", type=float, help="WS_IDLE_TIMEOUT for the attacks")
    parser.add_argument("--nofile", type=int, help="the servers' open-file limit")
    args = parser.parse_args()
    names = [n for n in args.setups.split(",") if n]
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = [n for n in names if n not in BY_NAME] + [a for a in attacks if a not in ATTACKS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}; set-ups: {', '.join(BY_NAME)}")
    if not 1 <= args.halfopen_count <= 5000 or not 1 <= args.flood_seconds <= 300:
        parser.error("bounded attacks only: --halfopen-count 1..5000, --flood-seconds 1..300")
    _pin(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="orcs-attacks-") as scratch:
        for name in names:
            log(f"{name}: {BY_NAME[name].describe()}")
            try:
                args.scratch = Path(scratch)
                results[name] = asyncio.run(attack_setup(BY_NAME[name], attacks, args))
            except (RuntimeError, OSError) as exc:
                log(f"  {name}: skipped: {exc}")
                results[name] = {"error": str(exc)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.attacks " + " ".join(sys.argv[1:])
    args.out.write_text(
        json.dumps({"command": command.strip(), "machine": machine(), "results": results}, indent=2)
        + "\n"
    )
    print(table(results))
    print(f"\n(written to {args.out})")


if __name__ == "__main__":
    main()
