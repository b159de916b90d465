"""Room history and recovery: positions, the per-room rules, replay without gap or duplicate.

A room that keeps history gives each frame broadcast to it a position: an ``offset`` that
grows by exactly 1 per frame in that room (across every process of the backend) and an
``epoch`` that changes whenever the room's history was lost. A client that comes back with
its last position gets every frame it missed, in order, exactly once, before any live frame
of that room (docs/rooms.md, "History and recovery").
"""

from __future__ import annotations

import fnmatch
import math
import secrets
import time
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic_core import from_json

from ._outbox import settle
from .protocol import position_tail

if TYPE_CHECKING:
    from .manager import WebSocketManager

__all__ = ["HistoryEntry", "HistoryPage", "JoinResult", "Position", "RoomHistory"]

PresenceEvents = Literal["client", "user"] | None


@dataclass(frozen=True, slots=True)
class RoomHistory:
    """How much of a room's traffic to keep for recovery: the last ``size`` frames and/or
    the frames of the last ``ttl`` seconds (both: whichever keeps fewer).

    Args:
        size: frames kept per room (default 100); ``None``: no count bound (then ``ttl``
            is required).
        ttl: seconds a frame is kept; ``None``: no age bound.
        meta_ttl: seconds a room's position (offset and epoch) is remembered after its last
            frame (default one day). After that the room starts over with a new epoch, and a
            client that comes back later is told ``recovered: false``.

    Raises:
        ValueError: no bound at all, or a bound that is not a positive finite number.

    Example:
        ```python
        manager.configure_rooms("chat:*", history=RoomHistory(size=100, ttl=300))
        ```
    """

    size: int | None = 100
    ttl: float | None = None
    meta_ttl: float = 86400.0

    def __post_init__(self) -> None:
        if self.size is None and self.ttl is None:
            raise ValueError("RoomHistory needs a bound: size (frames) and/or ttl (seconds)")
        if self.size is not None and (type(self.size) is not int or self.size < 1):
            raise ValueError(f"RoomHistory.size must be an int >= 1, not {self.size!r}")
        for name in ("ttl", "meta_ttl"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ValueError(f"RoomHistory.{name} must be a positive number of seconds")
        if self.ttl is not None and self.meta_ttl < self.ttl:
            raise ValueError("RoomHistory.meta_ttl must be at least ttl")

    @property
    def ttl_ms(self) -> int:
        """``ttl`` in milliseconds (0: none)."""
        return 0 if self.ttl is None else max(1, int(self.ttl * 1000))


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client is in a room's history: the last ``offset`` it saw, in ``epoch``.

    Built from what a client sends back (``{"offset": 17, "epoch": "a1b2"}``, the values of
    the last frame it got from the room, or of its join's answer).

    Raises:
        ValueError: ``offset`` is not an int >= 0 or ``epoch`` is not a str of 1-64 characters.
    """

    offset: int
    epoch: str

    def __post_init__(self) -> None:
        if type(self.offset) is not int or self.offset < 0:
            raise ValueError(f"Position.offset must be an int >= 0, not {self.offset!r:.40}")
        if not isinstance(self.epoch, str) or not 0 < len(self.epoch) <= 64:
            raise ValueError("Position.epoch must be a str of 1 to 64 characters")


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What [`join_room`][fastapi_orcs_ws.WebSocketManager.join_room] did when called with
    ``since=``. True when the client joined (``if await manager.join_room(...)``).

    ``offset`` and ``epoch`` are the client's new baseline in the room: the last frame
    written to it (replayed or live), or the room's latest when nothing was; both ``None``
    in a room without history. ``recovered`` is True when every frame after ``since`` was
    replayed (``replayed`` of them); False when the history no longer covers the gap, the
    epoch changed, or no position was given: nothing was replayed, the client should reload
    the room's state. [`as_payload`][fastapi_orcs_ws.JoinResult.as_payload] is the answer a
    ``join`` handler returns.
    """

    joined: bool
    recovered: bool = False
    offset: int | None = None
    epoch: str | None = None
    replayed: int = 0

    def __bool__(self) -> bool:
        return self.joined

    def as_payload(self, room: str) -> dict[str, Any]:
        """``{"room", "recovered", "offset", "epoch"}`` (the last two only in a room with
        history): the answer the bundled clients read after a join."""
        answer: dict[str, Any] = {"room": room, "recovered": self.recovered}
        if self.epoch is not None:
            answer["offset"] = self.offset
            answer["epoch"] = self.epoch
        return answer


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One frame of a room's history: its ``offset`` and the exact text clients got."""

    offset: int
    frame: str

    @property
    def event(self) -> str:
        """The frame's event name."""
        return str(from_json(self.frame)["event"])

    @property
    def payload(self) -> Any:
        """The frame's payload, as JSON values."""
        return from_json(self.frame)["payload"]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A read of a room's history.

    ``offset``/``epoch``: the room's latest position (``0`` and ``""`` for a room with no
    history yet). ``complete``: with ``since``, whether every frame after it is still kept
    in the same epoch (then ``entries`` start right after it); without, always True.
    """

    offset: int
    epoch: str
    complete: bool
    entries: list[HistoryEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RoomRule:
    """What [`configure_rooms`][fastapi_orcs_ws.WebSocketManager.configure_rooms] set for a
    room name pattern."""

    pattern: str
    history: RoomHistory | None = None
    presence_events: PresenceEvents = None


class RoomRules:
    """Per-pattern room settings; the first pattern that matches a room wins."""

    __slots__ = ("_cache", "rules")

    CACHE_SIZE = 4096

    def __init__(self) -> None:
        self.rules: list[RoomRule] = []
        self._cache: dict[str, RoomRule | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def add(self, rule: RoomRule) -> None:
        self.rules = [r for r in self.rules if r.pattern != rule.pattern] + [rule]
        self._cache.clear()

    def for_room(self, room: str) -> RoomRule | None:
        cache = self._cache
        try:
            return cache[room]
        except KeyError:
            pass
        found = next((r for r in self.rules if fnmatch.fnmatchcase(room, r.pattern)), None)
        if len(cache) >= self.CACHE_SIZE:
            cache.clear()  # bounded: many distinct rooms must not grow it forever
        cache[room] = found
        return found

    def presence(self) -> bool:
        return any(r.presence_events for r in self.rules)


def new_epoch() -> str:
    """A fresh epoch: 12 hex digits (a history that restarts never reuses one)."""
    return secrets.token_hex(6)


class _RoomLog:
    __slots__ = ("entries", "epoch", "last", "offset")

    def __init__(self) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        self.last = time.monotonic()
        self.entries: deque[tuple[int, float, str]] = deque()


class MemoryHistory:
    """The history of one process's rooms, in bounded deques (the memory backend's)."""

    __slots__ = ("_appends", "_rooms")

    SWEEP_EVERY = 1024

    def __init__(self) -> None:
        self._rooms: dict[str, _RoomLog] = {}
        self._appends = 0

    def clear(self) -> None:
        self._rooms.clear()

    def append(self, room: str, head: str, keep: RoomHistory) -> tuple[str, int, str]:
        """Give the next position to a frame; returns ``(frame, offset, epoch)``."""
        now = time.monotonic()
        log = self._log(room, keep, now)
        if log is None:
            log = self._rooms[room] = _RoomLog()
        log.offset += 1
        log.last = now
        frame = head + str(log.offset) + position_tail(log.epoch)
        entries = log.entries
        entries.append((log.offset, now, frame))
        if keep.size is not None:
            while len(entries) > keep.size:
                entries.popleft()
        self._expire(log, keep, now)
        self._appends += 1
        if self._appends % self.SWEEP_EVERY == 0:
            self._sweep(keep, now)
        return frame, log.offset, log.epoch

    def read(
        self, room: str, keep: RoomHistory, since: Position | None, limit: int | None
    ) -> HistoryPage:
        log = self._log(room, keep, time.monotonic())
        if log is None:  # the room's epoch starts now: a first join gets a baseline
            log = self._rooms[room] = _RoomLog()
        return page_of(log.epoch, log.offset, [(o, f) for o, _, f in log.entries], since, limit)

    def _log(self, room: str, keep: RoomHistory, now: float) -> _RoomLog | None:
        log = self._rooms.get(room)
        if log is not None and now - log.last > keep.meta_ttl:
            del self._rooms[room]  # forgotten: the next frame starts a new epoch
            return None
        if log is not None:
            self._expire(log, keep, now)
        return log

    @staticmethod
    def _expire(log: _RoomLog, keep: RoomHistory, now: float) -> None:
        if keep.ttl is not None:
            entries, oldest = log.entries, now - keep.ttl
            while entries and entries[0][1] < oldest:
                entries.popleft()

    def _sweep(self, keep: RoomHistory, now: float) -> None:
        idle = [room for room, log in self._rooms.items() if now - log.last > keep.meta_ttl]
        for room in idle:
            del self._rooms[room]


def page_of(
    epoch: str,
    top: int,
    entries: list[tuple[int, str]],
    since: Position | None,
    limit: int | None,
) -> HistoryPage:
    """The page a history read answers, from a contiguous run of entries ending at ``top``."""
    if since is None:
        chosen = entries if limit is None else entries[max(0, len(entries) - limit) :]
        if limit == 0:
            chosen = []
        return HistoryPage(top, epoch, True, [HistoryEntry(o, f) for o, f in chosen])
    if since.epoch != epoch or since.offset > top:
        return HistoryPage(top, epoch, False)
    missed = top - since.offset
    first = entries[0][0] if entries else top + 1
    if missed and first > since.offset + 1:
        return HistoryPage(top, epoch, False)
    chosen = entries[len(entries) - missed :] if missed else []
    if limit is not None:
        chosen = chosen[:limit]
    return HistoryPage(top, epoch, True, [HistoryEntry(o, f) for o, f in chosen])


class Hold:
    """Live frames of one room held back for one client while its replay is written.

    Once the replay is written, ``floor`` is the last offset the client got: a frame that
    reaches this process later but was already replayed (read from the history before its
    own delivery arrived, as pub/sub can lag behind the history read) is dropped; the first
    frame past the floor ends the hold, since a room's frames arrive in offset order.
    """

    __slots__ = ("floor", "frames")

    def __init__(self) -> None:
        self.frames: list[tuple[int, str]] = []
        self.floor: int | None = None


def held_recipients(
    holds: dict[str, dict[str, Hold]], client_ids: Iterable[str] | None, exclude: Collection[str]
) -> list[str]:
    """The clients with a hold among a fan-out's recipients."""
    if client_ids is None:
        return [cid for cid in holds if cid not in exclude]
    ids = client_ids if isinstance(client_ids, dict | set | frozenset) else set(client_ids)
    return [cid for cid in holds if cid in ids and cid not in exclude]


async def join_and_recover(
    manager: WebSocketManager,
    client_id: str,
    room: str,
    since: Position | None,
    keep: RoomHistory | None,
    presence_events: PresenceEvents,
) -> JoinResult:
    """Join, replay what ``since`` missed, then release the live frames held meanwhile.

    Every frame reaches the client once: a frame published before the join is in the
    history read after it; one published after the join is held (a frame may be both:
    the offsets tell). The release happens in one synchronous step, so no live frame of the
    room can slip in between the replay and the held frames.
    """
    if since is not None and not isinstance(since, Position):
        raise TypeError(f"since is a Position or None, not {type(since).__name__}")
    backend = manager.backend
    conn = manager.get_connection(client_id)
    announce_join = presence_events is not None
    if announce_join:
        announce_join = room not in await backend.client_rooms(client_id)
    if keep is None:
        joined = await backend.join(client_id, room, manager.settings.max_rooms_per_client)
        if joined and announce_join:
            await _announce_join(manager, client_id, room)
        return JoinResult(joined)
    if since is not None and conn is None and await backend.has_client(client_id):
        raise ValueError(
            f"client {client_id[:80]} is connected to another process: join it with since= "
            "there (its own join handler), where its replay can be written before live frames"
        )
    holds = manager._holds
    hold = None
    if since is not None and conn is not None:
        hold = Hold()
        holds.setdefault(client_id, {})[room] = hold
    try:
        joined = await backend.join(client_id, room, manager.settings.max_rooms_per_client)
        if not joined:
            return JoinResult(False)
        page = await backend.read_history(room, keep, since, None)
        recovered = since is not None and page.complete
        last = since.offset if recovered and since is not None else page.offset
        replayed = 0
        if recovered and conn is not None:
            pending: list[Any] = []
            for entry in page.entries:
                if not conn.deliver({"type": "websocket.send", "text": entry.frame}, pending):
                    break
                last = entry.offset
                replayed += 1
                if len(pending) > 1 or replayed % 64 == 0:
                    await settle(pending)  # flow control; live frames keep waiting in the hold
                    pending = []
            if pending:
                await settle(pending)
        if hold is not None and conn is not None:
            # One synchronous step: the held frames, in order, then live delivery resumes.
            for offset, frame in sorted(hold.frames, key=_offset_key):
                if offset > last and conn.deliver({"type": "websocket.send", "text": frame}, None):
                    last = offset
            hold.frames.clear()
            hold.floor = last  # kept until a frame past it arrives (see Hold)
            hold = None
    finally:
        if hold is not None:
            _drop_hold(holds, client_id, room, hold)
    if announce_join:
        await _announce_join(manager, client_id, room)
    return JoinResult(True, recovered, last, page.epoch or None, replayed)


def _offset_key(item: tuple[int, str]) -> int:
    return item[0]


def _drop_hold(holds: dict[str, dict[str, Hold]], client_id: str, room: str, hold: Hold) -> None:
    rooms = holds.get(client_id)
    if rooms is not None and rooms.get(room) is hold:
        del rooms[room]
        if not rooms:
            del holds[client_id]


async def _announce_join(manager: WebSocketManager, client_id: str, room: str) -> None:
    from .presence import PRESENCE_JOIN, announce

    info = await manager._presence_info(client_id)
    await announce(manager, PRESENCE_JOIN, client_id, (room,), info)
