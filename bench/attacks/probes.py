"""The attackers and the probes, on raw sockets, bounded in count and time.

Every function takes the server's address (127.0.0.1 only: anything else is refused) and
returns a plain dict of what it saw. ``tests/test_server_limits.py`` runs the same attackers
against a real server in the test suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from base64 import b64encode
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
KEY = b64encode(b"0123456789abcdef").decode()
WS_PATH = "/ws"

# A frame from a client must be masked (RFC 6455 5.3); the all-zero key is legal and leaves
# the payload readable in captures. Control frames carry at most 125 bytes (5.5).
PING_PAYLOAD = b"p" * 125
PING_FRAME = b"\x89" + bytes([0x80 | len(PING_PAYLOAD)]) + b"\x00\x00\x00\x00" + PING_PAYLOAD


def _loopback(host: str) -> None:
    if host != HOST:
        raise ValueError(f"attacks run against {HOST} only, not {host!r}")


def handshake(path: str = WS_PATH, extra: str = "", host: str = HOST, port: int = 0) -> bytes:
    """An RFC 6455 opening handshake; ``extra`` is inserted as header lines (each ending CRLF)."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


HEADS: dict[str, Callable[[int], bytes]] = {
    # One header line of 9 KiB: over the 8 KiB line limit of websockets' HTTP parser.
    "header-line-9k": lambda port: handshake(extra=f"X-Pad: {'a' * 9 * 1024}\r\n", port=port),
    # 200 short headers: over the 128-header limit of websockets' HTTP parser.
    "headers-200": lambda port: handshake(
        extra="".join(f"X-H{i}: v\r\n" for i in range(200)), port=port
    ),
    # One header line of 17 KiB: over h11's 16 KiB limit for a head still being read.
    "header-line-17k": lambda port: handshake(extra=f"X-Pad: {'a' * 17 * 1024}\r\n", port=port),
    # A 9 KiB request line, as a long ?token= makes.
    "request-line-9k": lambda port: handshake(path=f"{WS_PATH}?token={'t' * 9 * 1024}", port=port),
}


async def connect_raw(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), 10)
    except BaseException:
        sock.close()
        raise
    return sock


async def watch(sock: socket.socket, seconds: float, started: float) -> dict[str, Any]:
    """Read for ``seconds``: the status line (if any) and when the server let the socket go."""
    loop = asyncio.get_running_loop()
    received = b""
    status: int | None = None
    answered_after: float | None = None
    closed_after: float | None = None
    deadline = started + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
        except TimeoutError:
            break
        except OSError:  # reset by the server: it let go
            closed_after = time.monotonic() - started
            break
        if not chunk:
            closed_after = time.monotonic() - started
            break
        if status is None:
            received += chunk
            if b"\r\n" in received:
                answered_after = time.monotonic() - started
                line = received.split(b"\r\n", 1)[0].split()
                status = int(line[1]) if len(line) > 1 and line[1].isdigit() else -1
    return {
        "status": status,
        "answered_after_s": _round(answered_after),
        "closed_after_s": _round(closed_after),
        "held": closed_after is None,
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- attack (a): oversized handshakes ------------------------------------------------------------


async def send_head(port: int, head: bytes, hold: float = 5.0, host: str = HOST) -> dict[str, Any]:
    """Send ``head`` on a fresh socket and :func:`watch` it for ``hold`` seconds."""
    _loopback(host)
    loop = asyncio.get_running_loop()
    sock = await connect_raw(port)
    started = time.monotonic()
    try:
        # Reset mid-send means the server answered and closed: the watch reads the answer.
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(loop.sock_sendall(sock, head), hold)
        return await watch(sock, hold, started)
    finally:
        sock.close()


DRIPPED = {
    "header-line-9k-dripped": "header-line-9k",
    "header-line-17k-dripped": "header-line-17k",
}
"""Kinds sent in 1 KiB pieces 20 ms apart, as a head arrives over a real network (in several
reads) rather than in one write on loopback."""


async def oversized_head(
    port: int, kind: str, hold: float = 15.0, host: str = HOST
) -> dict[str, Any]:
    """Send one of :data:`HEADS` (or :data:`DRIPPED`) and watch the socket for ``hold`` seconds."""
    _loopback(host)
    loop = asyncio.get_running_loop()
    sock = await connect_raw(port)
    try:
        started = time.monotonic()
        if kind in DRIPPED:
            data = HEADS[DRIPPED[kind]](port)
            for i in range(0, len(data), 1024):
                await loop.sock_sendall(sock, data[i : i + 1024])
                await asyncio.sleep(0.02)
        else:
            await loop.sock_sendall(sock, HEADS[kind](port))
        return {"kind": kind, "hold_s": hold, **await watch(sock, hold, started)}
    except OSError as exc:  # reset while sending: the server refused the head
        return {"kind": kind, "hold_s": hold, "status": None, "answered_after_s": None,
                "closed_after_s": round(time.monotonic() - started, 2), "held": False,
                "error": type(exc).__name__}  # fmt: skip
    finally:
        sock.close()


async def oversized_heads(port: int, hold: float = 15.0, host: str = HOST) -> dict[str, Any]:
    """Every kind of :data:`HEADS` at once, each on its own socket."""
    kinds = [k for k in HEADS if k != "header-line-17k"] + list(DRIPPED)
    results = await asyncio.gather(*(oversized_head(port, kind, hold, host) for kind in kinds))
    return {r["kind"]: r for r in results}


async def big_heads(
    port: int,
    server_pid: int,
    count: int = 100,
    size: int = 2**20,
    hold: float = 5.0,
    host: str = HOST,
) -> dict[str, Any]:
    """``count`` handshakes each with a ``size``-byte header, then silence: what the server keeps.

    Reports the server's RSS growth while they are open and how many it still holds after
    ``hold`` s.
    """
    _loopback(host)
    loop = asyncio.get_running_loop()
    head = handshake(extra=f"X-Pad: {'a' * size}\r\n", port=port)
    rss_start = process_rss(server_pid)
    socks: list[socket.socket] = []
    started = time.monotonic()

    async def one() -> None:
        sock = await connect_raw(port)
        socks.append(sock)
        with contextlib.suppress(OSError, TimeoutError):  # refused mid-send: counted below
            await asyncio.wait_for(loop.sock_sendall(sock, head), 5)

    try:
        await asyncio.gather(*(one() for _ in range(count)))
        results = await asyncio.gather(*(watch(s, hold, started) for s in socks))
        rss_held = process_rss(server_pid)
    finally:
        for sock in socks:
            sock.close()
    return {
        "count": count,
        "size": size,
        "held": sum(1 for r in results if r["held"]),
        "statuses": sorted({r["status"] for r in results if r["status"] is not None}),
        "rss_growth_mb": round((rss_held - rss_start) / 2**20, 1),
    }


# -- attack (b): half-sent handshakes ------------------------------------------------------------


HALF_REQUEST = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
"""The start of a handshake, then silence (the head never ends)."""


async def half_open(
    port: int,
    count: int = 1000,
    hold: float = 15.0,
    during: Callable[[], Any] | None = None,
    host: str = HOST,
    first_bytes: bytes = HALF_REQUEST,
) -> dict[str, Any]:
    """``count`` sockets send ``first_bytes`` and nothing more; how many are held after ``hold`` s.

    ``during`` (a coroutine function) runs at ``hold / 2``, while every socket is still open on
    the attacker's side: it checks that a normal client is served.
    """
    _loopback(host)
    gate = asyncio.Semaphore(100)
    loop = asyncio.get_running_loop()

    async def one() -> socket.socket | None:
        async with gate:
            try:
                sock = await connect_raw(port)
            except OSError:
                return None
            try:
                await loop.sock_sendall(sock, first_bytes)
            except OSError:
                sock.close()
                return None
            return sock

    opened = [s for s in await asyncio.gather(*(one() for _ in range(count))) if s is not None]
    started = time.monotonic()
    watchers = [asyncio.ensure_future(watch(s, hold, started)) for s in opened]
    during_result: Any = None
    try:
        if during is not None:
            await asyncio.sleep(hold / 2)
            during_result = await during()
        results = await asyncio.gather(*watchers)
    finally:
        for w in watchers:
            w.cancel()
        for s in opened:
            s.close()
    closed = sorted(r["closed_after_s"] for r in results if r["closed_after_s"] is not None)
    return {
        "count": count,
        "opened": len(opened),
        "hold_s": hold,
        "held": sum(1 for r in results if r["held"]),
        "answered": sum(1 for r in results if r["status"] is not None),
        "statuses": sorted({r["status"] for r in results if r["status"] is not None}),
        "first_closed_s": closed[0] if closed else None,
        "last_closed_s": closed[-1] if closed else None,
        "during": during_result,
    }


# -- attack (c): pings, never read ---------------------------------------------------------------


def process_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and its children (granian serves from a child process)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


async def open_websocket(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A completed handshake on a raw socket (the 101 read byte by byte, nothing more)."""
    loop = asyncio.get_running_loop()
    sock = await connect_raw(port, rcvbuf)
    try:
        await loop.sock_sendall(sock, handshake(port=port))
        response = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in response:
                chunk = await loop.sock_recv(sock, 1)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {response[:60]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


async def ping_flood(
    port: int,
    server_pid: int,
    duration: float = 10.0,
    rss_cap: int = 1536 * 2**20,
    host: str = HOST,
) -> dict[str, Any]:
    """One client sends pings as fast as the socket takes them for ``duration`` s, never reading.

    Stops early when the server's RSS has grown by ``rss_cap`` bytes. Reports the server's RSS
    growth per second, the bytes the attacker got into the socket, and whether the server
    closed the connection.
    """
    _loopback(host)
    loop = asyncio.get_running_loop()
    sock = await open_websocket(port, rcvbuf=4096)
    burst = PING_FRAME * 256
    sent = 0
    closed_after: float | None = None
    rss_start = process_rss(server_pid)
    samples: list[tuple[float, int]] = [(0.0, rss_start)]
    started = time.monotonic()

    async def flood() -> None:
        nonlocal sent, closed_after
        try:
            while True:
                await loop.sock_sendall(sock, burst)
                sent += len(burst)
        except OSError:
            closed_after = time.monotonic() - started

    task = asyncio.ensure_future(flood())
    stopped_by = "duration"
    try:
        while (elapsed := time.monotonic() - started) < duration:
            await asyncio.sleep(0.5)
            rss = process_rss(server_pid)
            samples.append((time.monotonic() - started, rss))
            if rss - rss_start > rss_cap:
                stopped_by = "rss cap"
                break
            if task.done():
                stopped_by = "server closed"
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        elapsed = time.monotonic() - started
        sock.close()
    peak = max(rss for _, rss in samples)
    # Growth over the second half: the steady rate, not the warm-up.
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    (t0, r0), (t1, r1) = half[0], half[-1]
    await asyncio.sleep(2)
    return {
        "duration_s": round(elapsed, 1),
        "stopped_by": stopped_by,
        "sent_mb": round(sent / 2**20, 1),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "growth_mb_s": round((peak - rss_start) / 2**20 / max(elapsed, 0.1), 1),
        "steady_growth_mb_s": round((r1 - r0) / 2**20 / max(t1 - t0, 0.1), 1),
        "closed_after_s": _round(closed_after),
        "rss_2s_after_close_mb": round(process_rss(server_pid) / 2**20, 1),
        "rss_mb_every_2s": [round(rss / 2**20) for t, rss in samples[::4]],
    }


# -- a normal client -----------------------------------------------------------------------------


async def normal_client(port: int, timeout: float = 5.0, host: str = HOST) -> dict[str, Any]:
    """A WebSocket echo round trip and an HTTP GET, each within ``timeout`` s: is it served?"""
    from websockets.asyncio.client import connect

    _loopback(host)
    result: dict[str, Any] = {}
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with connect(f"ws://{host}:{port}{WS_PATH}", compression=None) as ws:
                await ws.send(json.dumps({"event": "echo", "payload": {"n": 1}}))
                while json.loads(await ws.recv()).get("event") != "echo":
                    pass
        result["ws"] = "served"
        result["ws_s"] = round(time.monotonic() - started, 3)
    except TimeoutError:
        result["ws"] = f"no answer in {timeout:g} s"
    except Exception as exc:  # reported, not raised: the result is what a client sees
        result["ws"] = f"{type(exc).__name__}: {exc}"[:120]
    result["http"] = await http_get(port, "/health", timeout)
    return result


async def http_get(port: int, path: str, timeout: float = 5.0) -> int | str:
    """The status of ``GET path`` on a fresh connection, or what went wrong."""
    loop = asyncio.get_running_loop()
    try:
        sock = await connect_raw(port)
    except OSError as exc:
        return f"{type(exc).__name__}"
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        data = b""
        async with asyncio.timeout(timeout):
            while b"\r\n" not in data:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    return "closed without an answer"
                data += chunk
        return int(data.split()[1])
    except TimeoutError:
        return f"no answer in {timeout:g} s"
    except OSError as exc:
        return f"{type(exc).__name__}"
    finally:
        sock.close()


# -- what the library relies on the server for ---------------------------------------------------


def _read_frame_header(buf: bytes) -> tuple[int, int, int] | None:
    """(opcode, header length, payload length) of the server frame at the start of ``buf``."""
    if len(buf) < 2:
        return None
    opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
    if n == 126:
        return None if len(buf) < 4 else (opcode, 4, struct.unpack("!H", buf[2:4])[0])
    if n == 127:
        return None if len(buf) < 10 else (opcode, 10, struct.unpack("!Q", buf[2:10])[0])
    return opcode, 2, n


async def server_frames(sock: socket.socket, seconds: float) -> tuple[list[int], float | None]:
    """Opcodes of the frames the server sends within ``seconds``, and when it closed (if it did)."""
    loop = asyncio.get_running_loop()
    buf = b""
    opcodes: list[int] = []
    started = time.monotonic()
    while (left := started + seconds - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
        except TimeoutError:
            break
        except OSError:
            return opcodes, time.monotonic() - started
        if not chunk:
            return opcodes, time.monotonic() - started
        buf += chunk
        while (head := _read_frame_header(buf)) and len(buf) >= head[1] + head[2]:
            opcodes.append(head[0])
            buf = buf[head[1] + head[2] :]
    return opcodes, None


async def guarantees(port: int, max_size: int, idle_timeout: float) -> dict[str, Any]:
    """What the library needs from the server: deflate off, the size limit, pings, dead peers.

    - ``deflate``: the extension the server accepted when the client offered
      permessage-deflate (``None`` is what we want);
    - ``max_size``: the close code for a message of ``max_size + 1`` bytes (1009 wanted);
    - ``pings``: pings seen within ``idle_timeout`` (at least one wanted);
    - ``dead_peer_closed_s``: when the server dropped a peer that reads but never pongs
      (within about ``idle_timeout`` wanted).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    url = f"ws://{HOST}:{port}{WS_PATH}"
    out: dict[str, Any] = {}
    async with connect(url, compression="deflate", open_timeout=5) as ws:
        assert ws.response is not None
        out["deflate"] = ws.response.headers.get("Sec-WebSocket-Extensions")
    try:
        async with asyncio.timeout(10):
            async with connect(url, compression=None, max_size=None) as ws:
                await ws.send("x" * (max_size + 1))
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await ws.recv()
                rcvd = ws.close_code
        out["max_size"] = rcvd
    except TimeoutError:
        out["max_size"] = "not closed in 10 s"
    sock = await open_websocket(port)
    try:
        opcodes, closed = await server_frames(sock, idle_timeout * 2 + 2)
    finally:
        sock.close()
    out["pings"] = opcodes.count(0x9)
    out["dead_peer_closed_s"] = _round(closed, 1)
    return out


async def ping_push(
    port: int,
    limit: int = 32 * 2**20,
    stall: float = 2.0,
    deadline: float = 60.0,
    host: str = HOST,
) -> dict[str, Any]:
    """Push pings without reading until the server stops taking them, closes, or takes ``limit``.

    A server that bounds a peer which never reads either stops reading from it (the send
    stalls for ``stall`` s: ``"stalled"``) or closes it (``"closed"``); one that does not
    takes ``limit`` bytes of pings and queues a pong for each (``"took all"``). ``deadline``
    bounds the attack in time (``"deadline"``: still taking, only slowly).
    """
    _loopback(host)
    loop = asyncio.get_running_loop()
    sock = await open_websocket(port, rcvbuf=4096)
    burst = PING_FRAME * 256
    pushed = 0
    outcome = "deadline"
    started = time.monotonic()
    try:
        while time.monotonic() - started < deadline:
            if pushed >= limit:
                outcome = "took all"
                break
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, burst), stall)
            except TimeoutError:
                outcome = "stalled"
                break
            except OSError:
                outcome = "closed"
                break
            pushed += len(burst)
    finally:
        sock.close()
    return {"outcome": outcome, "pushed_mb": round(pushed / 2**20, 1)}
