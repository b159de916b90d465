"""Profile the inbound path: where a server's CPU goes per echo round trip.

    python -m bench.profile                                   # ours, ours-before, plain-orjson
    python -m bench.profile --servers ours,plain --duration 8 --ours-at snapshot

Each server runs as in ``bench.run`` (uvicorn pinned to core 0); the echo client (100 clients,
one round trip in flight each) drives it from core 1 while ``py-spy record`` samples the server
process (``--nonblocking``: the server is never paused). Without a working py-spy (it needs
ptrace), the server runs under cProfile instead (``--tool cprofile``, or automatically).

Every sample's stack is put in one bucket, by the innermost frame that says what it is doing:

==================  ==========================================================================
bucket              frames
==================  ==========================================================================
inbound transport   uvicorn's ``data_received`` and the ``websockets`` parser, up to the ASGI
                    ``receive`` the app awaits (Starlette's ``receive`` included)
reader / queue      the library's reader task and the hop from it to the dispatcher (new core);
                    since f55abfe also the reader's own dispatch of a ``(ws, payload)`` handler
                    sent without an id (handler lookup and the call, in ``_read``)
envelope decode     ``decode_envelope`` (library) or the ``loads`` line (plain servers)
dispatch            the dispatcher: reserved/unknown checks, handler lookup, ``_call``/``_run``
handler call        the compiled handler (payload validation, dependency solving) and the
                    application's function
encode reply        ``encode`` / ``encode_event`` (library) or the ``dumps`` line (plain)
outbound send       ``Connection.send``, the outbox, Starlette's ``send`` and uvicorn's ASGI
                    ``send`` down to ``transport.write``
event loop / other  everything else: the loop itself (uvloop's C code: polling, socket reads,
                    task switches), keepalive, logging
==================  ==========================================================================

It prints, per server, the share of the sampled CPU in each bucket and the microseconds of
server CPU per round trip it stands for (server CPU seconds / round trips x share), and writes
the raw profiles to bench/results/profile-<server>.* (ignored by git).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import linecache
import pstats
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import run

BUCKETS = [
    "inbound transport",
    "reader / queue",
    "envelope decode",
    "dispatch",
    "handler call",
    "encode reply",
    "outbound send",
    "event loop / other",
]
"""``event loop / other`` holds the samples whose innermost Python frame is the loop itself:
uvloop's C code (polling, reading sockets, calling protocol callbacks, switching tasks)."""
FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PLAIN_FILES = ("plain.py", "plain_orjson.py")


def classify_frame(func: str, file: str, line: int | None) -> str | None:
    """The bucket one frame decides, or None for a frame that only passes control on."""
    name = Path(file).name
    # py-spy shortens paths ("uvicorn/protocols/...") and qualifies names ("Class.method")
    f = "/" + file.replace("\\", "/").lstrip("/")
    func = func.rsplit(".", 1)[-1]
    if "/fastapi_orcs_ws/" in f:
        if name == "protocol.py":
            if func.startswith("decode") or func == "_decode_json":
                return "envelope decode"
            if func.startswith("encode") or func in {"_dumps", "dumps"}:
                return "encode reply"
            return "dispatch"
        if name in {"_outbox.py", "connection.py"}:
            if func in {"encode_event"}:
                return "encode reply"
            return "outbound send"
        if name == "manager.py":
            return "encode reply" if func.startswith("encode") else "outbound send"
        if name in {"handlers.py", "dependencies.py"}:
            return "handler call"
        if name == "session.py":
            if func in {"_read"}:
                return "reader / queue"
            if func in {
                "_dispatch",
                "_dispatch_all",
                "_call",
                "_dispatch_released",
                "_handle",
                "_refuse",
                "_resume",
                "_failed_direct",
            }:
                return "dispatch"
            return "event loop / other"
        if name == "routing.py":
            if func == "_receive_loop":
                return "reader / queue"
            if func in {"_dispatch", "_run", "handler_for"}:
                return "dispatch"
            return "event loop / other"
        return "event loop / other"
    if name == "ours.py" and "/bench/servers/" in f:
        return "handler call"
    if name in PLAIN_FILES and "/bench/servers/" in f:
        path = file if Path(file).is_absolute() else str(run.ROOT / file)
        text = linecache.getline(path, line or 0) if line else ""
        if "receive_text" in text and "loads(" not in text:
            return "inbound transport"
        if "loads(" in text:
            return "envelope decode"
        if "dumps(" in text:
            return "encode reply"
        return "dispatch"
    if "/uvicorn/protocols/websockets/" in f:
        if func in {"send", "send_500_response"}:
            return "outbound send"
        if "keepalive" in func or "ping" in func:
            return "event loop / other"
        return "inbound transport"
    if "/starlette/" in f and name == "websockets.py":
        return "outbound send" if func.startswith("send") else "inbound transport"
    if "/starlette/" in f or "/fastapi/" in f:
        return None  # middleware and routing pass-through: the caller decides
    if "/websockets/" in f or "/asyncio/" in f or "/anyio/" in f or "/contextvars" in f:
        return None
    return None


def classify_stack(frames: list[str]) -> tuple[str, str]:
    """``frames`` root first (py-spy's raw order): the bucket of the innermost deciding
    frame, and that frame."""
    for frame in reversed(frames):
        m = FRAME_RE.match(frame)
        if not m:
            continue
        line = int(m["line"]) if m["line"] else None
        bucket = classify_frame(m["func"], m["file"], line)
        if bucket is not None:
            return bucket, frame
    return "event loop / other", frames[-1] if frames else "?"


def read_pyspy(
    path: Path,
) -> tuple[collections.Counter[str], collections.Counter[str], collections.Counter[str]]:
    """Samples per bucket, per innermost frame, and per (bucket, deciding frame)."""
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    deciders: collections.Counter[str] = collections.Counter()
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # py-spy may put the thread first ("process 123:..."): keep frames only
        frames = [f for f in stack.split(";") if FRAME_RE.match(f)]
        n = int(count)
        bucket, decider = classify_stack(frames)
        buckets[bucket] += n
        deciders[f"{bucket} | {decider}"] += n
        if frames:
            leaves[frames[-1]] += n
    return buckets, leaves, deciders


def read_cprofile(path: Path) -> collections.Counter[str]:
    """Self time per bucket, each function classified by its own file and name."""
    stats = pstats.Stats(str(path))
    buckets: collections.Counter[str] = collections.Counter()
    for (file, line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        bucket = classify_frame(func, file, line) or "event loop / other"
        buckets[bucket] += int(tt * 1_000_000)
    return buckets


def pyspy_works() -> str | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        time.sleep(0.3)
        out = subprocess.run(
            [exe, "dump", "--pid", str(probe.pid)], capture_output=True, text=True, timeout=20
        )
        return exe if out.returncode == 0 else None
    except (subprocess.SubprocessError, OSError):
        return None
    finally:
        probe.kill()
        probe.wait()


def echo(server: run.Server, duration: float) -> dict[str, Any]:
    return run.client(
        run.argv("echo", run.common([server]), "--clients", 100, "--duration", duration)
        + run.argv("--warmup", 0.5, "--timeout", duration + 10),
        duration + 10,
    )


def profile_pyspy(name: str, exe: str, duration: float, rate: int) -> dict[str, Any]:
    out = run.RESULTS / f"profile-{name}.txt"
    group = run.start_group([name], None, [])
    if not group:
        return {"error": f"{name} did not start"}
    server = group[0]
    try:
        spy = subprocess.Popen(
            run.argv(exe, "record", "--pid", server.pid, "--rate", rate, "--nonblocking")
            + run.argv("--duration", int(duration + 1), "--format", "raw", "--output", out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=run._limits(run.CLIENT_CPU),
        )
        result = echo(server, duration)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    finally:
        run.stop_group(group)
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"}
    buckets, leaves, deciders = read_pyspy(out)
    return {
        "echo": result,
        "buckets": dict(buckets),
        "top": leaves.most_common(15),
        "deciders": deciders.most_common(60),
        "raw": str(out),
    }


def profile_cprofile(name: str, duration: float) -> dict[str, Any]:
    out = run.RESULTS / f"profile-{name}.prof"
    spec = run.SPECS[name]
    saved = dict(spec)
    spec["cprofile"] = str(out)  # the same server, under bench/_cprofile_uvicorn.py
    try:
        group = run.start_group([name], None, [])
        if not group:
            return {"error": f"{name} did not start"}
        try:
            result = echo(group[0], duration)
        finally:
            run.stop_group(group)
    finally:
        spec.clear()
        spec.update(saved)
    if not out.exists():
        return {"error": "cProfile wrote nothing"}
    return {
        "echo": result,
        "buckets": dict(read_cprofile(out)),
        "raw": str(out),
        "unit": "us of self time (C functions such as json and transport.write count as other)",
    }


def summary(name: str, p: dict[str, Any]) -> list[str]:
    if "error" in p:
        return [f"  {name}: ERROR {p['error']}"]
    e = p["echo"]
    if "error" in e:
        return [f"  {name}: echo client ERROR {e['error']}"]
    cpu_s = (e["server_cpu_pct"][0] / 100) * e["elapsed_s"]
    per_rt_us = cpu_s / max(e["round_trips"], 1) * 1e6
    total = sum(p["buckets"].values()) or 1
    lines = [
        f"  {name}: {e['round_trips_per_s']:,.0f} round trips/s, server CPU "
        f"{e['server_cpu_pct'][0]:.0f} %, {per_rt_us:.1f} us of server CPU per round trip, "
        f"{total:,} {p.get('unit', 'samples')}, load {e.get('load_end', ['-'])[0]}"
    ]
    for b in BUCKETS:
        share = p["buckets"].get(b, 0) / total
        lines.append(f"    {b:20} {100 * share:5.1f} %  {share * per_rt_us:6.1f} us")
    p["per_round_trip_us"] = per_rt_us
    p["us"] = {b: p["buckets"].get(b, 0) / total * per_rt_us for b in BUCKETS}
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--servers", default="ours,ours-before,plain-orjson")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--tool", choices=["auto", "py-spy", "cprofile"], default="auto")
    ap.add_argument("--before", default=run.BEFORE_COMMIT)
    ap.add_argument("--ours-at", default="", help="as bench.run --ours-at (COMMIT or snapshot)")
    a = ap.parse_args()
    names = [s for s in a.servers.split(",") if s]
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    if "ours-before" in names:
        why = run.ensure_worktree(run.BEFORE_DIR, a.before)
        if why:
            raise SystemExit(f"ours-before: {why}")
        run.WORKTREES["ours-before"] = run.BEFORE_DIR
    if a.ours_at == "snapshot":
        run.WORKTREES["ours"] = run.OURS_SNAPSHOT_DIR
        run.log(f"ours: {run.snapshot_tree(run.OURS_SNAPSHOT_DIR)}")
    elif a.ours_at:
        why = run.ensure_worktree(run.OURS_AT_DIR, a.ours_at)
        if why:
            raise SystemExit(f"ours: {why}")
        run.WORKTREES["ours"] = run.OURS_AT_DIR
    exe = None if a.tool == "cprofile" else pyspy_works()
    if a.tool == "py-spy" and exe is None:
        raise SystemExit("py-spy is missing or cannot attach (ptrace): try --tool cprofile")
    tool = "py-spy" if exe else "cprofile"
    run.log(f"profiling with {tool}; load average {run.loadavg()}")
    results: dict[str, Any] = {}
    for name in names:
        run.log(f"  {name} ...")
        results[name] = (
            profile_pyspy(name, exe, a.duration, a.rate)
            if exe
            else profile_cprofile(name, a.duration)
        )
    lines = [f"\nInbound path, echo x100 for {a.duration:g} s per server ({tool}):"]
    for name in names:
        lines += summary(name, results[name])
        top = results[name].get("top")
        total = sum(results[name].get("buckets", {}).values()) or 1
        if top:
            lines.append("    hottest frames (innermost, share of samples):")
            for frame, n in top[:8]:
                lines.append(f"      {100 * n / total:5.1f} %  {frame[:110]}")
        deciders = results[name].get("deciders")
        if deciders:
            lines.append("    what decided each bucket (top frames, share of samples):")
            for b in BUCKETS[:-1]:
                rows = [(k.split(" | ", 1)[1], n) for k, n in deciders if k.startswith(b + " |")]
                for frame, n in rows[:4]:
                    lines.append(f"      {b:18} {100 * n / total:5.1f} %  {frame[:100]}")
    base = "plain-orjson" if "plain-orjson" in names else None
    for name in [n for n in names if n != base and base and "us" in results.get(n, {})]:
        if "us" not in results[base]:
            continue
        lines.append(f"\n  {name} - {base}, us per round trip:")
        for b in BUCKETS:
            d = results[name]["us"][b] - results[base]["us"][b]
            lines.append(f"    {b:20} {d:+6.1f}")
        d = results[name]["per_round_trip_us"] - results[base]["per_round_trip_us"]
        lines.append(f"    {'total':20} {d:+6.1f}")
    for name, where in run.ORCS_FILES.items():
        lines.append(f"  {name}: fastapi_orcs_ws from {where}")
    run.log("\n".join(lines))
    with contextlib.suppress(OSError):
        (run.RESULTS / "profile.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
