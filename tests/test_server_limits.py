"""Attacks below ASGI against the set-up ``fastapi_orcs_ws.run()`` chooses (issue 12, item 7).

The server is a real ``run(app)`` in a subprocess on 127.0.0.1; the attackers are those of
``python -m bench.attacks`` (``bench/attacks/probes.py``), bounded in count and time. What
the set-up defends is asserted, with a normal client served afterwards; what no uvicorn setting
defends is an ``xfail(strict=True)`` naming the upstream limitation, so the test fails (and
must be turned into a plain test) the day uvicorn fixes it. docs/security.md, "Deployment",
gives the measured table for every set-up and the reverse-proxy settings that close the rest.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from bench.attacks import probes

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _served(port: int, within: float) -> dict[str, Any]:
    """Wait (bounded) until a normal client is served; the last answer if it never is."""
    result: dict[str, Any] = {}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = anyio.run(probes.normal_client, port, 2.0)
        if result["ws"] == "served" and result["http"] == 200:
            return result
        time.sleep(0.05)  # between polls while the subprocess starts, not a synchronisation
    return result


@contextmanager
def _run_server(**overrides: Any) -> Iterator[int]:
    """``run(app, **overrides)`` (``bench/attacks/serve.py``) in a subprocess; yields its port."""
    port = _free_port()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.attacks.serve", str(port), json.dumps(overrides)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            ready = _served(port, within=30)
            if ready.get("ws") != "served":
                log.seek(0)
                tail = log.read().decode(errors="replace")[-600:]
                raise RuntimeError(f"run() did not serve within 30 s: {ready}; {tail}")
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """The example target app under ``run()`` with nothing but the port chosen by the test."""
    with _run_server() as served:
        yield served


async def assert_normal_client_served(port: int) -> None:
    result = await probes.normal_client(port, timeout=5.0)
    assert result["ws"] == "served", result
    assert result["http"] == 200, result


# -- what run() defends ------------------------------------------------------------------------


async def test_a_head_over_16_kib_arriving_in_pieces_is_answered_400_and_let_go(port: int) -> None:
    # A 17 KiB header line in 1 KiB pieces, as over a network: h11 refuses a head it is still
    # reading once it passes h11_max_incomplete_event_size (16 KiB), and says so.
    result = await probes.oversized_head(port, "header-line-17k-dripped", hold=10.0)
    assert result["status"] == 400, result
    assert not result["held"], result
    await assert_normal_client_served(port)


async def test_huge_heads_are_refused_without_being_kept(port: int) -> None:
    # 20 handshakes with a 1 MiB header each. With httptools (uvicorn's own default) each is
    # buffered whole and never answered: 100 of them held +108 MB until the client left.
    head = probes.handshake(extra=f"X-Pad: {'a' * 2**20}\r\n", port=port)
    with anyio.fail_after(60):
        results = [await probes.send_head(port, head) for _ in range(20)]
    assert [r["status"] for r in results] == [400] * 20, results
    assert not any(r["held"] for r in results), results
    await assert_normal_client_served(port)


def test_limit_concurrency_counts_websockets_but_refuses_only_http() -> None:
    # What uvicorn's limit_concurrency does with WebSockets, as docs/security.md states it:
    # every open connection counts, but only plain HTTP requests are refused (503).
    with _run_server(limit_concurrency=5) as port:
        result = anyio.run(_concurrency, port, 5)
    assert result == {"opened": 8, "refused": 0, "http_meanwhile": 503}, result


async def _concurrency(port: int, limit: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}{probes.WS_PATH}"
    opened = refused = 0
    async with AsyncExitStack() as stack:
        for _ in range(limit + 3):
            try:
                await stack.enter_async_context(connect(url, compression=None, open_timeout=5))
                opened += 1
            except Exception:
                refused += 1
        http = await probes.http_get(port, "/health")
    return {"opened": opened, "refused": refused, "http_meanwhile": http}


# -- what no uvicorn setting defends (xfail until upstream fixes it) -------------------------


SANSIO_431 = (
    "uvicorn 0.54 websockets-sansio: websockets' parser refuses a header line over 8 KiB, over "
    "128 headers or a request line over 8 KiB with a 431/414 that uvicorn never writes (it "
    "checks parser_exc, not handshake_exc): no answer, the socket held until the client leaves"
)


@pytest.mark.xfail(strict=True, reason=SANSIO_431)
@pytest.mark.parametrize(
    "kind", ["header-line-9k", "headers-200", "request-line-9k", "header-line-9k-dripped"]
)
async def test_a_head_the_websocket_parser_refuses_is_answered_and_let_go(
    port: int, kind: str
) -> None:
    # Under 16 KiB, so h11 passes it on; websockets' parser then refuses it (a line over 8 KiB,
    # over 128 headers), whether it arrived at once or in pieces.
    result = await probes.oversized_head(port, kind, hold=3.0)
    assert result["status"] is not None and 400 <= result["status"] < 500, result
    assert not result["held"], result
    await assert_normal_client_served(port)


@pytest.mark.xfail(
    strict=True,
    reason="uvicorn 0.54 has no timeout for reading a request head: timeout_keep_alive "
    "starts only after a response, and limit_concurrency refuses HTTP, not held sockets",
)
async def test_half_sent_handshakes_are_let_go_within_15_s(port: int) -> None:
    result = await probes.half_open(port, count=50, hold=15.0, during=lambda: _during(port))
    assert result["during"]["ws"] == "served", result
    assert result["held"] == 0, result


async def _during(port: int) -> dict[str, Any]:
    return await probes.normal_client(port, timeout=5.0)


@pytest.mark.xfail(
    strict=True,
    reason="uvicorn 0.54 websockets-sansio writes a pong for every ping without backpressure "
    "(handle_ping calls transport.write and keeps reading): a peer that never reads grows "
    "the server's write buffer as fast as it sends",
)
async def test_a_client_that_pings_and_never_reads_is_stopped(port: int) -> None:
    # Bounded: at most 32 MiB of pings, 60 s. A defended server stops reading from this peer
    # (the send stalls for 2 s) or closes it before taking them all.
    result = await probes.ping_push(port, limit=32 * 2**20, stall=2.0, deadline=60.0)
    assert result["outcome"] in {"stalled", "closed"}, result
    await assert_normal_client_served(port)
