"""Shared by the Redis tests: a private redis-server on a free port, polling helpers, and
real uvicorn nodes, worker processes and WebSocket peers for the multi-process tests.

The ``redis_server`` fixture (tests/conftest.py) runs one for a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, never the shared 6379; restartable on its port."""

    def __init__(self, workdir: Path) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float = 5.0,
    interval: float = 0.05,
    what: str = "condition",
) -> float:
    """Poll ``check`` until true; return the seconds it took, fail after ``within`` seconds."""
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"{what} not reached within {within} s")
        await anyio.sleep(interval)


# -- real uvicorn nodes and worker processes ---------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
}


class Process:
    """A subprocess of this repository's Python whose output goes to ``{name}.log``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        """SIGKILL: the process gets no chance to clean anything up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, and wait for the process to exit; returns its exit code."""
        self.proc.terminate()
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class Node(Process):
    """``uvicorn APP`` on 127.0.0.1, sharing ``backend_url``; ``port`` to reuse an address."""

    def __init__(
        self,
        name: str,
        app: str,
        backend_url: str,
        workdir: Path,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        config = workdir / "log.json"
        config.write_text(json.dumps(LOG_CONFIG))
        argv = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__(
            name,
            [*argv, "--log-config", str(config)],
            {"WS_BACKEND_URL": backend_url},
            workdir,
        )

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST")
        with urllib.request.urlopen(request, timeout=60) as resp:
            return json.loads(resp.read())

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = await anyio.to_thread.run_sync(self.get, "/stats")
        return data


def start_nodes(nodes: list[Node], timeout: float = 30.0) -> None:
    for node in nodes:
        wait_port(node.port, timeout=timeout)


class Peer:
    """A WebSocket client that records every frame it receives."""

    def __init__(self, ws: ClientConnection, node: Node) -> None:
        self.ws = ws
        self.node = node
        self.frames: list[dict[str, Any]] = []
        self.id = ""

    async def read(self) -> None:
        with suppress(ConnectionClosed):
            async for text in self.ws:
                self.frames.append(json.loads(text))

    async def send(self, event: str, payload: Any = None, **extra: Any) -> None:
        await self.ws.send(json.dumps({"event": event, "payload": payload, **extra}))

    def events(self, name: str) -> list[Any]:
        return [f["payload"] for f in self.frames if f["event"] == name]

    def count(self, name: str, **match: Any) -> int:
        return sum(
            1
            for p in self.events(name)
            if isinstance(p, dict) and all(p.get(k) == v for k, v in match.items())
        )

    async def request(self, event: str, payload: Any, msg_id: int) -> Any:
        """Send an event with an ``id`` and wait for its ``ack``."""
        await self.send(event, payload, id=msg_id)

        def acked() -> bool:
            return any(f["event"] == "ack" and f.get("id") == msg_id for f in self.frames)

        await eventually(acked, what=f"ack {msg_id} of {event}")
        return next(f["payload"] for f in self.frames if f["event"] == "ack" and f["id"] == msg_id)


@asynccontextmanager
async def peers_on(nodes: list[Node], path: str, welcome_key: str) -> AsyncIterator[list[Peer]]:
    """One connected client per entry of ``nodes``, each welcomed, in that order.

    A peer's id is ``welcome[welcome_key]`` of its first ``welcome`` frame.
    """
    readers: list[asyncio.Task[None]] = []
    async with AsyncExitStack() as stack:
        peers: list[Peer] = []
        try:
            for node in nodes:
                ws = await stack.enter_async_context(
                    connect(node.ws_url(path), compression=None, open_timeout=10, close_timeout=2)
                )
                peer = Peer(ws, node)
                readers.append(asyncio.create_task(peer.read()))
                await eventually(lambda p=peer: bool(p.events("welcome")), what="welcome")  # type: ignore[misc]
                peer.id = peer.events("welcome")[0][welcome_key]
                peers.append(peer)
            yield peers
        finally:
            for task in readers:
                task.cancel()
            if readers:
                await asyncio.wait(readers, timeout=5)


async def redis_call(port: int, *command: str) -> Any:
    """One command on the test's redis-server, from a client of its own."""
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()
