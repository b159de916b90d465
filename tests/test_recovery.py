"""Room history and recovery on the memory backend, end to end on a real uvicorn.

A client that was away rejoins with its last position and gets every frame it missed, in
order and once, before any live frame of the room; live frames published while its replay
is being written wait and follow without duplicates.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    HistoryPage,
    JoinResult,
    Position,
    RoomHistory,
    WebSocketManager,
    WebSocketRouter,
)
from fastapi_orcs_ws.backends import MemoryBackend
from fastapi_orcs_ws.testing import serve

from .wsclient import client, recv, send

pytestmark = pytest.mark.anyio


class Since(BaseModel):
    offset: int
    epoch: str


class JoinPayload(BaseModel):
    room: str
    since: Since | None = None


class PublishPayload(BaseModel):
    room: str
    start: int = 0
    count: int = 1


def make_app(manager: WebSocketManager) -> FastAPI:
    router = WebSocketRouter(manager=manager)
    route = router.ws("/ws")

    @route.on("join")
    async def join(ws: Connection, payload: JoinPayload) -> dict[str, Any]:
        since = Position(payload.since.offset, payload.since.epoch) if payload.since else None
        result = await ws.data.manager.join_room(ws.data.client_id, payload.room, since=since)
        return result.as_payload(payload.room)

    @route.on("publish")
    async def publish(ws: Connection, payload: PublishPayload) -> int:
        for i in range(payload.start, payload.start + payload.count):
            await ws.data.manager.broadcast_to_room(payload.room, "n", {"i": i})
        return payload.count

    app = FastAPI()
    app.include_router(router)
    return app


_stash: dict[int, list[dict[str, Any]]] = {}


async def request(ws: ClientConnection, event: str, payload: Any, msg_id: int) -> Any:
    """Send with an id and return the ack's payload; frames in between are kept for
    ``numbered_frames``."""
    await send(ws, event, payload, id=msg_id)
    with anyio.fail_after(10):
        while True:
            frame = await recv(ws)
            if frame["event"] == "ack" and frame.get("id") == msg_id:
                return frame["payload"]
            assert frame["event"] != "error", frame
            _stash.setdefault(id(ws), []).append(frame)


async def rejoin(
    ws: ClientConnection, payload: dict[str, Any], msg_id: int = 7
) -> tuple[list[dict[str, Any]], Any]:
    """Send a join; return every frame that came before its ack, and the ack's payload."""
    await send(ws, "join", payload, id=msg_id)
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        while True:
            frame = await recv(ws)
            if frame["event"] == "ack" and frame.get("id") == msg_id:
                return seen, frame["payload"]
            assert frame["event"] != "error", frame
            seen.append(frame)


async def numbered_frames(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    stashed = _stash.pop(id(ws), [])
    seen = [frame for frame in stashed if frame["event"] == "n"]
    with anyio.fail_after(10):
        while len(seen) < count:
            frame = json.loads(await ws.recv())
            if frame["event"] == "n":
                seen.append(frame)
    assert len(seen) == count, seen
    return seen


def check_sequence(frames: list[dict[str, Any]], first_offset: int, epoch: str) -> None:
    offsets = [f["offset"] for f in frames]
    assert offsets == list(range(first_offset, first_offset + len(frames))), offsets
    assert {f["epoch"] for f in frames} == {epoch}
    assert {f["room"] for f in frames} == {"r:1"}


class LiveDuringReplay(MemoryBackend):
    """Publishes ``burst`` live frames to the room between the join and the history read:
    they are in the history *and* reach the joiner live, the overlap recovery must undo."""

    def __init__(self) -> None:
        super().__init__()
        self.manager: WebSocketManager | None = None
        self.burst = 0
        self.next_i = 0

    async def read_history(self, room: str, keep: RoomHistory, since: Any, limit: Any) -> Any:
        burst, self.burst = self.burst, 0
        assert self.manager is not None
        for _ in range(burst):
            await self.manager.broadcast_to_room(room, "n", {"i": self.next_i})
            self.next_i += 1
        page = await super().read_history(room, keep, since, limit)
        for _ in range(burst):  # and more after the read: only the hold has these
            await self.manager.broadcast_to_room(room, "n", {"i": self.next_i})
            self.next_i += 1
        return page


async def test_frames_carry_room_offset_and_epoch_at_the_top_level() -> None:
    manager = WebSocketManager()
    manager.configure_rooms("r:*", history=RoomHistory(size=100))
    with serve(make_app(manager)) as live:
        async with client(live.ws_url("/ws")) as ws:
            joined = await request(ws, "join", {"room": "r:1"}, 1)
            assert joined["offset"] == 0 and joined["recovered"] is False
            epoch = joined["epoch"]
            assert isinstance(epoch, str) and epoch
            await request(ws, "publish", {"room": "r:1", "count": 2}, 2)
            frames = await numbered_frames(ws, 2)
            assert frames[0] == {
                "event": "n",
                "payload": {"i": 0},
                "room": "r:1",
                "offset": 1,
                "epoch": epoch,
            }
            assert frames[1]["offset"] == 2
            # A room without history: the plain envelope, as before.
            await request(ws, "join", {"room": "plain"}, 3)
            await request(ws, "publish", {"room": "plain"}, 4)
            (frame,) = await numbered_frames(ws, 1)
            assert frame == {"event": "n", "payload": {"i": 0}}


async def test_reconnect_recovers_50_missed_frames_in_order_then_live() -> None:
    manager = WebSocketManager()
    manager.configure_rooms("r:*", history=RoomHistory(size=100, ttl=300))
    with serve(make_app(manager)) as live:
        async with client(live.ws_url("/ws")) as sender:
            await request(sender, "join", {"room": "r:1"}, 1)
            async with client(live.ws_url("/ws")) as away:
                await request(away, "join", {"room": "r:1"}, 1)
                await request(sender, "publish", {"room": "r:1", "count": 3}, 2)
                seen = await numbered_frames(away, 3)
                position = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
            # Away: 50 frames it does not get.
            await request(sender, "publish", {"room": "r:1", "start": 3, "count": 50}, 3)
            async with client(live.ws_url("/ws")) as back:
                replay, ack = await rejoin(back, {"room": "r:1", "since": position})
                assert ack == {
                    "room": "r:1",
                    "recovered": True,
                    "offset": 53,
                    "epoch": position["epoch"],
                }
                assert [f["payload"]["i"] for f in replay] == list(range(3, 53))
                check_sequence(replay, 4, position["epoch"])
                await request(sender, "publish", {"room": "r:1", "start": 53}, 4)
                (next_frame,) = await numbered_frames(back, 1)
                assert next_frame["offset"] == 54 and next_frame["payload"] == {"i": 53}


async def test_live_frames_during_the_replay_wait_and_come_once_in_order() -> None:
    backend = LiveDuringReplay()
    manager = WebSocketManager(backend=backend)
    backend.manager = manager
    manager.configure_rooms("r:*", history=RoomHistory(size=100))
    with serve(make_app(manager)) as live:
        async with client(live.ws_url("/ws")) as sender:
            await request(sender, "join", {"room": "r:1"}, 1)
            async with client(live.ws_url("/ws")) as away:
                await request(away, "join", {"room": "r:1"}, 1)
                await request(sender, "publish", {"room": "r:1", "count": 1}, 2)
                (first,) = await numbered_frames(away, 1)
                position = {"offset": first["offset"], "epoch": first["epoch"]}
            await request(sender, "publish", {"room": "r:1", "start": 1, "count": 50}, 3)
            backend.next_i = 51
            backend.burst = 5  # 5 live frames before the history read, 5 after it
            async with client(live.ws_url("/ws")) as back:
                before_ack, ack = await rejoin(back, {"room": "r:1", "since": position})
                assert ack["recovered"] is True
                # Every frame once, in order: the 50 missed, the 5 published during the
                # join (in history and held), the 5 after the read (held only).
                assert [f["payload"]["i"] for f in before_ack] == list(range(1, 61))
                check_sequence(before_ack, 2, position["epoch"])
                assert ack["offset"] == 61
                await request(sender, "publish", {"room": "r:1", "start": 61}, 4)
                (after,) = await numbered_frames(back, 1)
                assert after["offset"] == 62


async def test_not_recovered_when_the_window_is_exceeded_or_the_epoch_differs() -> None:
    manager = WebSocketManager()
    manager.configure_rooms("r:*", history=RoomHistory(size=10))
    with serve(make_app(manager)) as live:
        async with client(live.ws_url("/ws")) as ws:
            joined = await request(ws, "join", {"room": "r:1"}, 1)
            epoch = joined["epoch"]
            await request(ws, "publish", {"room": "r:1", "count": 30}, 2)
            await numbered_frames(ws, 30)
        async with client(live.ws_url("/ws")) as back:
            # 30 frames since offset 5, 10 kept: the gap is not covered.
            replay, ack = await rejoin(
                back, {"room": "r:1", "since": {"offset": 5, "epoch": epoch}}
            )
            assert replay == []
            assert ack == {"room": "r:1", "recovered": False, "offset": 30, "epoch": epoch}
        async with client(live.ws_url("/ws")) as back:
            replay, ack = await rejoin(
                back, {"room": "r:1", "since": {"offset": 25, "epoch": epoch}}
            )
            assert ack["recovered"] is True
            assert [f["offset"] for f in replay] == [26, 27, 28, 29, 30]
        async with client(live.ws_url("/ws")) as back:
            stale = {"offset": 29, "epoch": "not-" + epoch}
            replay, ack = await rejoin(back, {"room": "r:1", "since": stale})
            assert replay == [] and ack["recovered"] is False and ack["epoch"] == epoch


async def test_a_restarted_memory_backend_has_a_new_epoch() -> None:
    manager = WebSocketManager()
    manager.configure_rooms("r:*", history=RoomHistory(size=10))
    app = make_app(manager)
    with serve(app) as live:
        async with client(live.ws_url("/ws")) as ws:
            await request(ws, "join", {"room": "r:1"}, 1)
            await request(ws, "publish", {"room": "r:1", "count": 3}, 2)
            last = (await numbered_frames(ws, 3))[-1]
    with serve(app) as live:  # the app's lifespan stops and starts the manager
        async with client(live.ws_url("/ws")) as ws:
            await request(ws, "publish", {"room": "r:1", "count": 1}, 2)
            position = {"offset": last["offset"], "epoch": last["epoch"]}
            replay, ack = await rejoin(ws, {"room": "r:1", "since": position})
            assert replay == [] and ack["recovered"] is False
            assert ack["epoch"] != last["epoch"] and ack["offset"] == 1


async def test_history_reads_and_per_call_choices() -> None:
    manager = WebSocketManager()
    manager.configure_rooms("r:*", history=RoomHistory(size=5))
    async with manager:
        for i in range(8):
            await manager.broadcast_to_room("r:1", "n", {"i": i})
        await manager.broadcast_to_room("r:1", "typing", {}, history=False)
        page = await manager.history("r:1")
        assert isinstance(page, HistoryPage) and page.complete and page.offset == 8
        assert [e.offset for e in page.entries] == [4, 5, 6, 7, 8]
        assert [e.payload["i"] for e in page.entries] == [3, 4, 5, 6, 7]
        assert page.entries[0].event == "n"
        assert [e.offset for e in (await manager.history("r:1", limit=2)).entries] == [7, 8]
        since = Position(5, page.epoch)
        after = await manager.history("r:1", since=since, limit=2)
        assert after.complete and [e.offset for e in after.entries] == [6, 7]
        gone = await manager.history("r:1", since=Position(1, page.epoch))
        assert not gone.complete and gone.entries == []
        with pytest.raises(ValueError, match="keeps no history"):
            await manager.history("plain")
        keep = RoomHistory(size=2)
        await manager.broadcast_to_room("adhoc", "n", {"i": 0}, history=keep)
        assert (await manager.history("adhoc", history=keep)).offset == 1
        # join_room without since keeps answering a bool; with it, a JoinResult.
        assert await manager.join_room("nobody", "r:1") is False
        result = await manager.join_room("nobody", "r:1", since=None)
        assert isinstance(result, JoinResult) and not result


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a bound"):
        RoomHistory(size=None, ttl=None)
    with pytest.raises(ValueError, match="size"):
        RoomHistory(size=0)
    with pytest.raises(ValueError, match="ttl"):
        RoomHistory(ttl=float("inf"))
    with pytest.raises(ValueError, match="offset"):
        Position(-1, "e")
    manager = WebSocketManager()
    with pytest.raises(ConfigurationError, match="presence_events"):
        manager.configure_rooms("r:*", presence_events="everyone")  # type: ignore[arg-type]
