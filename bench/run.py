"""Run the benchmark suite: every server, every workload, one table of medians.

    python -m bench.run                 # full: medians of 3, N = 100 / 1,000 / 5,000
    python -m bench.run --quick         # about a minute: 1 run, N = 100 / 1,000
    python -m bench.run --only fanout,echo --servers ours,plain

Each server is its own uvicorn (or bun) subprocess pinned to core 0; the load client
(bench/client.py) is another process pinned to core 1. Results go to
bench/results/latest.json and the chart to bench/results/fanout.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
SERVER_CPU = 0
CLIENT_CPU = 1
BUN_SCRATCH = Path("/tmp/fastapi-orcs-ws-bench-bun")

ALL_SERVERS = ["ours", "plain", "plain-legacy", "socketio", "bun"]
ALL_WORKLOADS = ["fanout", "echo", "idle", "slow", "redis"]

try:
    import uvloop  # noqa: F401

    LOOP = "uvloop"
except ImportError:
    LOOP = "asyncio"

UVICORN_FLAGS = [
    "--http",
    "h11",
    "--loop",
    LOOP,
    "--ws-per-message-deflate",
    "false",
    "--backlog",
    "4096",
    "--log-level",
    "warning",
    "--no-access-log",
]

SPECS: dict[str, dict[str, Any]] = {
    "ours": {"app": "bench.servers.ours:app", "ws": "websockets-sansio", "kind": "envelope"},
    # diagnostic, not in the default list: ours with the cyclic GC off
    "ours-nogc": {
        "app": "bench.servers.ours_nogc:app",
        "ws": "websockets-sansio",
        "kind": "envelope",
    },
    "plain": {"app": "bench.servers.plain:app", "ws": "websockets-sansio", "kind": "envelope"},
    "plain-legacy": {"app": "bench.servers.plain:app", "ws": "websockets", "kind": "envelope"},
    "socketio": {
        "app": "bench.servers.socketio_server:app",
        "ws": "websockets-sansio",
        "kind": "socketio",
    },
    "bun": {"bun": "bench/servers/bun_server.ts", "kind": "envelope"},
}


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limits(cpu: int) -> Any:
    def pre() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, {cpu})
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return pre


def pinning_possible() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


# --------------------------------------------------------------------------- bun
def find_bun() -> tuple[str | None, str]:
    """A runnable bun binary, installing the npm package in a scratch dir if needed."""
    candidates = [
        os.environ.get("BUN"),
        shutil.which("bun"),
        str(BUN_SCRATCH / "node_modules/.bin/bun"),
    ]
    for c in candidates:
        if c and Path(c).exists():
            ok, version = _bun_version(c)
            if ok:
                return c, version
    npm = shutil.which("npm")
    if not npm:
        return None, "npm not found"
    BUN_SCRATCH.mkdir(parents=True, exist_ok=True)
    log(f"  installing the bun npm package into {BUN_SCRATCH} ...")
    try:
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "bun"],
            cwd=BUN_SCRATCH,
            capture_output=True,
            timeout=240,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"npm install bun failed: {exc}"
    c = str(BUN_SCRATCH / "node_modules/.bin/bun")
    ok, version = _bun_version(c)
    return (c, version) if ok else (None, f"bun binary not runnable: {version}")


def _bun_version(path: str) -> tuple[bool, str]:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except (subprocess.SubprocessError, OSError) as exc:
        return False, str(exc)
    return out.returncode == 0, (out.stdout or out.stderr).strip()


# --------------------------------------------------------------------------- servers
class Server:
    def __init__(
        self, name: str, bun: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.spec = SPECS[name]
        self.port = free_port()
        self.log_path = RESULTS / f"server-{name}-{self.port}.log"
        if "bun" in self.spec:
            cmd = [bun or "bun", "run", self.spec["bun"]]
        else:
            cmd = [
                PY,
                "-m",
                "uvicorn",
                self.spec["app"],
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--ws",
                self.spec["ws"],
                *UVICORN_FLAGS,
            ]
        full_env = {**os.environ, "PORT": str(self.port), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.logf = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=full_env,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            preexec_fn=_limits(SERVER_CPU),
        )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen within {timeout}s: {self.tail()}")

    def tail(self) -> str:
        self.logf.flush()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logf.close()
        with contextlib.suppress(OSError):
            if "error" not in self.log_path.read_text(errors="replace").lower():
                self.log_path.unlink()


@contextlib.contextmanager
def running(names: list[str], bun: str | None, env: dict[str, str] | None = None) -> Any:
    servers = [Server(n, bun, env) for n in names]
    try:
        for s in servers:
            s.wait_ready()
        time.sleep(0.3)
        yield servers
    finally:
        for s in servers:
            s.stop()


def probe_extensions(server: Server) -> str:
    """Offer permessage-deflate with the `websockets` client; report what came back."""
    import asyncio

    from websockets.asyncio.client import connect

    path = "/socket.io/?EIO=4&transport=websocket" if server.spec["kind"] == "socketio" else "/ws"

    async def go() -> str:
        async with connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=10) as ws:
            return ws.response.headers.get("Sec-WebSocket-Extensions", "") or "none"

    try:
        return asyncio.run(go())
    except Exception as exc:
        return f"probe failed: {type(exc).__name__}"


# --------------------------------------------------------------------------- client
def client(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [PY, "-m", "bench.client", *args]
    try:
        out = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout + 150,
            preexec_fn=_limits(CLIENT_CPU),
        )
    except subprocess.TimeoutExpired:
        return {"error": "client timed out"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"client failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}"}
    return json.loads(lines[-1])


def common(servers: list[Server], extra_pids: list[int] | None = None) -> list[str]:
    pids = [s.pid for s in servers] + (extra_pids or [])
    return [
        "--ports",
        ",".join(str(s.port) for s in servers),
        "--kind",
        servers[0].spec["kind"],
        "--server-pids",
        ",".join(map(str, pids)),
    ]


# --------------------------------------------------------------------------- workloads
def cfg(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "runs": 1,
            "fanout_n": [100, 1000],
            "fanout_s": 1.0,
            "warmup_s": 0.3,
            "fixed_n": 1000,
            "fixed_s": 1.5,
            "echo_s": 1.5,
            "echo_warmup_s": 0.3,
            "idle_n": 1000,
            "slow_n": 20,
            "slow_s": 4.0,
            "redis_n": 1000,
            "slow_servers": {"ours", "plain"},
            "settle_s": 0.8,
        }
    return {
        "runs": 3,
        "fanout_n": [100, 1000, 5000],
        "fanout_s": 3.0,
        "warmup_s": 1.0,
        "fixed_n": 1000,
        "fixed_s": 4.0,
        "echo_s": 4.0,
        "echo_warmup_s": 0.5,
        "settle_s": 1.5,
        "idle_n": 5000,
        "slow_n": 20,
        "slow_s": 8.0,
        "redis_n": 1000,
        "slow_servers": set(SPECS),
    }


FIXED_DELIVERIES_PER_S = 10_000
IN_FLIGHT = 2_000  # deliveries in flight at the highest sustainable rate
MAX_K = 300_000


def fanout_once(
    c: dict[str, Any], servers: list[Server], n: int, extra_pids: list[int] | None = None
) -> dict[str, Any]:
    """One fan-out run at the highest sustainable rate, N receivers."""
    k = min(MAX_K, max(2000, int(2_000_000 * c["fanout_s"] / n)))
    args = ["fanout", *common(servers, extra_pids), "--n", str(n), "--k", str(k)]
    args += ["--window", str(window(n)), "--warmup", str(c["warmup_s"])]
    args += ["--timeout", str(c["fanout_s"])]
    return client(args, c["fanout_s"])


def window(n: int) -> int:
    """Publishes in flight: at least 4, else enough for IN_FLIGHT deliveries."""
    return max(4, -(-IN_FLIGHT // n))


def run_fanout(name: str, c: dict[str, Any], bun: str | None, out: dict[str, Any]) -> None:
    with running([name], bun) as servers:
        out["_probe"] = probe_extensions(servers[0])
        client(
            [
                "fanout",
                *common(servers),
                "--n",
                "100",
                "--k",
                str(MAX_K),
                "--warmup",
                "0",
                "--timeout",
                "1",
            ],
            1,
        )  # discarded: a fresh server runs slow for its first second
        for n in c["fanout_n"]:
            runs = [fanout_once(c, servers, n) for _ in range(c["runs"])]
            for r in runs:
                _progress(name, f"fanout N={n}", r, "deliveries_per_s")
            out[f"fanout_{n}"] = summarize(runs)
        n = c["fixed_n"]
        rate = FIXED_DELIVERIES_PER_S / n
        runs = []
        for _ in range(c["runs"]):
            k = max(2, int(rate * c["fixed_s"]))
            r = client(
                [
                    "fanout",
                    *common(servers),
                    "--n",
                    str(n),
                    "--k",
                    str(k),
                    "--mode",
                    "fixed",
                    "--rate",
                    str(rate),
                    "--warmup",
                    "0",
                    "--timeout",
                    str(c["fixed_s"] + 10),
                ],
                c["fixed_s"] + 10,
            )
            runs.append(r)
            _progress(name, f"fixed N={n} @{FIXED_DELIVERIES_PER_S}/s", r, "p99_ms")
        out[f"fixed_{n}"] = summarize(runs)


def run_echo(name: str, c: dict[str, Any], bun: str | None, out: dict[str, Any]) -> None:
    with running([name], bun) as servers:
        runs = []
        for _ in range(c["runs"]):
            r = client(
                [
                    "echo",
                    *common(servers),
                    "--clients",
                    "100",
                    "--duration",
                    str(c["echo_s"]),
                    "--warmup",
                    str(c["echo_warmup_s"]),
                    "--timeout",
                    str(c["echo_s"] + 10),
                ],
                c["echo_s"] + 10,
            )
            runs.append(r)
            _progress(name, "echo x100", r, "round_trips_per_s")
        out["echo"] = summarize(runs)


def run_idle(name: str, c: dict[str, Any], bun: str | None, out: dict[str, Any]) -> None:
    runs = []
    for _ in range(c["runs"]):
        with running([name], bun) as servers:
            r = client(
                [
                    "idle",
                    *common(servers),
                    "--n",
                    str(c["idle_n"]),
                    "--settle",
                    str(c["settle_s"]),
                    "--timeout",
                    "60",
                ],
                60,
            )
            runs.append(r)
            _progress(name, f"idle x{c['idle_n']}", r, "kib_per_conn")
    out["idle"] = summarize(runs)


def run_slow(name: str, c: dict[str, Any], bun: str | None, out: dict[str, Any]) -> None:
    if name not in c["slow_servers"]:
        return
    with running([name], bun) as servers:
        for stalled in (0, 1):
            runs = []
            for _ in range(c["runs"]):
                half = c["slow_s"] / 2
                r = client(
                    [
                        "fanout",
                        *common(servers),
                        "--n",
                        str(c["slow_n"]),
                        "--k",
                        str(MAX_K),
                        "--window",
                        str(window(c["slow_n"])),
                        "--stalled",
                        str(stalled),
                        "--warmup",
                        str(half),
                        "--timeout",
                        str(half),
                    ],
                    c["slow_s"],
                )
                runs.append(r)
                _progress(name, f"slow-reader stalled={stalled}", r, "deliveries_per_s")
            out[f"slow_{stalled}"] = summarize(runs)


def redis_pid() -> int | None:
    try:
        import redis

        return int(
            redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).info("server")["process_id"]
        )
    except Exception:
        return None


def run_redis(
    name: str, c: dict[str, Any], bun: str | None, out: dict[str, Any], notes: list[str]
) -> None:
    if name != "ours":
        return
    rpid = redis_pid()
    if rpid is None:
        notes.append("redis: skipped, no Redis answering on 127.0.0.1:6379")
        return
    env = {"WS_BACKEND_URL": "redis://127.0.0.1:6379/15"}
    try:
        ctx = running(["ours", "ours"], bun, env)
        servers = ctx.__enter__()
    except RuntimeError as exc:
        notes.append(f"redis: skipped, ours did not start with WS_BACKEND_URL=redis://...: {exc}")
        return
    try:
        n = c["redis_n"]
        runs = [fanout_once(c, servers, n, [rpid]) for _ in range(c["runs"])]
        for r in runs:
            _progress(name, f"redis 2 procs N={n}", r, "deliveries_per_s")
        out[f"redis_{n}"] = summarize(runs)
    finally:
        ctx.__exit__(None, None, None)


def _progress(name: str, what: str, r: dict[str, Any], key: str) -> None:
    if "error" in r:
        log(f"  {name:13} {what:28} ERROR {r['error']}")
        return
    extra = (
        f"client CPU {r.get('client_cpu_pct', '-')}%, "
        f"server CPU {r.get('server_cpu_pct', '-')}, "
        f"cores busy {r.get('core_busy_pct', '-')}"
    )
    log(f"  {name:13} {what:28} {key}={r.get(key)}  ({extra})")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error") if runs else "no runs", "runs": runs}
    med: dict[str, Any] = {"runs": runs, "n_runs": len(ok)}
    for key, value in ok[0].items():
        if isinstance(value, bool):
            med[key] = any(r.get(key) for r in ok)
        elif isinstance(value, int | float):
            vals = [r[key] for r in ok if isinstance(r.get(key), int | float)]
            med[key] = statistics.median(vals) if vals else None
        elif key == "timeline_per_s":
            med[key] = value  # first run's timeline, for inspection
        elif isinstance(value, list) and value and isinstance(value[0], int | float):
            width = min(len(r.get(key) or []) for r in ok)
            med[key] = [statistics.median(r[key][i] for r in ok) for i in range(width)]
        elif value is None:
            vals = [r[key] for r in ok if isinstance(r.get(key), int | float)]
            med[key] = statistics.median(vals) if vals else None
        else:
            med[key] = value
    exts = {e for r in ok for e in r.get("extensions", [])}
    med["extensions"] = sorted(e or "none" for e in exts)
    return med


# --------------------------------------------------------------------------- report
def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float | int):
        return f"{v:,.{digits}f}"
    return str(v)


def cpu_note(m: dict[str, Any]) -> str:
    cl = m.get("client_cpu_pct")
    sv = m.get("server_cpu_pct") or []
    s = "/".join(f"{x:.0f}" for x in sv) if sv else "-"
    cores = m.get("core_busy_pct") or []
    k = (
        f" core{SERVER_CPU}/{CLIENT_CPU} {cores[SERVER_CPU]:.0f}/{cores[CLIENT_CPU]:.0f}%"
        if len(cores) > 1
        else ""
    )
    client_core = cores[CLIENT_CPU] if len(cores) > 1 else cl
    server_core = cores[SERVER_CPU] if len(cores) > 1 else (min(sv) if sv else None)
    flag = ""
    if len(cores) > 1:
        if sv and len(sv) == 1 and cores[SERVER_CPU] - sv[0] > 15:
            flag += " CONTENDED-0?"
        if cl is not None and cores[CLIENT_CPU] - cl > 25:
            flag += " CONTENDED-1?"
    if client_core is not None and client_core >= 90 and (server_core is None or server_core < 95):
        flag += " SATURATED-CLIENT"
    return f"c{fmt(cl)}% s{s}%{k}{flag}"


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)] if rows else []
    lines = [f"\n{title}"]
    if not rows:
        return lines[0] + "\n  (no results)"
    lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


METRICS: list[tuple[str, str, str, bool]] = []  # (label, key, field, higher_is_better)


def metrics(c: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    ms = [
        (f"fan-out {n:,} deliveries/s", f"fanout_{n}", "deliveries_per_s", True)
        for n in c["fanout_n"]
    ]
    ms += [(f"fan-out {n:,} p99 ms", f"fanout_{n}", "p99_ms", False) for n in c["fanout_n"]]
    ms += [
        (f"fixed-rate {c['fixed_n']:,} p99 ms", f"fixed_{c['fixed_n']}", "p99_ms", False),
        ("echo round trips/s", "echo", "round_trips_per_s", True),
        ("echo p99 ms", "echo", "p99_ms", False),
        ("idle KiB/conn", "idle", "kib_per_conn", False),
    ]
    return ms


def get(res: dict[str, Any], server: str, key: str, field: str) -> Any:
    m = res.get(server, {}).get(key)
    if not m or "error" in m:
        return None
    return m.get(field)


def report(res: dict[str, Any], c: dict[str, Any], servers: list[str]) -> str:
    out = []
    present = [s for s in servers if s in res]
    rows = []
    for s in present:
        for n in c["fanout_n"]:
            m = res[s].get(f"fanout_{n}")
            if m:
                rows.append([s, f"{n:,}", *_fan_cells(m)])
    out.append(
        table(
            f"Fan-out, highest sustainable rate "
            f"({IN_FLIGHT:,} deliveries / min 4 publishes in flight), median",
            ["server", "N", "deliveries/s", "p50 ms", "p99 ms", "CPU client/server"],
            rows,
        )
    )
    rows = []
    for s in present:
        m = res[s].get(f"fixed_{c['fixed_n']}")
        if m:
            rows.append([s, f"{c['fixed_n']:,}", *_fan_cells(m)])
    out.append(
        table(
            f"Fan-out at a fixed rate ({FIXED_DELIVERIES_PER_S:,} deliveries/s offered), median",
            ["server", "N", "deliveries/s", "p50 ms", "p99 ms", "CPU client/server"],
            rows,
        )
    )
    rows = []
    for s in present:
        m = res[s].get("echo")
        if m and "error" not in m:
            rows.append(
                [
                    s,
                    fmt(m.get("round_trips_per_s")),
                    fmt(m.get("p50_ms"), 2),
                    fmt(m.get("p99_ms"), 2),
                    cpu_note(m),
                ]
            )
        elif m:
            rows.append([s, "ERROR " + str(m["error"])[:60], "", "", ""])
    out.append(
        table(
            "Echo, 100 clients, median",
            ["server", "round trips/s", "p50 ms", "p99 ms", "CPU client/server"],
            rows,
        )
    )
    rows = []
    for s in present:
        m = res[s].get("idle")
        if m and "error" not in m:
            rows.append(
                [
                    s,
                    fmt(m.get("kib_per_conn"), 1),
                    f"{fmt(m.get('alive'))}/{fmt(m.get('n'))}",
                    f"{fmt(m.get('rss_before_mib'), 1)} -> {fmt(m.get('rss_after_mib'), 1)}",
                ]
            )
        elif m:
            rows.append([s, "ERROR " + str(m["error"])[:60], "", ""])
    out.append(
        table(
            "Idle memory, server RSS growth per connection, median",
            ["server", "KiB/conn", "alive", "RSS MiB"],
            rows,
        )
    )
    rows = []
    for s in present:
        a, b = res[s].get("slow_0"), res[s].get("slow_1")
        if a and b and "error" not in a and "error" not in b:
            ra, rb = a.get("deliveries_per_s"), b.get("deliveries_per_s")
            ratio = rb / ra if ra and rb is not None else None
            rows.append(
                [
                    s,
                    fmt(ra),
                    fmt(rb),
                    fmt(ratio, 2),
                    str(b.get("stalled_close_code") or "-"),
                    cpu_note(b),
                ]
            )
    out.append(
        table(
            f"Slow reader: N={c['slow_n']} fan-out, others' deliveries/s over the second half of "
            f"{c['slow_s']:.0f} s, without / with one member that stopped reading",
            ["server", "without", "with", "ratio", "close code", "CPU client/server"],
            rows,
        )
    )
    rows = []
    for key in [k for k in res.get("ours", {}) if k.startswith("redis_")]:
        m = res["ours"][key]
        n = key.split("_")[1]
        single = get(res, "ours", f"fanout_{n}", "deliveries_per_s")
        if "error" not in m:
            rows.append(
                [
                    "ours, redis, 2 processes",
                    n,
                    fmt(m.get("deliveries_per_s")),
                    fmt(m.get("p50_ms"), 2),
                    fmt(m.get("p99_ms"), 2),
                    cpu_note(m) + " (ours A / ours B / redis-server)",
                ]
            )
            rows.append(["ours, memory, 1 process", n, fmt(single), "", "", ""])
    if rows:
        out.append(
            table("Redis backend", ["setup", "N", "deliveries/s", "p50 ms", "p99 ms", "CPU"], rows)
        )
    # ratios
    base = "ours" if "ours" in present else (present[0] if present else None)
    peers = [s for s in present if s != base]
    if base and peers:
        rows = []
        for label, key, field, _hib in metrics(c):
            mine = get(res, base, key, field)
            cells = []
            for p in peers:
                theirs = get(res, p, key, field)
                cells.append(fmt(mine / theirs, 2) + "x" if mine is not None and theirs else "-")
            rows.append([label, *cells])
        out.append(table(f"Ratios: {base} / peer (same run)", ["metric", *peers], rows))
    return "\n".join(out)


def _fan_cells(m: dict[str, Any]) -> list[str]:
    if "error" in m:
        return ["ERROR " + str(m["error"])[:60], "", "", ""]
    rate = fmt(m.get("deliveries_per_s"))
    if m.get("mode") == "fixed" and m.get("expected") and m["deliveries"] < m["expected"] * 0.999:
        rate += f" ({m['deliveries']:,.0f}/{m['expected']:,.0f} delivered)"
    return [rate, fmt(m.get("p50_ms"), 2), fmt(m.get("p99_ms"), 2), cpu_note(m)]


def targets(res: dict[str, Any], c: dict[str, Any]) -> str:
    if "ours" not in res:
        return "\nTargets: ours not measured."
    lines = ["\nTargets (issue 6)"]

    def check(label: str, value: float | None, ok: bool | None) -> None:
        mark = "-" if ok is None else ("PASS" if ok else "MISS")
        lines.append(f"  [{mark:4}] {label}: {fmt(value, 2) if value is not None else 'n/a'}")

    def ratio(key: str, field: str, peer: str) -> float | None:
        a, b = get(res, "ours", key, field), get(res, peer, key, field)
        return a / b if a is not None and b else None

    for n in [n for n in c["fanout_n"] if n >= 1000]:
        r = ratio(f"fanout_{n}", "deliveries_per_s", "plain")
        check(f"fan-out {n:,} vs plain (>= 1.0x)", r, None if r is None else r >= 1.0)
        r = ratio(f"fanout_{n}", "deliveries_per_s", "socketio")
        check(f"fan-out {n:,} vs socketio (>= 6x)", r, None if r is None else r >= 6.0)
    r = ratio("echo", "round_trips_per_s", "plain")
    check("echo vs plain (>= 0.85x)", r, None if r is None else r >= 0.85)
    r = ratio("echo", "round_trips_per_s", "socketio")
    check("echo vs socketio (>= 4x)", r, None if r is None else r >= 4.0)
    r = ratio("echo", "p99_ms", "plain")
    check("echo p99 vs plain (<= 1.3x)", r, None if r is None else r <= 1.3)
    r = ratio("idle", "kib_per_conn", "plain")
    check("idle memory vs plain (<= 1.25x)", r, None if r is None else r <= 1.25)
    a, b = (
        get(res, "ours", "slow_0", "deliveries_per_s"),
        get(res, "ours", "slow_1", "deliveries_per_s"),
    )
    r = b / a if a and b is not None else None
    check("slow reader: rate with / without (>= 0.90)", r, None if r is None else r >= 0.9)
    return "\n".join(lines)


def chart(
    res: dict[str, Any], c: dict[str, Any], servers: list[str], meta: dict[str, Any]
) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [s for s in servers if s in res and any(k.startswith("fanout_") for k in res[s])]
    if not present:
        return None
    ns = c["fanout_n"]
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [len(ns) + 1, 1.4]}
    )
    width = 0.8 / len(present)
    colors = {
        "ours": "#2a9d8f",
        "ours-nogc": "#52b69a",
        "plain": "#264653",
        "plain-legacy": "#8ab17d",
        "socketio": "#e76f51",
        "bun": "#e9c46a",
    }
    for i, s in enumerate(present):
        vals = [get(res, s, f"fanout_{n}", "deliveries_per_s") or 0 for n in ns]
        xs = [j + i * width for j in range(len(ns))]
        bars = ax.bar(xs, vals, width, label=s, color=colors.get(s))
        for b, v in zip(bars, vals, strict=True):
            if v:
                ax.annotate(
                    f"{v / 1000:,.0f}k",
                    (b.get_x() + b.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks([j + width * (len(present) - 1) / 2 for j in range(len(ns))])
    ax.set_xticklabels([f"{n:,} receivers" for n in ns])
    ax.set_yscale("log")
    ax.set_ylabel("deliveries / s (log scale)")
    ax.set_title("Room fan-out, one sender, ~100-byte JSON")
    ax.legend(fontsize=8)
    echo = [(s, get(res, s, "echo", "round_trips_per_s")) for s in present]
    echo = [(s, v) for s, v in echo if v]
    if echo:
        ax2.bar([s for s, _ in echo], [v for _, v in echo], color=[colors.get(s) for s, _ in echo])
        ax2.set_yscale("log")
        ax2.set_title("Echo, 100 clients (round trips / s)")
        ax2.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(
        f"{meta['cpu']} - server pinned to core {SERVER_CPU}, client to core {CLIENT_CPU}; "
        f"uvicorn {meta['versions'].get('uvicorn')} --loop {LOOP} --http h11, no compression; "
        + ("quick run" if meta["quick"] else f"median of {c['runs']}"),
        fontsize=8,
    )
    fig.tight_layout()
    path = RESULTS / "fanout.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine(quick: bool, bun_version: str | None) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in [
        "uvicorn",
        "websockets",
        "fastapi",
        "starlette",
        "python-socketio",
        "python-engineio",
        "uvloop",
    ]:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    if bun_version:
        versions["bun"] = bun_version
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "quick": quick,
        "pinning": pinning_possible(),
        "uvicorn_flags": UVICORN_FLAGS,
        "ws": {k: v.get("ws", "bun native") for k, v in SPECS.items()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="one run each, N=100/1,000; about a minute")
    p.add_argument(
        "--only",
        default=",".join(ALL_WORKLOADS),
        help="comma-separated: " + ",".join(ALL_WORKLOADS),
    )
    p.add_argument(
        "--servers",
        default="",
        help="comma-separated: "
        + ",".join(ALL_SERVERS)
        + " (default: all; --quick leaves out plain-legacy)",
    )
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    p.add_argument("--fanout-n", default="", help="override the receiver counts, e.g. 1000,5000")
    p.add_argument(
        "--no-chart", action="store_true", help="do not overwrite bench/results/fanout.png"
    )
    a = p.parse_args()
    workloads = [w for w in a.only.split(",") if w]
    servers = [s for s in a.servers.split(",") if s]
    if not servers:
        servers = [s for s in ALL_SERVERS if not (a.quick and s == "plain-legacy")]
        if a.quick:
            log(
                "NOTE: --quick leaves out plain-legacy and runs the slow-reader case "
                "for ours and plain only"
            )
    for w in workloads:
        if w not in ALL_WORKLOADS:
            p.error(f"unknown workload {w}")
    for s in servers:
        if s not in ALL_SERVERS and s not in SPECS:
            p.error(f"unknown server {s}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    c = cfg(a.quick)
    if a.fanout_n:
        c["fanout_n"] = [int(x) for x in a.fanout_n.split(",")]
    notes: list[str] = []
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 12_000:
        notes.append(f"RLIMIT_NOFILE hard limit is {hard}; 5,000-connection workloads may fail")
    if not pinning_possible():
        notes.append("fewer than 2 usable cores: server and client are NOT pinned apart")

    bun, bun_version = None, None
    if "bun" in servers:
        bun, info = find_bun()
        if bun:
            bun_version = info
        else:
            notes.append(f"bun: skipped ({info})")
            log(f"NOTE: bun skipped: {info}")
            servers.remove("bun")
    for name in [s for s in servers if s.startswith("ours")]:
        module = SPECS[name]["app"].split(":")[0]
        chk = subprocess.run(
            [PY, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True
        )
        if chk.returncode != 0:
            err = (chk.stderr.strip().splitlines() or ["?"])[-1]
            notes.append(f"{name}: skipped, {module} does not import yet ({err})")
            log(f"NOTE: {name} skipped: {err}")
            servers.remove(name)

    meta = machine(a.quick, bun_version)
    log(
        f"machine: {meta['cpu']}, {meta['cores']} cores, "
        f"Linux {meta['kernel']}, Python {meta['python']}"
    )
    log(f"versions: {meta['versions']}")
    log(
        f"uvicorn: {' '.join(UVICORN_FLAGS)}; "
        "--ws websockets-sansio (plain-legacy: --ws websockets)"
    )
    log(
        f"pinning: server -> core {SERVER_CPU}, load client -> core {CLIENT_CPU}"
        if meta["pinning"]
        else "pinning: off"
    )
    log(
        f"mode: {'quick (1 run)' if a.quick else 'full (median of 3)'}; "
        f"servers {servers}; workloads {workloads}"
    )

    res: dict[str, Any] = {}
    t0 = time.monotonic()
    for s in servers:
        out: dict[str, Any] = {}
        res[s] = out
        try:
            if "fanout" in workloads:
                run_fanout(s, c, bun, out)
            if "echo" in workloads:
                run_echo(s, c, bun, out)
            if "idle" in workloads:
                run_idle(s, c, bun, out)
            if "slow" in workloads:
                run_slow(s, c, bun, out)
            if "redis" in workloads:
                run_redis(s, c, bun, out, notes)
        except Exception as exc:  # one server failing must not lose the others' results
            notes.append(f"{s}: {type(exc).__name__}: {exc}")
            log(f"  {s}: {type(exc).__name__}: {exc}")
        Path(a.out).with_suffix(".partial.json").write_text(json.dumps(res, indent=1, default=str))
    probes = {}
    for s in list(res):
        probes[s] = res[s].pop("_probe", "not probed")
    client_exts = sorted(
        {
            e
            for s in res.values()
            for m in s.values()
            if isinstance(m, dict)
            for e in m.get("extensions", [])
        }
    )

    text = report(res, c, servers) + "\n" + targets(res, c)
    text += (
        f"\n\nNegotiated extensions, bench client (offers none): {', '.join(client_exts) or 'none'}"
    )
    text += (
        "\nNegotiated extensions when a client offers permessage-deflate "
        "(websockets client probe): "
    )
    text += ", ".join(f"{s}={v}" for s, v in probes.items())
    text += (
        "\nCPU column: c = load client process, s = server process(es), "
        "% of one core over the measured window;"
        f"\n  core{SERVER_CPU}/{CLIENT_CPU} = whole-core busy % "
        "(includes loopback softirq time no process is charged for)."
        "\nSATURATED-CLIENT: core 1 >= 90 % busy while core 0 < 95 %: "
        "the figure measures the client;"
        "\nCONTENDED-0?/-1?: core 0 (1) was much busier than the server (client) process: "
        "other load ran there."
    )
    for n in notes:
        text += f"\nNOTE: {n}"
    text += f"\n\nwall time {time.monotonic() - t0:.0f} s"
    log(text)
    meta["notes"] = notes
    meta["probe_extensions"] = probes
    meta["client_extensions"] = client_exts
    Path(a.out).write_text(
        json.dumps(
            {
                "meta": meta,
                "config": {k: (sorted(v) if isinstance(v, set) else v) for k, v in c.items()},
                "results": res,
            },
            indent=1,
        )
    )
    path = None if a.no_chart else chart(res, c, servers, meta)
    log(f"wrote {a.out}" + (f" and {path}" if path else ""))


if __name__ == "__main__":
    main()
