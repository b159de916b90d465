"""Load generator: a raw asyncio WebSocket client, run as its own process.

It speaks just enough RFC 6455 to be cheap: it never offers an extension (so none
can be negotiated), masks its frames with the all-zero key (legal, and it makes
masking free), and counts server frames without decoding them. Latency comes from
a send-time table indexed by sequence number: the sender lives in this process, and
each connection receives its frames in order, so the k-th measured frame a receiver
gets is message k (checked on a sample against the ``seq`` carried in the payload).

    python -m bench.client fanout --ports 8000 --kind envelope --n 1000 --k 300
    python -m bench.client echo --ports 8000 --kind socketio --clients 100
    python -m bench.client idle --ports 8000 --kind envelope --n 5000
    python -m bench.client flood --ports 8000 --mode room --readers 3 --k 20000 --size 1000
    python -m bench.client relay --ports 8000 --server-pids PID --readers 3 --k 16 --size 8388608

Prints one JSON object on stdout. Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import socket
import sys
import time
from typing import Any

import psutil

perf = time.perf_counter
PAD = "x" * 40
ROOM = "bench"
SEQ_RE = re.compile(rb'"seq":\s*(\d+)')


# --------------------------------------------------------------------------- frames
def client_frame(text: str, op: int = 1) -> bytes:
    """A masked client frame with the zero masking key."""
    data = text.encode()
    n = len(data)
    if n < 126:
        head = bytes((0x80 | op, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | op, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | op, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + data


def encode_event(kind: str, event: str, payload_json: str) -> str:
    if kind == "socketio":
        return f'42["{event}",{payload_json}]'
    return f'{{"event":"{event}","payload":{payload_json}}}'


def publish_payload(seq: int, t: float, room: str = ROOM) -> str:
    return f'{{"room":"{room}","seq":{seq},"t":{t:.6f},"data":"{PAD}"}}'


# --------------------------------------------------------------------------- connection
class Conn(asyncio.Protocol):
    """One WebSocket connection. Subclasses override ``on_frames`` for the fast path."""

    def __init__(self, host: str, port: int, path: str, kind: str) -> None:
        self.host, self.port, self.path, self.kind = host, port, path, kind
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.extensions = ""
        self.closed = False
        self.close_code: int | None = None
        self.sio_stage = 0  # socket.io: 0 wait open "0", 1 wait "40", 2 ready

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(req.encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            head = data[:end].decode("latin-1").split("\r\n")
            if " 101 " not in head[0]:
                self.ready.set_exception(ConnectionError(f"handshake refused: {head[0]}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-extensions":
                    self.extensions = value.strip()
            self.upgraded = True
            if self.kind != "socketio":
                self.ready.set_result(None)
            data = data[end + 4 :]
            if not data:
                return
        self.parse(data)

    # -- frames
    def parse(self, data: bytes) -> None:
        """Split ``data`` into frames; hand data frames to ``on_frames`` in one batch."""
        n = len(data)
        i = 0
        frames: list[tuple[int, int]] = []
        while n - i >= 2:
            b0 = data[i]
            ln = data[i + 1] & 0x7F
            if ln < 126:
                h = 2
            elif ln == 126:
                if n - i < 4:
                    break
                ln = (data[i + 2] << 8) | data[i + 3]
                h = 4
            else:
                if n - i < 10:
                    break
                ln = int.from_bytes(data[i + 2 : i + 10], "big")
                h = 10
            end = i + h + ln
            if end > n:
                break
            op = b0 & 0x0F
            if op <= 2:
                if ln < 8:
                    if data[i + h : end] == b"2" and self.kind == "socketio":
                        self.write(client_frame("3"))  # engine.io ping
                    elif self.sio_stage < 2 and self.kind == "socketio":
                        frames.append((i + h, end))
                else:
                    frames.append((i + h, end))
            elif op == 9:  # ping -> pong
                self.write(client_frame(data[i + h : end].decode("latin-1"), 0xA))
            elif op == 8:
                if ln >= 2:
                    self.close_code = int.from_bytes(data[i + h : i + h + 2], "big")
                self.transport.close()  # type: ignore[union-attr]
            i = end
        if i < n:
            self.buf = data[i:]
        if frames:
            if self.sio_stage < 2 and self.kind == "socketio":
                frames = self.socketio_control(data, frames)
                if not frames:
                    return
            self.on_frames(data, frames)

    def socketio_control(self, data: bytes, frames: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Engine.io open packet and the socket.io namespace connect; returns the rest."""
        rest = []
        for s, e in frames:
            if self.sio_stage == 0 and data[s : s + 1] == b"0":
                self.sio_stage = 1
                self.write(client_frame("40"))
            elif self.sio_stage == 1 and data[s : s + 2] == b"40":
                self.sio_stage = 2
                self.ready.set_result(None)
            elif self.sio_stage == 2:
                rest.append((s, e))
        return rest

    def on_frames(self, data: bytes, frames: list[tuple[int, int]]) -> None:
        pass

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame)

    def send(self, event: str, payload_json: str) -> None:
        self.write(client_frame(encode_event(self.kind, event, payload_json)))


async def open_conn(
    factory: Any, host: str, port: int, rcvbuf: int | None = None, timeout: float = 20.0
) -> Any:
    loop = asyncio.get_running_loop()
    if rcvbuf:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, proto = await loop.create_connection(factory, sock=sock)
    else:
        _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
    await asyncio.wait_for(proto.ready, timeout)
    return proto


async def open_many(
    factory: Any, host: str, ports: list[int], n: int, concurrency: int = 100
) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with sem:
            return await open_conn(lambda: factory(i), host, ports[i % len(ports)])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def path_for(kind: str) -> str:
    return "/socket.io/?EIO=4&transport=websocket" if kind == "socketio" else "/ws"


class CpuMeter:
    """CPU seconds of this process and of the server processes over a window."""

    def __init__(self, server_pids: list[int]) -> None:
        self.me = psutil.Process()
        self.servers = []
        for pid in server_pids:
            with contextlib.suppress(psutil.Error):
                self.servers.append(psutil.Process(pid))

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    @staticmethod
    def _cores() -> list[tuple[float, float]]:
        out = []
        for t in psutil.cpu_times(percpu=True):
            total = sum(t)
            out.append((total, total - t.idle - getattr(t, "iowait", 0.0)))
        return out

    def start(self) -> None:
        self.k0 = self._cores()
        self.t0 = perf()
        self.c0 = self._cpu(self.me)
        self.s0 = [self._cpu(p) for p in self.servers]

    def stop(self) -> dict[str, Any]:
        wall = max(perf() - self.t0, 1e-9)
        k1 = self._cores()
        busy = [
            round(100 * (b1 - b0) / max(t1 - t0, 1e-9), 1)
            for (t0, b0), (t1, b1) in zip(self.k0, k1, strict=True)
        ]
        return {
            "core_busy_pct": busy,
            "client_cpu_pct": round(100 * (self._cpu(self.me) - self.c0) / wall, 1),
            "server_cpu_pct": [
                round(100 * (self._cpu(p) - s) / wall, 1)
                for p, s in zip(self.servers, self.s0, strict=True)
            ],
        }


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# --------------------------------------------------------------------------- fan-out
class Receiver(Conn):
    """Room member. Slow path until the "go" marker, then counts frames in order."""

    def __init__(
        self, run: FanoutRun, idx: int, host: str, port: int, kind: str, active: bool
    ) -> None:
        super().__init__(host, port, path_for(kind), kind)
        self.run = run
        self.idx = idx
        self.active = active
        self.synced = False
        self.fast = False
        self.count = 0
        self.sample = active and idx % run.lat_step == 0
        self.checked = 0

    def on_frames(self, data: bytes, frames: list[tuple[int, int]]) -> None:
        run = self.run
        if not self.fast:
            for k, (s, e) in enumerate(frames):
                chunk = data[s:e]
                if b'"go"' in chunk:
                    self.synced = self.fast = True
                    run.on_go(self)
                    if self.fast and k + 1 < len(frames):
                        self.on_frames(data, frames[k + 1 :])
                    return
                if b'"sync"' in chunk:
                    self.synced = True
            return
        if not self.active:
            return
        now = perf()
        done = run.done
        n = run.n
        c = self.count
        sent = run.sent_at
        lat = run.lat if self.sample and run.recording else None
        for s, e in frames:
            if e - s < 16:
                continue  # engine.io ping or other control text
            d = done[c] + 1
            done[c] = d
            if lat is not None:
                lat.append(now - sent[c])
            if d == n:
                run.on_complete(c, now)
            c += 1
        if self.sample and self.checked < 50:
            s, e = frames[-1]
            m = SEQ_RE.search(data, s, e)
            self.checked += 1
            if m is None or int(m.group(1)) != c - 1:
                run.order_errors += 1
        self.count = c


class FanoutRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.n
        self.k = args.k
        self.lat_step = max(1, args.n // 64)
        self.done = [0] * (args.k + 1)
        self.sent_at = [0.0] * (args.k + 1)
        self.lat: list[float] = []
        self.recording = False
        self.sent = 0
        self.completed = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.order_errors = 0
        self.gone = 0
        self.go_event = asyncio.Event()
        self.finished = asyncio.Event()
        self.receivers: list[Receiver] = []
        self.sender: Conn | None = None
        self.mode = args.mode

    def on_go(self, r: Receiver) -> None:
        self.gone += 1
        if self.gone >= len(self.receivers):
            self.go_event.set()
        if not r.active:
            r.transport.pause_reading()  # type: ignore[union-attr]

    def on_complete(self, c: int, now: float) -> None:
        self.completed = c + 1
        self.t_last = now
        if self.completed >= self.k:
            self.finished.set()
        elif self.mode == "max":
            self.pump()

    def pump(self) -> None:
        """Send while fewer than ``window`` publishes are not yet fully delivered."""
        w = self.args.window
        out = []
        now = perf()
        while self.sent < self.k and self.sent - self.completed < w:
            self.sent_at[self.sent] = now
            out.append(
                client_frame(
                    encode_event(self.args.kind, "publish", publish_payload(self.sent, now))
                )
            )
            self.sent += 1
        if out:
            self.sender.write(b"".join(out))  # type: ignore[union-attr]

    def fixed_tick(self, loop: asyncio.AbstractEventLoop, t0: float, interval: float) -> None:
        if self.sent >= self.k:
            return
        now = perf()
        self.sent_at[self.sent] = now
        self.sender.send("publish", publish_payload(self.sent, now))  # type: ignore[union-attr]
        self.sent += 1
        loop.call_at(
            loop.time() + max(0.0, t0 + self.sent * interval - perf()),
            self.fixed_tick,
            loop,
            t0,
            interval,
        )

    async def main(self) -> dict[str, Any]:
        a = self.args
        ports = a.ports
        host = a.host
        t_conn = perf()
        self.receivers = await open_many(
            lambda i: Receiver(self, i, host, ports[i % len(ports)], a.kind, True), host, ports, a.n
        )
        stalled: Receiver | None = None
        if a.stalled:
            stalled = await open_conn(
                lambda: Receiver(self, -1, host, ports[0], a.kind, False),
                host,
                ports[0],
                rcvbuf=4096,
            )
            self.receivers.append(stalled)
        self.sender = await open_conn(
            lambda: Conn(host, ports[0], path_for(a.kind), a.kind), host, ports[0]
        )
        t_conn = perf() - t_conn
        extensions = sorted({r.extensions for r in self.receivers} | {self.sender.extensions})
        for r in self.receivers:
            r.send("join", f'{{"room":"{ROOM}"}}')
        # sync: publish a marker, wait up to 1 s for every member to see it, repeat (joins
        # are processed asynchronously, and may land on another process with Redis)
        for _ in range(20):
            self.sender.send("publish", f'{{"room":"{ROOM}","sync":1}}')
            deadline = perf() + 1.0
            while perf() < deadline and not all(r.synced for r in self.receivers):  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polled: the protocol callbacks stay event-free
            if all(r.synced for r in self.receivers):
                break
        if not all(r.synced for r in self.receivers):
            raise RuntimeError("members did not all receive the sync broadcast")
        await asyncio.sleep(0.1)
        self.sender.send("publish", f'{{"room":"{ROOM}","go":1}}')
        await asyncio.wait_for(self.go_event.wait(), 60)
        await asyncio.sleep(0.05)
        meter = CpuMeter(a.server_pids)
        meter.start()
        loop = asyncio.get_running_loop()
        self.t_first = perf()
        if self.mode == "max":
            self.pump()
        else:
            interval = 1.0 / a.rate
            self.fixed_tick(loop, self.t_first, interval)
        active = [r for r in self.receivers if r.active]
        timeline: list[tuple[float, int]] = []

        def tick() -> None:
            timeline.append((perf(), sum(r.count for r in active)))

        # warm-up: not measured (latencies off, deliveries before it subtracted)
        self.recording = a.warmup <= 0
        mark: list[tuple[float, int]] = []
        if a.warmup > 0:

            def start_measuring() -> None:
                mark.append((perf(), sum(r.count for r in active)))
                self.recording = True
                meter.start()

            loop.call_later(a.warmup, start_measuring)
        for j in range(1, int((a.warmup + a.timeout) / 0.25) + 1):
            loop.call_later(j * 0.25, tick)
        timed_out = False
        try:
            await asyncio.wait_for(self.finished.wait(), a.warmup + a.timeout)
        except TimeoutError:
            timed_out = True
            self.t_last = perf()
        cpu = meter.stop()
        deliveries = sum(r.count for r in active)
        if mark:
            t_start, d_start = mark[0]
        else:
            t_start, d_start = self.t_first, 0
        measured = deliveries - d_start
        elapsed = max(self.t_last - t_start, 1e-9)
        rates = []
        prev = (self.t_first, 0)
        for t, d in timeline:
            rates.append(round((d - prev[1]) / (t - prev[0])))
            prev = (t, d)
        for r in self.receivers:
            if r is not stalled:
                r.transport.close()  # type: ignore[union-attr]
        self.sender.transport.close()  # type: ignore[union-attr]
        stalled_closed_by_server = None
        if stalled is not None:  # read what it was sent: did the server close it (4429)?
            stalled.active = False
            stalled.transport.resume_reading()  # type: ignore[union-attr]
            deadline = perf() + 3
            while perf() < deadline and not stalled.closed and stalled.close_code is None:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            stalled_closed_by_server = stalled.close_code
            stalled.transport.close()  # type: ignore[union-attr]
        await asyncio.sleep(0.2)
        return {
            "workload": "fanout",
            "mode": self.mode,
            "n": a.n,
            "published": self.sent,
            "fully_delivered": self.completed,
            "deliveries": deliveries,
            "expected": self.sent * a.n,
            "elapsed_s": round(elapsed, 4),
            "deliveries_per_s": round(measured / elapsed, 1),
            "warmup_s": a.warmup,
            "timeline_per_s": rates,
            "p50_ms": _ms(pct(self.lat, 0.50)),
            "p99_ms": _ms(pct(self.lat, 0.99)),
            "latency_samples": len(self.lat),
            "timed_out": timed_out,
            "order_errors": self.order_errors,
            "extensions": extensions,
            "connect_s": round(t_conn, 2),
            "stalled_close_code": stalled_closed_by_server,
            **cpu,
        }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


# --------------------------------------------------------------------------- echo
class EchoClient(Conn):
    def __init__(self, run: EchoRun, host: str, port: int, kind: str) -> None:
        super().__init__(host, port, path_for(kind), kind)
        self.run = run
        self.t0 = 0.0
        self.count = 0
        self.frame = client_frame(encode_event(kind, "echo", publish_payload(0, 0.0)))

    def kick(self) -> None:
        self.t0 = perf()
        self.write(self.frame)

    def on_frames(self, data: bytes, frames: list[tuple[int, int]]) -> None:
        run = self.run
        now = perf()
        for s, e in frames:
            if e - s < 16:
                continue
            if run.recording:
                run.lat.append(now - self.t0)
                self.count += 1
            if run.running:
                self.t0 = now
                self.write(self.frame)
            else:
                run.outstanding -= 1


class EchoRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lat: list[float] = []
        self.recording = False
        self.running = True
        self.outstanding = 0

    async def main(self) -> dict[str, Any]:
        a = self.args
        clients = await open_many(
            lambda i: EchoClient(self, a.host, a.ports[0], a.kind), a.host, a.ports, a.clients
        )
        extensions = sorted({c.extensions for c in clients})
        for c in clients:
            c.kick()
        await asyncio.sleep(a.warmup)
        meter = CpuMeter(a.server_pids)
        meter.start()
        self.recording = True
        t0 = perf()
        await asyncio.sleep(a.duration)
        self.recording = False
        elapsed = perf() - t0
        cpu = meter.stop()
        self.running = False
        self.outstanding = len(clients)
        deadline = perf() + 5
        while self.outstanding > 0 and perf() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        total = sum(c.count for c in clients)
        for c in clients:
            c.transport.close()  # type: ignore[union-attr]
        await asyncio.sleep(0.2)
        return {
            "workload": "echo",
            "clients": a.clients,
            "round_trips": total,
            "elapsed_s": round(elapsed, 4),
            "round_trips_per_s": round(total / elapsed, 1),
            "p50_ms": _ms(pct(self.lat, 0.50)),
            "p99_ms": _ms(pct(self.lat, 0.99)),
            "extensions": extensions,
            **cpu,
        }


# --------------------------------------------------------------------------- tight loop
FLOOD_I_RE = re.compile(rb'"i":\s*(\d+)')


class FloodReader(Conn):
    """Counts ``flood`` frames and checks that ``i`` runs 0, 1, 2, ... without a gap."""

    def __init__(self, run: FloodRun, host: str, port: int, kind: str) -> None:
        super().__init__(host, port, path_for(kind), kind)
        self.run = run
        self.synced = False
        self.count = 0
        self.order_errors = 0
        self.t_last = 0.0

    def on_frames(self, data: bytes, frames: list[tuple[int, int]]) -> None:
        for s, e in frames:
            head = data[s : s + 48]
            if b"flood" not in head:
                if b'"sync"' in data[s:e]:
                    self.synced = True
                continue
            m = FLOOD_I_RE.search(data, s, min(e, s + 64))
            if m is None or int(m.group(1)) != self.count:
                self.order_errors += 1
            self.count += 1
        self.t_last = perf()
        if self.count >= self.run.n:
            self.run.reader_done()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.run.reader_done()


class LibReader:
    """A ``flood`` reader written as an application would: the ``websockets`` client,
    ``async for`` over its messages, ``max_queue=4`` (it stops reading the socket while 4
    frames wait for the application, as in the issue's reproduction)."""

    def __init__(self, run: FloodRun, ws: Any, kind: str) -> None:
        self.run = run
        self.ws = ws
        self.kind = kind
        self.synced = False
        self.count = 0
        self.order_errors = 0
        self.t_last = 0.0
        self.closed = False
        self.close_code: int | None = None
        self.extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        self.task = asyncio.get_running_loop().create_task(self.read())

    @classmethod
    async def open(cls, run: FloodRun, host: str, port: int, kind: str) -> LibReader:
        from websockets.asyncio.client import connect

        ws = await connect(
            f"ws://{host}:{port}{path_for(kind)}",
            compression=None,
            max_size=None,
            max_queue=4,
            open_timeout=20,
        )
        if kind == "socketio":
            await asyncio.wait_for(ws.recv(), 10)  # engine.io open
            await ws.send("40")
            await asyncio.wait_for(ws.recv(), 10)  # namespace connected
        return cls(run, ws, kind)

    async def read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        n = self.run.n
        try:
            async for message in self.ws:
                if not isinstance(message, str):
                    continue
                if message == "2":
                    await self.ws.send("3")  # engine.io ping
                    continue
                if "flood" not in message[:48]:
                    if '"sync"' in message:
                        self.synced = True
                    continue
                m = FLOOD_I_RE.search(message[:64].encode())
                if m is None or int(m.group(1)) != self.count:
                    self.order_errors += 1
                self.count += 1
                self.t_last = perf()
                if self.count >= n:
                    self.run.reader_done()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.close_code = self.ws.close_code  # the code the server sent, if it closed
            self.run.reader_done()

    def send(self, event: str, payload_json: str) -> None:
        self.run.spawn(self.ws.send(encode_event(self.kind, event, payload_json)))

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.ws.close(), 2)


class FloodRun:
    """A handler sends ``n`` frames of ~``size`` bytes in a tight loop (issue 9, item 4).

    ``--mode send``: the handler loops ``await ws.send`` to its own client, which reads as
    fast as it can. ``--mode room``: the handler loops ``broadcast_to_room`` to ``readers``
    members that read as fast as they can (the sender is not a member). ``--reader raw``
    reads with this module's cheap protocol; ``--reader websockets`` with the ``websockets``
    client (see :class:`LibReader`).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.k
        self.readers: list[Any] = []
        self.finished = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def reader_done(self) -> None:
        if all(r.count >= self.n or r.closed for r in self.readers):
            self.finished.set()

    async def main(self) -> dict[str, Any]:
        a = self.args
        host, port = a.host, a.ports[0]
        count = 1 if a.mode == "send" else a.readers
        if a.reader == "websockets":
            self.readers = [await LibReader.open(self, host, port, a.kind) for _ in range(count)]
        else:
            self.readers = await open_many(
                lambda i: FloodReader(self, host, port, a.kind), host, [port], count
            )
        request = f'{{"n":{self.n},"size":{a.size},"room":"{ROOM}"}}'
        extensions = sorted({r.extensions for r in self.readers})
        if a.mode == "send":
            sender: Any = self.readers[0]
            event = "flood"
        else:
            sender = await open_conn(lambda: Conn(host, port, path_for(a.kind), a.kind), host, port)
            event = "flood_room"
            for r in self.readers:
                r.send("join", f'{{"room":"{ROOM}"}}')
            for _ in range(20):
                sender.send("publish", f'{{"room":"{ROOM}","sync":1}}')
                deadline = perf() + 1.0
                while perf() < deadline and not all(r.synced for r in self.readers):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                if all(r.synced for r in self.readers):
                    break
            if not all(r.synced for r in self.readers):
                raise RuntimeError("members did not all receive the sync broadcast")
        meter = CpuMeter(a.server_pids)
        meter.start()
        t0 = perf()
        sender.send(event, request)
        timed_out = False
        try:
            await asyncio.wait_for(self.finished.wait(), a.timeout)
        except TimeoutError:
            timed_out = True
        cpu = meter.stop()
        # a close frame that is on its way is read before the verdict
        deadline = perf() + 0.5
        while perf() < deadline and any(  # noqa: ASYNC110
            r.count < self.n and not r.closed for r in self.readers
        ):
            await asyncio.sleep(0.02)
        counts = [r.count for r in self.readers]
        t_last = max(r.t_last for r in self.readers)
        codes = sorted({r.close_code for r in self.readers if r.close_code is not None})
        for r in self.readers:
            if isinstance(r, LibReader):
                await r.aclose()
            else:
                r.transport.close()
        if sender not in self.readers:
            sender.transport.close()
        await asyncio.sleep(0.2)
        elapsed = max(t_last - t0, 1e-9)
        return {
            "workload": "flood",
            "mode": a.mode,
            "reader": a.reader,
            "readers": count,
            "frames": self.n,
            "size": a.size,
            "delivered_min": min(counts),
            "delivered": counts,
            "all_delivered": min(counts) >= self.n,
            "closed_4429": 4429 in codes,
            "close_codes": codes,
            "order_errors": sum(r.order_errors for r in self.readers),
            "elapsed_s": round(elapsed, 3),
            "frames_per_s": round(sum(counts) / elapsed, 1),
            "timed_out": timed_out,
            "extensions": extensions,
            **cpu,
        }


# --------------------------------------------------------------------------- 8 MiB relay
SEQ_HEAD_RE = re.compile(rb'"seq":\s*(\d+)')
BIG = 4096  # frames at least this long are counted as they stream by, never buffered


class StreamConn(Conn):
    """A connection that counts large frames without buffering them.

    Frames shorter than ``BIG`` go through :meth:`Conn.parse` whole (pings, the close frame,
    Socket.IO's handshake, sync markers); longer ones are skipped byte by byte and reported to
    :meth:`on_big` with their first bytes.
    """

    def __init__(self, host: str, port: int, kind: str) -> None:
        super().__init__(host, port, path_for(kind), kind)
        self.pending = b""  # an incomplete header, or an incomplete small frame
        self.remaining = 0  # payload bytes of the current large frame still to come
        self.head = b""
        self.big_len = 0

    def parse(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
            self.pending = b""
        i, n = 0, len(data)
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                if len(self.head) < 128:
                    self.head += data[i : i + min(take, 128 - len(self.head))]
                self.remaining -= take
                i += take
                if not self.remaining:
                    self.on_big(self.head, self.big_len)
                continue
            if n - i < 2:
                self.pending = data[i:]
                return
            ln = data[i + 1] & 0x7F
            h = 2
            if ln == 126:
                h = 4
            elif ln == 127:
                h = 10
            if n - i < h:
                self.pending = data[i:]
                return
            if ln == 126:
                ln = int.from_bytes(data[i + 2 : i + 4], "big")
            elif ln == 127:
                ln = int.from_bytes(data[i + 2 : i + 10], "big")
            if ln >= BIG and (data[i] & 0x0F) <= 2:
                self.remaining, self.big_len, self.head = ln, ln, b""
                i += h
                continue
            if n - i < h + ln:
                self.pending = data[i:]
                return
            Conn.parse(self, data[i : i + h + ln])
            i += h + ln

    def on_big(self, head: bytes, length: int) -> None:
        pass


class RelayReader(StreamConn):
    def __init__(self, run: RelayRun, host: str, port: int, kind: str, active: bool) -> None:
        super().__init__(host, port, kind)
        self.run = run
        self.active = active
        self.synced = False
        self.count = 0
        self.order_errors = 0

    def on_frames(self, data: bytes, frames: list[tuple[int, int]]) -> None:
        for s, e in frames:
            if b'"sync"' in data[s:e]:
                self.synced = True

    def on_big(self, head: bytes, length: int) -> None:
        m = SEQ_HEAD_RE.search(head)
        if m is None or int(m.group(1)) != self.count:
            self.order_errors += 1
        self.count += 1
        if self.active:
            self.run.progress()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.active:
            self.run.progress()


class RelayRun:
    """A room relays ``k`` payloads of ``size`` bytes; one member never reads (issue 9, item 5).

    The sender (not a member) publishes the next payload once every reading member has the
    previous one, until ``k`` or the deadline. The server's RSS is sampled every 10 ms.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.readers: list[RelayReader] = []
        self.sent = 0
        self.sender: Conn | None = None
        self.finished = asyncio.Event()
        self.t_done = 0.0
        self.pad = "x" * args.size
        self.stopped = False

    def delivered(self) -> int:
        active = [r for r in self.readers if r.active and not r.closed]
        return min((r.count for r in active), default=self.sent)

    def progress(self) -> None:
        if self.stopped:
            return
        done = self.delivered()
        if done >= self.args.k:
            self.t_done = perf()
            self.finished.set()
        elif done >= self.sent:
            self.publish()

    def publish(self) -> None:
        a = self.args
        head = f'{{"room":"relay","seq":{self.sent},"t":{perf():.6f},"data":"'
        self.sent += 1
        self.sender.write(client_frame(encode_event(a.kind, "publish", head + self.pad + '"}')))  # type: ignore[union-attr]

    async def main(self) -> dict[str, Any]:
        a = self.args
        host, port = a.host, a.ports[0]
        self.readers = await open_many(
            lambda i: RelayReader(self, host, port, a.kind, True), host, [port], a.readers
        )
        stalled = await open_conn(
            lambda: RelayReader(self, host, port, a.kind, False), host, port, rcvbuf=4096
        )
        self.readers.append(stalled)
        self.sender = await open_conn(
            lambda: Conn(host, port, path_for(a.kind), a.kind), host, port
        )
        for r in self.readers:
            r.send("join", '{"room":"relay"}')
        for _ in range(20):
            self.sender.send("publish", '{"room":"relay","sync":1}')
            deadline = perf() + 1.0
            while perf() < deadline and not all(r.synced for r in self.readers):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            if all(r.synced for r in self.readers):
                break
        if not all(r.synced for r in self.readers):
            raise RuntimeError("members did not all receive the sync broadcast")
        stalled.transport.pause_reading()  # type: ignore[union-attr]
        proc = psutil.Process(a.server_pids[0])
        await asyncio.sleep(0.3)
        base = proc.memory_info().rss
        peak = base
        meter = CpuMeter(a.server_pids)
        meter.start()
        t0 = perf()
        self.publish()
        timed_out = True
        deadline = t0 + a.timeout
        while perf() < deadline:
            try:
                await asyncio.wait_for(self.finished.wait(), 0.01)
                timed_out = False
                break
            except TimeoutError:
                pass
            with contextlib.suppress(psutil.Error):
                peak = max(peak, proc.memory_info().rss)
        with contextlib.suppress(psutil.Error):
            peak = max(peak, proc.memory_info().rss)
        self.stopped = True
        cpu = meter.stop()
        elapsed = (self.t_done or perf()) - t0
        counts = [r.count for r in self.readers if r.active]
        # did the server close the member that never read? Read what it was sent.
        stalled.active = False
        stalled.transport.resume_reading()  # type: ignore[union-attr]
        until = perf() + 3
        while perf() < until and not stalled.closed and stalled.close_code is None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        # Dropped by the server: a close frame, or (when the close frame could not be written
        # to a full socket) the connection closed without one.
        stalled_dropped = stalled.close_code is not None or stalled.closed
        end_rss = peak
        with contextlib.suppress(psutil.Error):
            end_rss = proc.memory_info().rss
        for r in self.readers:
            r.transport.close()  # type: ignore[union-attr]
        self.sender.transport.close()
        await asyncio.sleep(0.2)
        return {
            "workload": "relay",
            "readers": a.readers,
            "size": a.size,
            "relays": a.k,
            "published": self.sent,
            "delivered_min": min(counts),
            "delivered": counts,
            "all_delivered": min(counts) >= a.k,
            "stalled_close_code": stalled.close_code,
            "stalled_dropped": stalled_dropped,
            "stalled_received": stalled.count,
            "order_errors": sum(r.order_errors for r in self.readers),
            "elapsed_s": round(elapsed, 3),
            "timed_out": timed_out,
            "rss_base_mib": round(base / 2**20, 1),
            "rss_peak_mib": round(peak / 2**20, 1),
            "rss_growth_mib": round((peak - base) / 2**20, 1),
            "rss_end_mib": round(end_rss / 2**20, 1),
            "extensions": sorted({r.extensions for r in self.readers}),
            **cpu,
        }


# --------------------------------------------------------------------------- idle memory
async def idle_main(a: argparse.Namespace) -> dict[str, Any]:
    procs = [psutil.Process(p) for p in a.server_pids]

    def rss() -> int:
        return sum(p.memory_info().rss for p in procs)

    def factory(i: int) -> Conn:
        return Conn(a.host, a.ports[0], path_for(a.kind), a.kind)

    # warm-up: pay lazy imports and first-connection allocations before the baseline
    warm = await open_many(factory, a.host, a.ports, 50)
    for c in warm:
        c.send("join", '{"room":"idle"}')
    await asyncio.sleep(0.3)
    for c in warm:
        c.transport.close()  # type: ignore[union-attr]
    await asyncio.sleep(1.0)
    before = rss()
    t0 = perf()
    conns = await open_many(factory, a.host, a.ports, a.n)
    for c in conns:
        c.send("join", '{"room":"idle"}')
    connect_s = perf() - t0
    await asyncio.sleep(a.settle)
    after = rss()
    alive = sum(1 for c in conns if not c.closed)
    extensions = sorted({c.extensions for c in conns})
    for c in conns:
        c.transport.close()  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    return {
        "workload": "idle",
        "n": a.n,
        "alive": alive,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "kib_per_conn": round((after - before) / a.n / 1024, 2),
        "connect_s": round(connect_s, 2),
        "extensions": extensions,
    }


# --------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["fanout", "echo", "idle", "flood", "relay"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ports", type=lambda s: [int(x) for x in s.split(",")], required=True)
    p.add_argument("--kind", choices=["envelope", "socketio"], default="envelope")
    p.add_argument("--server-pids", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--k", type=int, default=200)
    p.add_argument(
        "--mode",
        choices=["max", "fixed", "send", "room"],
        default="max",
        help="fanout: max or fixed; flood: send (ws.send) or room (broadcast_to_room)",
    )
    p.add_argument("--readers", type=int, default=3, help="flood room / relay: reading members")
    p.add_argument("--size", type=int, default=1000, help="flood / relay: payload bytes")
    p.add_argument(
        "--reader",
        choices=["raw", "websockets"],
        default="raw",
        help="flood: this module's cheap reader, or the websockets client (max_queue=4)",
    )
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--rate", type=float, default=10.0, help="fixed mode: publishes per second")
    p.add_argument("--stalled", type=int, default=0)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--settle", type=float, default=1.5)
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run

    async def go() -> dict[str, Any]:
        if a.workload == "fanout":
            return await FanoutRun(a).main()
        if a.workload == "echo":
            return await EchoRun(a).main()
        if a.workload == "flood":
            return await FloodRun(a).main()
        if a.workload == "relay":
            return await RelayRun(a).main()
        return await idle_main(a)

    try:
        result = runner(asyncio.wait_for(go(), a.timeout + 120))
    except Exception as exc:  # reported to the orchestrator, never a traceback storm
        result = {"workload": a.workload, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
