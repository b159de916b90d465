"""Run the benchmark suite: every server, every workload, one table of medians.

    python -m bench.run                 # full: medians of 3, N = 100 / 1,000 / 5,000
    python -m bench.run --quick         # under 3 minutes: 1 run, N = 1,000, 4 servers
    python -m bench.run --only fanout,echo --servers ours,ours-before,plain,plain-orjson

Each server is its own uvicorn (or bun) subprocess pinned to core 0; the load client
(bench/client.py) is another process pinned to core 1. Runs are interleaved: every server of
a workload is started once, and run k of each figure is taken for every server (in a rotated
order) before run k + 1, so that load from elsewhere on the machine hits all of them alike.
``ours-before`` is the library as of ``--before`` (default ac5afbf), imported from a throwaway
``git worktree`` in /tmp/orcs-before that is created on demand and never committed.
Results go to bench/results/latest.json and the chart to bench/results/fanout.png.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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

ALL_SERVERS = ["ours", "ours-before", "plain", "plain-orjson", "plain-legacy", "socketio", "bun"]
QUICK_SERVERS = ["ours", "ours-before", "plain", "plain-orjson"]
ALL_WORKLOADS = ["fanout", "echo", "idle", "flood", "relay", "slow", "redis"]
BEFORE_COMMIT = "ac5afbf"
BEFORE_DIR = Path("/tmp/orcs-before")
OURS_AT_DIR = Path("/tmp/orcs-ours-at")
OURS_SNAPSHOT_DIR = Path("/tmp/orcs-ours-snapshot")
SERVERS_DIR = ROOT / "bench" / "servers"

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
    # the library as of --before, serving the same bench/servers/ours.py (WORKTREES)
    "ours-before": {"app": "bench.servers.ours:app", "ws": "websockets-sansio", "kind": "envelope"},
    "plain": {"app": "bench.servers.plain:app", "ws": "websockets-sansio", "kind": "envelope"},
    "plain-orjson": {
        "app": "bench.servers.plain_orjson:app",
        "ws": "websockets-sansio",
        "kind": "envelope",
    },
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


# --------------------------------------------------------------------------- worktrees
WORKTREES: dict[str, Path] = {}
"""Server name -> a worktree whose ``fastapi_orcs_ws`` it imports instead of today's tree."""


def ensure_worktree(path: Path, commit: str) -> str | None:
    """A detached worktree of ``commit`` at ``path`` (created if missing); None, or why not."""
    try:
        want = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"commit {commit} not found: {exc}"
    if path.exists():
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        if head != want:
            return (
                f"{path} holds {head[:10] or 'no git checkout'}, not {commit}: remove it "
                f"(git worktree remove --force {path}) and run again"
            )
        return None
    log(f"  git worktree add {path} {want[:10]} (throwaway, never committed)")
    out = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), want],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return f"git worktree add failed: {out.stderr.strip()[-300:]}"
    return None


def snapshot_tree(path: Path) -> str:
    """Copy today's package (uncommitted edits included) to ``path``; describe what it holds.

    Others may edit the working tree during a long run: the snapshot keeps ``ours`` the same
    from the first figure to the last. The uncommitted diff is saved next to it.
    """
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(
        ROOT / "fastapi_orcs_ws",
        path / "fastapi_orcs_ws",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    head = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True
    ).stdout.strip()
    diff = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "HEAD", "--", "fastapi_orcs_ws"],
        capture_output=True,
        text=True,
    ).stdout
    (path / "uncommitted.diff").write_text(diff)
    digest = hashlib.sha1(diff.encode()).hexdigest()[:10]
    changed = diff.count("\ndiff --git") + diff.startswith("diff --git")
    return f"snapshot of the working tree at {head}" + (
        f" + uncommitted changes in {changed} files (diff sha1 {digest}, "
        f"{path / 'uncommitted.diff'})"
        if diff
        else ""
    )


def worktree_env(path: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": str(path),
        "BENCH_EXPECT_ORCS": str(path / "fastapi_orcs_ws") + os.sep,
    }


# --------------------------------------------------------------------------- servers
def uvicorn_command(name: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The uvicorn command line of the Python bench server ``name`` on ``port`` (127.0.0.1,
    the settings above), and what it adds to the environment (a worktree's ``PYTHONPATH``)."""
    spec = SPECS[name]
    tail = ["--host", "127.0.0.1", "--port", str(port), "--ws", spec["ws"], *UVICORN_FLAGS]
    if name in WORKTREES:
        # -P: the working directory (with today's package) is not put on sys.path;
        # --app-dir: bench/servers (today's ours.py) comes first, the package from the
        # worktree on PYTHONPATH; ours.py refuses to start if it imported anything else.
        app = spec["app"].removeprefix("bench.servers.")
        head = [PY, "-P", "-m", "uvicorn", app, "--app-dir", str(SERVERS_DIR)]
        return [*head, *tail], worktree_env(WORKTREES[name])
    return [PY, "-m", "uvicorn", spec["app"], *tail], {}


class Server:
    def __init__(
        self, name: str, bun: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.spec = SPECS[name]
        self.port = free_port()
        self.log_path = RESULTS / f"server-{name}-{self.port}.log"
        extra_env: dict[str, str] = {}
        if "bun" in self.spec:
            cmd = [bun or "bun", "run", self.spec["bun"]]
        else:
            cmd, extra_env = uvicorn_command(name, self.port)
        if self.spec.get("cprofile") and "uvicorn" in cmd:
            # bench.profile --tool cprofile: the same uvicorn command line under cProfile
            # (-P: see the script's docstring; uvicorn still puts --app-dir, "" = the
            # working directory, on sys.path for the app)
            i = cmd.index("uvicorn")
            script = str(ROOT / "bench" / "_cprofile_uvicorn.py")
            head = [PY, "-P"]
            cmd = [*head, script, self.spec["cprofile"], *cmd[i + 1 :]]
        full_env = {
            **os.environ,
            "PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **extra_env,
            **(env or {}),
        }
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

    def orcs_file(self) -> str | None:
        """Where the server's ``fastapi_orcs_ws`` came from (printed by bench/servers/ours.py)."""
        self.logf.flush()
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "fastapi_orcs_ws imported from" in line:
                return line.rsplit(" ", 1)[-1]
        return None

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


def start_group(
    names: list[str], bun: str | None, notes: list[str], env: dict[str, str] | None = None
) -> list[Server]:
    """Start every named server; one that does not come up is left out with a note."""
    started = [Server(n, bun, env) for n in names]
    up = []
    for s in started:
        try:
            s.wait_ready()
            up.append(s)
            if s.name.startswith("ours"):
                ORCS_FILES[s.name] = s.orcs_file() or "not reported"
        except RuntimeError as exc:
            notes.append(f"{s.name}: did not start: {exc}")
            log(f"NOTE: {s.name} did not start: {exc}")
            s.stop()
    time.sleep(0.3)
    return up


COMMITS: dict[str, str] = {}
"""Server name -> the commit its worktree holds (``ours-before``, ``ours`` with --ours-at)."""
ORCS_FILES: dict[str, str] = {}
"""Where each ``ours*`` server imported ``fastapi_orcs_ws`` from, as the child reported it."""


def stop_group(servers: list[Server]) -> None:
    for s in servers:
        s.stop()


def rotate(items: list[Any], k: int) -> list[Any]:
    """Run k of an interleaved figure starts with a different server each time."""
    if not items:
        return items
    k %= len(items)
    return items[k:] + items[:k]


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
def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def client(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [PY, "-m", "bench.client", *args]
    load_before = loadavg()
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
    result: dict[str, Any] = json.loads(lines[-1])
    # 1/5/15-minute load averages when the run started and ended (the machine is shared:
    # the benchmark itself accounts for about 2 of it while it runs)
    result["load_start"] = load_before
    result["load_end"] = loadavg()
    # Work done per CPU-second the server process got: on a shared core a server that was
    # starved for part of the window keeps this figure while its rate drops.
    cpu = result.get("server_cpu_pct") or []
    rate = result.get("deliveries_per_s") or result.get("round_trips_per_s")
    if len(cpu) == 1 and cpu[0] >= 5 and rate and result.get("mode") != "fixed":
        result["per_server_cpu_s"] = round(rate * 100 / cpu[0], 1)
    return result


def argv(*parts: Any) -> list[str]:
    """Command-line arguments: lists are spliced in, everything else is ``str()``-ed."""
    out: list[str] = []
    for part in parts:
        out.extend(map(str, part) if isinstance(part, list) else [str(part)])
    return out


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
            "fanout_n": [1000],
            "fanout_s": 1.0,
            "warmup_s": 0.3,
            "fixed_n": 1000,
            "fixed_s": 1.0,
            "discard_s": 0.5,
            "echo_s": 1.5,
            "echo_warmup_s": 0.3,
            "idle_n": 600,
            "slow_n": 20,
            "slow_s": 2.5,
            "redis_n": 1000,
            "slow_servers": {"ours", "plain"},
            "settle_s": 0.8,
            "flood_cases": [("send", "websockets"), ("room", "websockets")],
            "flood_n": 20_000,
            "flood_s": 30.0,
            "relay_k": 3,
            "relay_s": 11.5,
            "relay_servers": {"ours", "ours-before", "plain"},
        }
    return {
        "runs": 3,
        "fanout_n": [100, 1000, 5000],
        "fanout_s": 3.0,
        "warmup_s": 1.0,
        "fixed_n": 1000,
        "fixed_s": 4.0,
        "discard_s": 1.0,
        "echo_s": 4.0,
        "echo_warmup_s": 0.5,
        "settle_s": 1.5,
        "idle_n": 5000,
        "slow_n": 20,
        "slow_s": 8.0,
        "redis_n": 1000,
        "slow_servers": set(SPECS),
        "flood_cases": [
            ("send", "raw"),
            ("room", "raw"),
            ("send", "websockets"),
            ("room", "websockets"),
        ],
        "flood_n": 20_000,
        "flood_s": 30.0,
        "relay_k": 12,
        "relay_s": 22.0,
        "relay_servers": set(SPECS),
    }


FIXED_DELIVERIES_PER_S = 10_000
IN_FLIGHT = 2_000  # deliveries in flight at the highest sustainable rate
MAX_K = 300_000
FLOOD_SIZE = 1000  # bytes of padding per tight-loop frame (~1 KB frames)
RELAY_SIZE = 8 * 1024 * 1024  # bytes per relayed payload
RELAY_READERS = 3
NO_FLOOD = {"bun": "no handler loop written for Bun's server"}
NO_RELAY = {"bun": "not written for Bun's server"}


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


def interleave(
    group: list[Server],
    runs: int,
    what: str,
    key: str,
    one: Any,
) -> dict[str, dict[str, Any]]:
    """``runs`` runs of ``one(server)`` for every server, run k for all before run k + 1."""
    got: dict[str, list[dict[str, Any]]] = {s.name: [] for s in group}
    for r in range(runs):
        for s in rotate(group, r):
            x = one(s)
            got[s.name].append(x)
            _progress(s.name, what, x, key)
    return {name: summarize(xs) for name, xs in got.items()}


def run_fanout(
    names: list[str], c: dict[str, Any], bun: str | None, res: dict[str, Any], notes: list[str]
) -> None:
    group = start_group(names, bun, notes)
    try:
        for s in group:
            res[s.name]["_probe"] = probe_extensions(s)
            # discarded: a fresh server runs slow for its first second
            client(
                argv("fanout", common([s]), "--n", 100, "--k", MAX_K, "--warmup", 0)
                + argv("--timeout", c["discard_s"]),
                c["discard_s"],
            )
        for n in c["fanout_n"]:
            out = interleave(
                group,
                c["runs"],
                f"fanout N={n}",
                "deliveries_per_s",
                lambda s, n=n: fanout_once(c, [s], n),
            )
            for name, m in out.items():
                res[name][f"fanout_{n}"] = m
        n = c["fixed_n"]
        rate = FIXED_DELIVERIES_PER_S / n
        k = max(2, int(rate * c["fixed_s"]))

        def fixed(s: Server) -> dict[str, Any]:
            return client(
                argv("fanout", common([s]), "--n", n, "--k", k, "--mode", "fixed", "--rate", rate)
                + argv("--warmup", 0, "--timeout", c["fixed_s"] + 10),
                c["fixed_s"] + 10,
            )

        out = interleave(
            group, c["runs"], f"fixed N={n} @{FIXED_DELIVERIES_PER_S}/s", "p99_ms", fixed
        )
        for name, m in out.items():
            res[name][f"fixed_{n}"] = m
    finally:
        stop_group(group)


def run_echo(
    names: list[str], c: dict[str, Any], bun: str | None, res: dict[str, Any], notes: list[str]
) -> None:
    group = start_group(names, bun, notes)

    def echo(s: Server) -> dict[str, Any]:
        return client(
            argv("echo", common([s]), "--clients", 100, "--duration", c["echo_s"])
            + argv("--warmup", c["echo_warmup_s"], "--timeout", c["echo_s"] + 10),
            c["echo_s"] + 10,
        )

    try:
        for name, m in interleave(group, c["runs"], "echo x100", "round_trips_per_s", echo).items():
            res[name]["echo"] = m
    finally:
        stop_group(group)


def fresh_runs(
    names: list[str],
    runs: int,
    what: str,
    key: str,
    one: Any,
    bun: str | None,
    notes: list[str],
) -> dict[str, dict[str, Any]]:
    """As :func:`interleave`, with a fresh server for every run (memory figures)."""
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(runs):
        for name in rotate(names, r):
            group = start_group([name], bun, notes)
            if not group:
                got[name].append({"error": "server did not start"})
                continue
            try:
                x = one(group[0])
            finally:
                stop_group(group)
            got[name].append(x)
            _progress(name, what, x, key)
    return {name: summarize(xs) for name, xs in got.items()}


def run_idle(
    names: list[str], c: dict[str, Any], bun: str | None, res: dict[str, Any], notes: list[str]
) -> None:
    def idle(s: Server) -> dict[str, Any]:
        return client(
            argv(
                "idle", common([s]), "--n", c["idle_n"], "--settle", c["settle_s"], "--timeout", 60
            ),
            60,
        )

    out = fresh_runs(names, c["runs"], f"idle x{c['idle_n']}", "kib_per_conn", idle, bun, notes)
    for name, m in out.items():
        res[name]["idle"] = m


def run_flood(
    names: list[str], c: dict[str, Any], bun: str | None, res: dict[str, Any], notes: list[str]
) -> None:
    for name in [n for n in names if n in NO_FLOOD]:
        log(f"NOTE: tight-loop case skipped for {name}: {NO_FLOOD[name]}")
        notes.append(f"flood: {name} skipped ({NO_FLOOD[name]})")
    group = start_group([n for n in names if n not in NO_FLOOD], bun, notes)
    try:
        for mode, reader in c["flood_cases"]:

            def flood(s: Server, mode: str = mode, reader: str = reader) -> dict[str, Any]:
                return client(
                    argv("flood", common([s]), "--mode", mode, "--reader", reader, "--readers", 3)
                    + argv("--k", c["flood_n"], "--size", FLOOD_SIZE, "--timeout", c["flood_s"]),
                    c["flood_s"],
                )

            what = f"flood {mode}/{reader}"
            for name, m in interleave(group, c["runs"], what, "delivered_min", flood).items():
                res[name][f"flood_{mode}_{reader}"] = m
    finally:
        stop_group(group)


def run_relay(
    names: list[str], c: dict[str, Any], bun: str | None, res: dict[str, Any], notes: list[str]
) -> None:
    chosen = []
    for name in names:
        if name in NO_RELAY:
            why = NO_RELAY[name]
        elif name not in c["relay_servers"]:
            why = "left out in quick mode (plain-orjson behaves as plain here)"
        else:
            chosen.append(name)
            continue
        log(f"NOTE: 8 MiB relay case skipped for {name}: {why}")
        notes.append(f"relay: {name} skipped ({why})")

    def relay(s: Server) -> dict[str, Any]:
        return client(
            argv("relay", common([s]), "--readers", RELAY_READERS, "--k", c["relay_k"])
            + argv("--size", RELAY_SIZE, "--timeout", c["relay_s"]),
            c["relay_s"],
        )

    out = fresh_runs(chosen, c["runs"], "relay 8 MiB", "rss_growth_mib", relay, bun, notes)
    for name, m in out.items():
        res[name]["relay"] = m


def run_slow(
    names: list[str], c: dict[str, Any], bun: str | None, res: dict[str, Any], notes: list[str]
) -> None:
    group = start_group([n for n in names if n in c["slow_servers"]], bun, notes)
    try:
        for stalled in (0, 1):

            def slow(s: Server, stalled: int = stalled) -> dict[str, Any]:
                half = c["slow_s"] / 2
                return client(
                    argv(
                        "fanout",
                        common([s]),
                        "--n",
                        c["slow_n"],
                        "--k",
                        MAX_K,
                        "--stalled",
                        stalled,
                    )
                    + argv("--window", window(c["slow_n"]), "--warmup", half, "--timeout", half),
                    c["slow_s"],
                )

            what = f"slow-reader stalled={stalled}"
            for name, m in interleave(group, c["runs"], what, "deliveries_per_s", slow).items():
                res[name][f"slow_{stalled}"] = m
    finally:
        stop_group(group)


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
        f"cores busy {r.get('core_busy_pct', '-')}, "
        f"load {(r.get('load_end') or ['-'])[0]}"
    )
    log(f"  {name:13} {what:28} {key}={r.get(key)}  ({extra})")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error") if runs else "no runs", "runs": runs}
    med: dict[str, Any] = {"runs": runs, "n_runs": len(ok)}
    for key, value in ok[0].items():
        if key.startswith("all_") and isinstance(value, bool):
            med[key] = all(r.get(key) for r in ok)
        elif isinstance(value, bool):
            med[key] = any(r.get(key) for r in ok)
        elif key == "close_codes":
            med[key] = sorted({code for r in ok for code in r.get(key) or []})
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
    load = m.get("load_end")
    return f"c{fmt(cl)}% s{s}%{k}{flag}" + (f" load {load[0]:.1f}" if load else "")


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
    ms += [
        (f"fan-out {n:,} per server CPU-s", f"fanout_{n}", "per_server_cpu_s", True)
        for n in c["fanout_n"]
    ]
    ms += [(f"fan-out {n:,} p99 ms", f"fanout_{n}", "p99_ms", False) for n in c["fanout_n"]]
    ms += [
        (f"fixed-rate {c['fixed_n']:,} p99 ms", f"fixed_{c['fixed_n']}", "p99_ms", False),
        ("echo round trips/s", "echo", "round_trips_per_s", True),
        ("echo per server CPU-s", "echo", "per_server_cpu_s", True),
        ("echo p99 ms", "echo", "p99_ms", False),
        ("idle KiB/conn", "idle", "kib_per_conn", False),
    ]
    ms += [
        (f"tight loop {mode}/{reader} s", f"flood_{mode}_{reader}", "elapsed_s", False)
        for mode, reader in c["flood_cases"]
    ]
    ms += [("relay 8 MiB: server RSS peak growth MiB", "relay", "rss_growth_mib", False)]
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
                rows.append([s, f"{n:,}", *_fan_cells(m, True)])
    out.append(
        table(
            f"Fan-out, highest sustainable rate "
            f"({IN_FLIGHT:,} deliveries / min 4 publishes in flight), median",
            ["server", "N", "deliveries/s", "per server CPU-s", "p50 ms", "p99 ms", "CPU"],
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
                    fmt(m.get("per_server_cpu_s")),
                    fmt(m.get("p50_ms"), 2),
                    fmt(m.get("p99_ms"), 2),
                    cpu_note(m),
                ]
            )
        elif m:
            rows.append([s, "ERROR " + str(m["error"])[:60], "", "", "", ""])
    out.append(
        table(
            "Echo, 100 clients, median",
            ["server", "round trips/s", "per server CPU-s", "p50 ms", "p99 ms", "CPU"],
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
            f"{c['slow_s']:g} s, without / with one member that stopped reading",
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
    out.append(flood_table(res, c, present))
    out.append(relay_table(res, c, present))
    out.append(ratio_table(res, c, present))
    return "\n".join(out)


def flood_table(res: dict[str, Any], c: dict[str, Any], present: list[str]) -> str:
    rows = []
    for mode, reader in c["flood_cases"]:
        for s in present:
            m = res[s].get(f"flood_{mode}_{reader}")
            if not m:
                continue
            if "error" in m:
                rows.append(
                    [f"{mode}/{reader}", s, "ERROR " + str(m["error"])[:60], "", "", "", ""]
                )
                continue
            runs = [r for r in m["runs"] if "error" not in r]
            lost = sum(1 for r in runs if not r.get("all_delivered"))
            closed = sum(1 for r in runs if r.get("closed_4429"))
            rows.append(
                [
                    f"{mode}/{reader}",
                    s,
                    f"{min(r['delivered_min'] for r in runs):,} / {m['frames']:,}",
                    f"{lost} of {len(runs)}",
                    f"{closed} of {len(runs)}",
                    fmt(m.get("elapsed_s"), 2),
                    cpu_note(m),
                ]
            )
    return table(
        f"Tight loop: a handler sends {c['flood_n']:,} frames of ~{FLOOD_SIZE} B; send = "
        "`await ws.send` to its own reader, room = broadcast to 3 readers; raw = the bench's "
        "reader, websockets = the websockets client (max_queue=4); time = median",
        [
            "case",
            "server",
            "fewest delivered (any run)",
            "runs short",
            "runs with 4429",
            "time s",
            "CPU client/server",
        ],
        rows,
    )


def relay_table(res: dict[str, Any], c: dict[str, Any], present: list[str]) -> str:
    rows = []
    for s in present:
        m = res[s].get("relay")
        if not m:
            continue
        if "error" in m:
            rows.append([s, "ERROR " + str(m["error"])[:60], "", "", "", "", ""])
            continue
        runs = [r for r in m["runs"] if "error" not in r]
        codes = sorted(
            {
                str(r["stalled_close_code"])
                if r.get("stalled_close_code")
                else ("dropped, no close frame" if r.get("stalled_dropped") else "not closed")
                for r in runs
            }
        )
        rows.append(
            [
                s,
                f"{min(r['delivered_min'] for r in runs)} / {m['relays']}",
                " / ".join(codes),
                fmt(m.get("rss_base_mib"), 1),
                fmt(m.get("rss_peak_mib"), 1),
                fmt(m.get("rss_growth_mib"), 1),
                fmt(m.get("elapsed_s"), 1) + (" (deadline)" if m.get("timed_out") else ""),
            ]
        )
    return table(
        f"8 MiB relay: {RELAY_READERS} readers and 1 member that never reads; the sender "
        f"publishes {c['relay_k']} payloads of {RELAY_SIZE // 2**20} MiB, the next when every "
        f"reader has the last (deadline {c['relay_s']:.0f} s); fresh server per run, median",
        [
            "server",
            "delivered to the readers (fewest)",
            "stalled member",
            "RSS before MiB",
            "RSS peak MiB",
            "peak growth MiB",
            "time s",
        ],
        rows,
    )


RATIO_BASES = ["ours", "ours-before"]
RATIO_PEERS = ["plain", "plain-orjson"]


def ratio_table(res: dict[str, Any], c: dict[str, Any], present: list[str]) -> str:
    """ours and ours-before against plain and plain-orjson, ours against ours-before, and
    ours against every other server, all from the same run."""
    pairs = [(b, p) for b in RATIO_BASES for p in RATIO_PEERS if b in present and p in present]
    if "ours" in present and "ours-before" in present:
        pairs.append(("ours", "ours-before"))
    others = [p for p in present if p not in RATIO_BASES + RATIO_PEERS]
    pairs += [("ours", p) for p in others if "ours" in present]
    if not pairs:
        return "\nRatios: nothing to compare"
    rows = []
    for label, key, field, _hib in metrics(c):
        cells = []
        for b, p in pairs:
            mine, theirs = get(res, b, key, field), get(res, p, key, field)
            cells.append(fmt(mine / theirs, 2) + "x" if mine is not None and theirs else "-")
        rows.append([label, *cells])
    return table(
        "Ratios (same run; for latency, memory and time lower is better)",
        ["metric", *(f"{b} / {p}" for b, p in pairs)],
        rows,
    )


def _fan_cells(m: dict[str, Any], per_cpu: bool = False) -> list[str]:
    if "error" in m:
        return ["ERROR " + str(m["error"])[:60], "", "", "", ""][: 5 if per_cpu else 4]
    rate = fmt(m.get("deliveries_per_s"))
    if m.get("mode") == "fixed" and m.get("expected") and m["deliveries"] < m["expected"] * 0.999:
        rate += f" ({m['deliveries']:,.0f}/{m['expected']:,.0f} delivered)"
    cells = [rate, fmt(m.get("per_server_cpu_s"))] if per_cpu else [rate]
    return [*cells, fmt(m.get("p50_ms"), 2), fmt(m.get("p99_ms"), 2), cpu_note(m)]


def targets(res: dict[str, Any], c: dict[str, Any]) -> str:
    if "ours" not in res:
        return "\nTargets: ours not measured."
    lines = ["\nTargets (issue 9: the fast path stays fast; items 4 and 5)"]

    def check(label: str, value: float | None, ok: bool | None, digits: int = 2) -> None:
        mark = "-" if ok is None else ("PASS" if ok else "MISS")
        shown = fmt(value, digits) if value is not None else "n/a"
        lines.append(f"  [{mark:4}] {label}: {shown}")

    def ratio(key: str, field: str, peer: str) -> float | None:
        a, b = get(res, "ours", key, field), get(res, peer, key, field)
        return a / b if a is not None and b else None

    for n in [n for n in c["fanout_n"] if n >= 1000]:
        r = ratio(f"fanout_{n}", "deliveries_per_s", "plain")
        check(f"fan-out {n:,} vs plain (>= 1.0x)", r, None if r is None else r >= 1.0)
    r = ratio("echo", "round_trips_per_s", "plain-orjson")
    check("echo vs plain-orjson (>= 0.9x)", r, None if r is None else r >= 0.9)
    r = ratio("idle", "kib_per_conn", "plain")
    check("idle memory vs plain (<= 1.1x)", r, None if r is None else r <= 1.1)
    r = ratio(f"fixed_{c['fixed_n']}", "p99_ms", "plain")
    check(f"fixed-rate {c['fixed_n']:,} p99 vs plain (<= 1.1x)", r, None if r is None else r <= 1.1)
    for mode, reader in c["flood_cases"]:
        m = res["ours"].get(f"flood_{mode}_{reader}")
        if not m or "error" in m:
            check(f"tight loop {mode}/{reader}: every frame, no 4429", None, None)
            continue
        runs = [r for r in m["runs"] if "error" not in r]
        fewest = min(r["delivered_min"] for r in runs)
        ok = all(r["all_delivered"] and not r["closed_4429"] for r in runs)
        check(f"tight loop {mode}/{reader}: every frame in every run, no 4429", fewest, ok, 0)
    m = res["ours"].get("relay")
    if m and "error" not in m:
        runs = [r for r in m["runs"] if "error" not in r]
        ok = all(r["all_delivered"] and r.get("stalled_dropped") for r in runs)
        check(
            "8 MiB relay: readers get every payload, the stalled member is dropped "
            "(4429, or closed without a close frame when its socket is full)",
            None,
            ok,
        )
        before = get(res, "ours-before", "relay", "rss_growth_mib")
        check(
            "8 MiB relay: server RSS peak growth, MiB (ours-before: "
            + (fmt(before, 1) if before is not None else "n/a")
            + ")",
            m.get("rss_growth_mib"),
            None,
            1,
        )
    lines.append("Earlier targets (issue 6)")
    for n in [n for n in c["fanout_n"] if n >= 1000]:
        r = ratio(f"fanout_{n}", "deliveries_per_s", "socketio")
        check(f"fan-out {n:,} vs socketio (>= 6x)", r, None if r is None else r >= 6.0)
    r = ratio("echo", "p99_ms", "plain")
    check("echo p99 vs plain (<= 1.3x)", r, None if r is None else r <= 1.3)
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
    p.add_argument(
        "--quick",
        action="store_true",
        help="one run each, N=1,000, ours / ours-before / plain / plain-orjson; under 3 minutes",
    )
    p.add_argument(
        "--only",
        default="",
        help="comma-separated: " + ",".join(ALL_WORKLOADS) + " (default: all; --quick: no redis)",
    )
    p.add_argument(
        "--servers",
        default="",
        help="comma-separated: "
        + ",".join(ALL_SERVERS)
        + " (default: all; --quick: "
        + ",".join(QUICK_SERVERS)
        + ")",
    )
    p.add_argument(
        "--before",
        default=BEFORE_COMMIT,
        help=f"the commit ours-before imports the library from (default {BEFORE_COMMIT}; "
        f"a worktree in {BEFORE_DIR})",
    )
    p.add_argument(
        "--ours-at",
        default="",
        help="import ours from this commit (a worktree in "
        f"{OURS_AT_DIR}) instead of the working tree; 'snapshot': from a copy of the working "
        f"tree's package taken at the start ({OURS_SNAPSHOT_DIR}), so that edits made by others "
        "during the run do not change it",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=0,
        help="interleaved runs per server and workload, the median reported (default 3; "
        "--quick 1); more runs average out a machine whose speed drifts during the suite",
    )
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    p.add_argument("--fanout-n", default="", help="override the receiver counts, e.g. 1000,5000")
    p.add_argument(
        "--no-chart", action="store_true", help="do not overwrite bench/results/fanout.png"
    )
    a = p.parse_args()
    workloads = [w for w in a.only.split(",") if w]
    if not workloads:
        workloads = [w for w in ALL_WORKLOADS if not (a.quick and w == "redis")]
    servers = [s for s in a.servers.split(",") if s]
    if not servers:
        servers = list(QUICK_SERVERS if a.quick else ALL_SERVERS)
        if a.quick:
            log(
                f"NOTE: --quick runs {', '.join(QUICK_SERVERS)} only, N = 1,000 only, the "
                "slow-reader case for ours and plain only, the 8 MiB relay without "
                "plain-orjson, the tight loop with the websockets reader only, no redis"
            )
    for w in workloads:
        if w not in ALL_WORKLOADS:
            p.error(f"unknown workload {w}")
    for s in servers:
        if s not in ALL_SERVERS and s not in SPECS:
            p.error(f"unknown server {s}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    c = cfg(a.quick)
    if a.runs:
        c["runs"] = a.runs
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
    wanted = {"ours-before": (BEFORE_DIR, a.before)}
    if a.ours_at == "snapshot" and "ours" in servers:
        WORKTREES["ours"] = OURS_SNAPSHOT_DIR
        COMMITS["ours"] = snapshot_tree(OURS_SNAPSHOT_DIR)
        log(f"ours: {COMMITS['ours']}")
    elif a.ours_at:
        wanted["ours"] = (OURS_AT_DIR, a.ours_at)
    for name, (path, commit) in wanted.items():
        if name not in servers:
            continue
        why = ensure_worktree(path, commit)
        if why:
            notes.append(f"{name}: skipped, {why}")
            log(f"NOTE: {name} skipped: {why}")
            servers.remove(name)
        else:
            WORKTREES[name] = path
            COMMITS[name] = subprocess.run(
                ["git", "-C", str(path), "log", "-1", "--format=%h %s"],
                capture_output=True,
                text=True,
            ).stdout.strip()
    for name in [s for s in servers if "app" in SPECS[s]]:
        # a server whose module does not import is left out with a note
        module = SPECS[name]["app"].split(":")[0]
        cmd = [PY, "-c", f"import {module}"]
        env = None
        if name in WORKTREES:
            module = module.removeprefix("bench.servers.")
            cmd = [
                PY,
                "-P",
                "-c",
                f"import sys; sys.path.insert(0, {str(SERVERS_DIR)!r}); import {module}",
            ]
            env = {**os.environ, **worktree_env(WORKTREES[name])}
        chk = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if chk.returncode != 0:
            err = (chk.stderr.strip().splitlines() or ["?"])[-1]
            notes.append(f"{name}: skipped, {module} does not import ({err})")
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
        f"mode: {'quick' if a.quick else 'full'} (median of {c['runs']}); "
        f"servers {servers}; workloads {workloads}"
    )

    res: dict[str, Any] = {s: {} for s in servers}
    t0 = time.monotonic()
    meta["load_start"] = loadavg()
    log(f"load average at the start: {meta['load_start']}")
    runners = {
        "fanout": run_fanout,
        "echo": run_echo,
        "idle": run_idle,
        "flood": run_flood,
        "relay": run_relay,
        "slow": run_slow,
    }
    for w in workloads:
        t_w = time.monotonic()
        try:
            if w == "redis":
                if "ours" in servers:
                    run_redis("ours", c, bun, res["ours"], notes)
            else:
                runners[w](servers, c, bun, res, notes)
        except Exception as exc:  # one workload failing must not lose the others' results
            notes.append(f"{w}: {type(exc).__name__}: {exc}")
            log(f"  {w}: {type(exc).__name__}: {exc}")
        log(f"  -- {w}: {time.monotonic() - t_w:.0f} s, load average {loadavg()}")
        Path(a.out).with_suffix(".partial.json").write_text(json.dumps(res, indent=1, default=str))
    meta["load_end"] = loadavg()
    meta["orcs_files"] = dict(ORCS_FILES)
    meta["commits"] = dict(COMMITS)
    meta["commits"]["working tree HEAD"] = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
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
    for name, where in ORCS_FILES.items():
        at = f" (commit {COMMITS[name]})" if name in COMMITS else " (the working tree)"
        text += f"\n{name}: fastapi_orcs_ws imported from {where}{at}"
    text += (
        f"\nload average (1/5/15 min): {meta['load_start']} at the start, "
        f"{meta['load_end']} at the end"
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
    path = None
    if not a.no_chart:
        try:
            path = chart(res, c, servers, meta)
        except ImportError as exc:  # the bench extra without matplotlib
            log(f"NOTE: no chart ({exc}); install the bench extra for it")
    log(f"wrote {a.out}" + (f" and {path}" if path else ""))


if __name__ == "__main__":
    main()
