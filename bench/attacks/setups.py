"""The server set-ups a user could choose, each as the command that starts it.

uvicorn set-ups go through ``fastapi_orcs_ws.run()`` (``bench/attacks/serve.py``) with
overrides, the way a user passes ``run(app, **kwargs)``. hypercorn and granian serve the same
app (``bench/attacks/target.py``) with the closest equivalents of our settings that they have.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SetUp:
    name: str
    server: str
    """``uvicorn``, ``hypercorn`` or ``granian``."""
    options: dict[str, Any] = field(default_factory=dict)
    """uvicorn: ``run()`` keyword overrides; hypercorn: config keys; granian: CLI flags."""
    note: str = ""

    def command(self, port: int, idle_timeout: float, max_size: int, scratch: Path) -> list[str]:
        """The argv that serves the target on ``127.0.0.1:port``."""
        if self.server == "uvicorn":
            options = json.dumps(self.options)
            return [sys.executable, "-m", "bench.attacks.serve", str(port), options]
        if self.server == "hypercorn":
            # The nearest to our settings: pings at half the idle timeout (hypercorn has no pong
            # timeout), the same message size limit.
            config = {
                "websocket_ping_interval": idle_timeout / 2,
                "websocket_max_message_size": max_size,
                **self.options,
            }
            path = scratch / f"hypercorn-{self.name}.toml"
            path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
            return [
                _tool("hypercorn"), "bench.attacks.target:app", "--bind", f"127.0.0.1:{port}",
                "--log-level", "warning", "--config", str(path),
            ]  # fmt: skip
        if self.server == "granian":
            return [
                _tool("granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--log-level", "warning", "--no-access-log",
                *(f"--{k}={v}" for k, v in self.options.items()),
                "bench.attacks.target:app",
            ]  # fmt: skip
        raise ValueError(f"unknown server {self.server!r}")

    def describe(self) -> str:
        if self.server == "uvicorn":
            opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
            return f"run(app{', ' + opts if opts else ''})"
        if self.server == "hypercorn":
            opts = " ".join(f"{k}={v}" for k, v in self.options.items())
            return f"hypercorn {opts}".strip()
        return "granian --interface asgi " + " ".join(f"--{k}={v}" for k, v in self.options.items())


def _tool(name: str) -> str:
    """The console script next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: pip install -e '.[bench]'")
    return found


SETUPS: list[SetUp] = [
    SetUp("run", "uvicorn", {}, "what run() chooses: h11 (16 KiB head limit) + websockets-sansio"),
    SetUp(
        "uvicorn-httptools",
        "uvicorn",
        {"http": "httptools"},
        "httptools (uvicorn's auto choice, and run()'s before this change)",
    ),
    SetUp(
        "uvicorn-h11-8k",
        "uvicorn",
        {"h11_max_incomplete_event_size": 8192},
        "h11 with an 8 KiB head limit",
    ),
    SetUp(
        "uvicorn-keepalive-1",
        "uvicorn",
        {"timeout_keep_alive": 1},
        "keep-alive timeout 1 s (it only runs after a response)",
    ),
    SetUp("uvicorn-limit-100", "uvicorn", {"limit_concurrency": 100}, "limit_concurrency=100"),
    SetUp("uvicorn-wsproto", "uvicorn", {"ws": "wsproto"}, "--ws wsproto"),
    SetUp("uvicorn-websockets", "uvicorn", {"ws": "websockets"}, "--ws websockets (deprecated)"),
    SetUp("hypercorn", "hypercorn", {}, "hypercorn 0.18 defaults (asyncio worker)"),
    SetUp("hypercorn-read-10", "hypercorn", {"read_timeout": 10}, "hypercorn, read_timeout=10"),
    SetUp("granian", "granian", {}, "granian defaults (header read timeout 30 s)"),
    SetUp(
        "granian-header-5s",
        "granian",
        {"http1-header-read-timeout": 5000},
        "granian --http1-header-read-timeout 5000",
    ),
]

BY_NAME = {s.name: s for s in SETUPS}
