"""The Redis backend: membership in Redis, frames between processes over pub/sub.

``redis://host:port/db`` or ``rediss://...`` (``pip install fastapi-orcs-ws[redis]``).
Options of this backend go in the query string; the others are redis-py's own
(``socket_timeout``, ``password``, ...)::

    redis://redis:6379/0?node_ttl=10&heartbeat=3&prefix=chat:

``node_ttl``    seconds a node counts as alive after its last heartbeat (default 10)
``heartbeat``   seconds between heartbeats and dead-node sweeps (default ``node_ttl / 3``)
``prefix``      prefix of every key and channel (default ``orcs:``)
``max_frame``   largest frame in bytes that may be published (default: the manager's
                ``max_payload_length``)
``node_id``     this process's id (default: host, pid and a random suffix)
``max_connections``  size of the connection pool; callers beyond it wait (default 50)

A node whose heartbeat lapsed has its clients handed over within ``node_ttl + heartbeat``
seconds (13.3 s by default) to one process that serves their route, which runs their
disconnect logic once, then removes them (docs/scaling.md). Keys (``P`` is the prefix):

=============================  ====================================================
``P nodes``                    set of registered node ids
``P alive:{node}``             heartbeat (the process's token), expires after ``node_ttl``
``P node-routes:{node}``       set of the routes a node serves
``P node-clients:{node}``      set of the clients a node holds
``P owner``                    hash client id -> node id (its size: the connections)
``P client-info``              hash client id -> JSON info (its route, ...)
``P client-rooms:{client}``    set of a client's rooms
``P members:{room}``           set of a room's clients
``P room-nodes:{room}``        hash node id -> how many of the room's clients it holds
``P rooms``                    set of non-empty rooms
``P memberships``              the sum of all room sizes
``P closing``                  set of clients whose disconnect logic has started
``P vanished``                 hash client id -> route, of clients waiting for a claimer
``P vanished:{route}``         set of those clients, per route
``P vanished-routes``          set of the routes with clients waiting
``P claimed``                  hash client id -> the node running its disconnect logic
``P claims:{node}``            set of the clients a node claimed
``P resyncing``                for ``node_ttl`` after Redis lost its data: route via ``all``
``P user-clients:{user}``      set of an authenticated user's clients (presence, per user)
``P hist-meta:{room}``         hash ``e`` (epoch), ``o`` (last offset) of a room with history
``P hist:{room}``              stream of its frames (``o`` offset, ``f`` frame), bounded
=============================  ====================================================

Channels: ``P node:{node}`` (frames and commands for one node's clients) and ``P all``
(broadcasts). A room's frame is published only to the nodes in ``room-nodes``, a
direct frame only to the owner's channel. Local recipients never go through Redis.

A message between nodes is a one-line JSON header, a newline, then the frame as the
manager encoded it (never re-encoded): ``{"v":1,"k":"room","o":"node-a","r":"general",
"x":["c1"]}\\n{"event":...}``. Kinds: ``all``, ``room``, ``client`` (a frame), ``close``,
``join``, ``leave`` (commands for the owner of a client), ``close-user`` (on ``all``: close
every local connection of user ``u``), ``user`` (on ``all``: a frame for every local
connection of user ``u``). A room frame with a position (``"h":1``) goes to its sender's
node too, so that every node delivers a room's frames in the order Redis positioned them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import BackendError, ConfigurationError
from ..history import HistoryEntry, HistoryPage, Position, RoomHistory, new_epoch
from ..protocol import unpositioned
from ._redis_scripts import LIB, SCRIPTS
from .base import Backend, BackendStats, Node
from .rooms import RoomIndex, too_many_rooms

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["RedisBackend"]

logger = logging.getLogger("fastapi_orcs_ws.redis")

VERSION = 1
T = TypeVar("T")

CHUNK = 100
"""Most memberships or clients one script call handles: a few milliseconds of Redis time."""
MAX_REAP_ROUNDS = 100
"""Script calls one sweep makes at most; what is left waits for the next heartbeat."""
SUBSCRIBE_TIMEOUT = 5.0
"""Seconds `RedisBackend.start` waits for its subscription when Redis answers."""
LEAVE_DEADLINE = 5.0
"""Seconds `RedisBackend.stop` spends handing this node's clients over."""
_UNROUTED = {
    1: "its node is not listening",
    2: "Redis lost its data, so it was sent to every node, and a node that may hold it was not "
    "listening",
}
"""Why the ``send`` script could not deliver, by the code it returns."""
VANISHED_CONCURRENCY = 64
"""Disconnect handlers of vanished clients one node runs at once (each client's own task)."""
LOSS_LOG_INTERVAL = 5.0
"""Seconds between two warnings about lost frames (each says how many since the last)."""
FULL = "full"
"""The join script's reply when the client is in the most rooms allowed already."""

_OPTIONS = ("node_ttl", "heartbeat", "prefix", "max_frame", "node_id", "max_connections")


class RedisBackend(Backend):
    """Membership in Redis and delivery over pub/sub, for several processes or hosts.

    Example:
        ```python
        manager = WebSocketManager(backend="redis://localhost:6379/0?node_ttl=10")
        # or WS_BACKEND_URL=redis://localhost:6379/0
        ```

    A process without sockets (a worker) uses the same URL and calls
    ``broadcast_to_room`` or ``send_to_client``; it never runs another process's
    disconnect logic (it serves no route).
    """

    name = "redis"
    history_support = True

    def __init__(self, url: str, *, max_frame: int | None = None) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "WS_BACKEND_URL is a redis:// URL but redis-py is not installed: "
                "pip install fastapi-orcs-ws[redis]"
            ) from None
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        options = {k: v for k, v in query if k in _OPTIONS}
        self._url = urlunsplit(
            parts._replace(query=urlencode([(k, v) for k, v in query if k not in _OPTIONS]))
        )
        try:
            self.node_ttl = float(options.get("node_ttl", 10))
            self.heartbeat = float(options.get("heartbeat", self.node_ttl / 3))
            self.max_connections = int(options.get("max_connections", 50))
            frame_limit = options.get("max_frame")
            self.max_frame = int(frame_limit) if frame_limit else max_frame
        except ValueError as exc:
            raise ConfigurationError(f"WS_BACKEND_URL: invalid option: {exc}") from None
        if not 0 < self.heartbeat < self.node_ttl:
            raise ConfigurationError("WS_BACKEND_URL: need 0 < heartbeat < node_ttl")
        self.prefix = options.get("prefix", "orcs:")
        self.node_id = options.get("node_id") or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._node: Node | None = None
        self._redis: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()
        # This node's clients and their rooms: the truth for local delivery, and what
        # is written back to Redis after an outage.
        self._index = RoomIndex()
        self._info: dict[str, str] = {}  # client -> JSON info, kept for reaping and re-sync
        self._closing: set[str] = set()  # local clients whose disconnect logic started
        self._removed: set[str] = set()  # removed here; not yet known to be removed in Redis
        # Removed while a resync ran: its chunks, taken from an earlier view, may have
        # written them back, so they are removed again once it ends.
        self._removed_in_sync: set[str] | None = None
        self._claims: set[str] = set()  # vanished clients this node claimed, not yet finished
        self._in_handler: set[str] = set()  # claimed clients whose disconnect logic runs now
        self._peers = "{}"  # JSON {node: clients it holds} of the live peers at the last sweep
        # After Redis forgot this node: the peers it knew before, kept in _peers until they
        # have had time to register again (monotonic deadline), so frames for a peer that is
        # not listening yet are counted as lost even though Redis does not know that peer.
        self._peers_before: tuple[float, dict[str, int]] | None = None
        self._token = uuid.uuid4().hex  # this run of the process, in its heartbeat key
        self._beats = 0
        self._synced = False  # a full sync of this run succeeded (strays were handed over)
        self._fixed_id = bool(options.get("node_id"))
        self._mutations = 0
        self._dirty = True
        self._stopping = False
        self._wake = asyncio.Event()
        self._gone_slots = asyncio.Semaphore(VANISHED_CONCURRENCY)
        self._peer_message = self._message("peer")
        self._kick_listener = asyncio.Event()
        self._subscription = asyncio.Event()
        # Health and loss counters
        self._down = False
        self._listening = False
        self._publish_failures = 0
        self._frames_lost = 0
        self._unlogged_failures = 0
        self._unlogged_lost = 0
        self._last_loss_log = -LOSS_LOG_INTERVAL
        self._reconnects = 0
        self._reaped = 0
        self._claimed = 0
        self._orphaned = 0
        self._not_rerun = 0
        self._last_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, node: Node) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._node = node
        self._dirty = True
        self._stopping = False
        if self.max_frame is None:
            limit: int | None = node.max_payload_length
            self.max_frame = limit if isinstance(limit, int) else None
        # No hidden retries: a failure surfaces here, is counted and handled once.
        # A blocking pool: a burst of joins (a thousand clients connecting at once) waits
        # for a connection instead of failing with MaxConnectionsError.
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self.max_connections,
            timeout=5.0,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = Redis.from_pool(pool)  # owns the pool: aclose() closes its sockets
        self._scripts = {
            name: self._redis.register_script(LIB + body) for name, body in SCRIPTS.items()
        }
        if self._fixed_id:
            await self._refuse_a_live_twin()
        await self._beat()
        loop = asyncio.get_running_loop()
        self._subscription = asyncio.Event()
        self._tasks = [
            loop.create_task(self._listen(), name=f"orcs-redis-listener-{self.node_id}"),
            loop.create_task(self._heartbeat_loop(), name=f"orcs-redis-heartbeat-{self.node_id}"),
        ]
        if not self._down:
            # Started means listening: a frame for our clients sent right after start()
            # returns must reach us. (Redis away: start now, the listener keeps trying.)
            try:
                await asyncio.wait_for(self._subscription.wait(), SUBSCRIBE_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "redis listener of node %s not subscribed after %.0f s; still trying",
                    self.node_id,
                    SUBSCRIBE_TIMEOUT,
                )

    async def _refuse_a_live_twin(self) -> None:
        """A node_id set in the URL must not be in use by a live process.

        ``uvicorn --workers 4`` with one URL that fixes ``node_id`` would make four processes
        take each other's clients for a dead run's. A heartbeat under our id is either a
        previous run's (it stays as it is) or a live twin's (it changes within a heartbeat).
        """
        key = self.prefix + "alive:" + self.node_id
        ttl = int(self.node_ttl * 1000)
        try:
            # Take the heartbeat key if nobody holds it: of two processes starting together
            # with one node_id, exactly one gets it, and the other compares below.
            if await self._call(lambda r: r.set(key, f"{self._token}:start", nx=True, px=ttl)):
                return
            first = await self._call(lambda r: r.get(key))
            if first is None:
                return
            await asyncio.sleep(self.heartbeat * 1.5)
            second = await self._call(lambda r: r.get(key))
        except BackendError:
            return  # Redis is away: nothing to compare; the heartbeat reports a twin later
        if second is not None and second != first:
            assert self._redis is not None
            await self._redis.aclose()
            self._redis = None
            raise ConfigurationError(
                f"WS_BACKEND_URL: node_id={self.node_id!r} is in use by a live process (its "
                "heartbeat goes on); give each process its own node_id, or leave node_id out "
                "of the URL (one URL for uvicorn --workers N must not fix it)"
            )

    async def stop(self) -> None:
        """Stop the loops, hand this node's remaining clients over, disconnect.

        Clients still registered here (their connection was never closed) go to a
        process that serves their route, which runs their disconnect logic; clients whose
        disconnect logic started here are only removed. Returns within about
        ``LEAVE_DEADLINE`` seconds even if Redis is slow; what is left then is reaped
        after ``node_ttl``.
        """
        self._stopping = True  # the loops check it too: a swallowed cancel cannot stall us
        self._wake.set()
        self._kick_listener.set()
        tasks = [*self._tasks, *self._spawned]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                logger.warning("redis backend task %s did not stop", task.get_name())
        self._tasks.clear()
        if self._redis is not None:
            try:
                await self._leave_cluster()
            except BackendError as exc:
                logger.warning(
                    "could not remove node %s from Redis (%s); the others reap it after %.1f s",
                    self.node_id,
                    exc,
                    self.node_ttl,
                )
            await self._redis.aclose()
            self._redis = None
        self._index.clear()
        self._info.clear()
        self._closing.clear()
        self._removed.clear()
        self._claims.clear()
        self._in_handler.clear()

    async def _leave_cluster(self) -> None:
        deadline = time.monotonic() + LEAVE_DEADLINE
        handed = 0
        while True:
            done, moved = await self._run("drop", self.node_id, str(CHUNK))
            handed += int(moved)
            if done:
                break
            if time.monotonic() > deadline:
                logger.warning(
                    "node %s handed %d clients over before its deadline; the others reap "
                    "the rest after %.1f s",
                    self.node_id,
                    handed,
                    self.node_ttl,
                )
                return
        if handed:
            logger.info("node %s left; %d clients handed over", self.node_id, handed)

    # -- membership ---------------------------------------------------------------------

    async def add_client(self, client_id: str, info: Mapping[str, Any] | None = None) -> None:
        self._index.add_client(client_id)
        self._removed.discard(client_id)
        encoded = json.dumps(dict(info), separators=(",", ":"), default=str) if info else ""
        if encoded:
            self._info[client_id] = encoded
        self._mutations += 1
        await self._write("add", self.node_id, client_id, encoded)
        if len(self._index.client_rooms) == 1 and not self._down:
            # Our first client: peers learn at once that we hold some, not at their next
            # sweep, so their losses for us are counted should Redis lose its data meanwhile.
            with suppress(BackendError):
                await self._call(lambda r: r.publish(self.prefix + "all", self._peer_message))

    async def client_closing(self, client_id: str) -> None:
        if client_id not in self._index.client_rooms:
            return
        self._closing.add(client_id)
        self._mutations += 1
        await self._write("closing", client_id, self.node_id)

    async def remove_client(self, client_id: str) -> None:
        self._info.pop(client_id, None)
        self._closing.discard(client_id)
        self._index.remove_client(client_id)
        self._mutations += 1
        # Until Redis confirms, a resync must not mistake it for a client of a dead run.
        self._removed.add(client_id)
        if self._removed_in_sync is not None:
            self._removed_in_sync.add(client_id)
        if self._redis is None:
            return
        try:
            await self._remove(client_id)
        except BackendError as exc:
            self._dirty = True
            logger.warning("removal of %s not written to Redis (%s); will resync", client_id, exc)
        else:
            self._removed.discard(client_id)

    async def _remove(self, client_id: str) -> None:
        while await self._run("remove", client_id, str(CHUNK)):
            pass

    async def join(self, client_id: str, room: str, max_rooms: int = 0) -> bool:
        cap = str(max_rooms)
        rooms = self._index.client_rooms.get(client_id)
        if rooms is not None:
            new = room not in rooms
            if new and max_rooms and len(rooms) >= max_rooms:
                raise too_many_rooms(max_rooms)
            self._index.join(client_id, room)
            self._mutations += 1
            # Redis also counts the joins other processes made for this client (our view of
            # them may lag by a message): the script decides, atomically. Redis away: the
            # local view, which then takes every join, bounds it.
            written = await self._write("join", client_id, room, self.node_id, "1", "", cap)
            if written == FULL and new:
                self._index.leave(client_id, room)
                raise too_many_rooms(max_rooms)
            return True
        command = self._message("join", c=client_id, r=room)
        result = await self._run("join", client_id, room, self.node_id, "0", command, cap)
        if result == FULL:
            raise too_many_rooms(max_rooms)
        if not result:
            return False
        owner, receivers = result
        if int(receivers) == 0:
            self._lost(1, f"join of {client_id} to {room!r}: node {owner} is not listening")
        return True

    async def leave(self, client_id: str, room: str) -> bool:
        if client_id in self._index.client_rooms:
            if not self._index.leave(client_id, room):
                return False
            self._mutations += 1
            await self._write("leave", client_id, room, self.node_id, "")
            return True
        command = self._message("leave", c=client_id, r=room)
        left, receivers = await self._run("leave", client_id, room, self.node_id, command)
        if left and int(receivers) == 0:
            self._lost(1, f"leave of {client_id} from {room!r}: its node is not listening")
        return bool(left)

    async def room_clients(self, room: str) -> set[str]:
        key = self.prefix + "members:" + room
        return {str(m) for m in await self._call(lambda r: r.smembers(key))}

    async def client_rooms(self, client_id: str) -> set[str]:
        key = self.prefix + "client-rooms:" + client_id
        return {str(m) for m in await self._call(lambda r: r.smembers(key))}

    async def has_client(self, client_id: str) -> bool:
        if client_id in self._index.client_rooms:
            return True
        return bool(await self._call(lambda r: r.hexists(self.prefix + "owner", client_id)))

    async def stats(self) -> BackendStats:
        details: dict[str, Any] = {
            "node_id": self.node_id,
            "listener": "subscribed" if self._listening else "down",
            "publish_failures": self._publish_failures,
            "frames_lost": self._frames_lost,
            "reconnects": self._reconnects,
            "reaped_nodes": self._reaped,
            "claimed_clients": self._claimed,
            "orphaned_clients": self._orphaned,
            "not_rerun_clients": self._not_rerun,
            "last_error": self._last_error,
        }
        losses = {"publish_failures": self._publish_failures, "frames_lost": self._frames_lost}
        try:
            connections, rooms, memberships = await self._run("stats")
        except BackendError:
            # Redis is away: say so, and describe this process only.
            details["scope"] = "local"
            return BackendStats(
                connections=len(self._index.client_rooms),
                rooms=len(self._index.rooms),
                memberships=self._index.memberships(),
                healthy=False,
                details=details,
                **losses,
            )
        details["scope"] = "cluster"
        return BackendStats(
            connections=int(connections),
            rooms=int(rooms),
            memberships=int(memberships),
            healthy=self._listening and not self._down,
            details=details,
            **losses,
        )

    # -- delivery -----------------------------------------------------------------------

    async def publish_all(self, frame: str, exclude: Collection[str]) -> int:
        self._check_size(frame)
        local = self.node.deliver_local(frame, None, exclude)
        message = self._message("all", frame, x=list(exclude))
        result = await self._publish(
            "publish_all", self.node_id, message, _json_list(exclude), self._peers
        )
        if result is None:
            return local
        addressed, lost = result
        if lost:
            self._lost(int(lost), "a broadcast reached Redis; some nodes were not listening")
        return int(addressed)

    async def publish_room(self, room: str, frame: str, exclude: Collection[str]) -> int:
        self._check_size(frame)
        members = self._index.members(room)
        local = self.node.deliver_local(frame, members, exclude) if members else 0
        message = self._message("room", frame, r=room, x=list(exclude))
        result = await self._publish(
            "publish_room", room, self.node_id, message, _json_list(exclude), self._peers
        )
        if result is None:
            return local
        addressed, lost = result
        if lost:
            self._lost(int(lost), f"a frame to room {room!r}: some nodes were not listening")
        return int(addressed)

    async def publish_client(self, client_id: str, frame: str) -> bool:
        self._check_size(frame)
        if client_id in self._index.client_rooms:
            return self.node.deliver_local(frame, (client_id,), ()) == 1
        message = self._message("client", frame, c=client_id)
        result = await self._publish("send", client_id, self.node_id, message, self._peers)
        if result is None:
            return False
        sent, lost = result
        if lost:
            self._lost(1, f"a frame to {client_id}: {_UNROUTED[int(lost)]}")
            return False
        return bool(sent == 1)

    async def disconnect_client(self, client_id: str, code: int, reason: str) -> bool:
        if client_id in self._index.client_rooms:
            return await self.node.close_local(client_id, code, reason)
        message = self._message("close", c=client_id, code=code, reason=reason)
        sent, lost = await self._run("send", client_id, self.node_id, message, self._peers)
        if lost:
            self._lost(1, f"the close of {client_id}: {_UNROUTED[int(lost)]}")
            return False
        return bool(sent == 1)

    async def disconnect_user(self, user_id: str, code: int, reason: str) -> int:
        closed = await self.node.close_user_local(user_id, code, reason)
        message = self._message("close-user", u=user_id, code=code, reason=reason)
        try:
            _, lost = await self._run("publish_all", self.node_id, message, "[]", self._peers)
        except BackendError as exc:
            raise BackendError(
                f"closed {closed} connections of user {user_id!r:.80} here, but could not tell "
                f"the other processes ({exc}): call disconnect_user again once Redis is back"
            ) from exc
        if lost:
            self._lost(int(lost), f"the close of user {user_id!r:.80}: a node was not listening")
            # A log-out or a revoked token must not leave sockets open without a word.
            raise BackendError(
                f"closed {closed} connections of user {user_id!r:.80} here, but a process that "
                "may hold others was not listening to Redis (the close did not reach it): "
                "call disconnect_user again in a moment"
            )
        return closed

    async def publish_history(
        self, room: str, head: str, exclude: Collection[str], keep: RoomHistory
    ) -> int:
        self._check_size(head)
        # Local members too get the frame through Redis: one order for every node.
        header = json.dumps(
            {"v": VERSION, "k": "room", "o": self.node_id, "r": room, "x": list(exclude), "h": 1},
            separators=(",", ":"),
        )
        result = await self._publish(
            "publish_history",
            room,
            self.node_id,
            header,
            head,
            _json_list(exclude),
            self._peers,
            str(keep.size or 0),
            str(keep.ttl_ms),
            str(int(keep.meta_ttl * 1000)),
            new_epoch(),
        )
        if result is None:  # counted and logged: local members get it, without a position
            members = self._index.members(room)
            return self.node.deliver_local(unpositioned(head), members, exclude) if members else 0
        addressed, lost, _, _ = result
        if lost:
            self._lost(int(lost), f"a frame to room {room!r}: some nodes were not listening")
        return int(addressed)

    async def read_history(
        self, room: str, keep: RoomHistory, since: Position | None, limit: int | None
    ) -> HistoryPage:
        epoch, top, complete, flat = await self._run(
            "read_history",
            room,
            str(-1 if since is None else since.offset),
            "" if since is None else since.epoch,
            new_epoch(),
            str(keep.ttl_ms),
            str(-1 if limit is None else limit),
            str(int(keep.meta_ttl * 1000)),
        )
        entries = [HistoryEntry(int(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]
        return HistoryPage(int(top), str(epoch), bool(complete), entries)

    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        flat = await self._run("presence", room)
        return {str(flat[i]): _decode_info(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def client_info(self, client_id: str) -> dict[str, Any]:
        info = await self._call(lambda r: r.hget(self.prefix + "client-info", client_id))
        return _decode_info(str(info or ""))

    async def user_clients(self, user_id: str) -> set[str]:
        key = self.prefix + "user-clients:" + user_id
        return {str(m) for m in await self._call(lambda r: r.smembers(key))}

    async def publish_user(self, user_id: str, frame: str) -> int:
        self._check_size(frame)
        local = self.node.deliver_user_local(user_id, frame)
        message = self._message("user", frame, u=user_id)
        result = await self._publish("publish_all", self.node_id, message, "[]", self._peers)
        if result is not None and int(result[1]):
            self._lost(int(result[1]), f"a frame to user {user_id!r:.80}: a node was not listening")
        return local

    def _check_size(self, frame: str) -> None:
        limit = self.max_frame
        if limit is not None and len(frame) > limit // 4 and len(frame.encode()) > limit:
            raise BackendError(f"frame of {len(frame.encode())} bytes exceeds {limit} bytes")

    def _message(self, kind: str, frame: str = "", **header: Any) -> str:
        head = {"v": VERSION, "k": kind, "o": self.node_id, **header}
        return json.dumps(head, separators=(",", ":")) + "\n" + frame

    # -- Redis calls --------------------------------------------------------------------

    async def _call(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        """Run one command; a failure marks Redis down and raises BackendError."""
        from redis.exceptions import RedisError

        if self._redis is None:
            raise BackendError("redis backend not started")
        try:
            return await op(self._redis)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise BackendError(f"redis: {exc}") from exc

    async def _members(self, key: str) -> list[str]:
        """A set's members, read in bounded SSCAN steps (no command blocks Redis for long)."""

        async def scan(r: Redis) -> list[str]:
            return [str(m) async for m in r.sscan_iter(key, count=CHUNK)]

        return await self._call(scan)

    async def _run(self, script: str, *args: str) -> Any:
        return await self._call(lambda r: self._scripts[script](args=[self.prefix, *args]))

    async def _write(self, script: str, *args: str) -> Any:
        """Write this node's membership; if Redis is away, the heartbeat rewrites it later.

        Returns the script's reply, or None when it was not written.
        """
        if self._redis is None:
            return None  # stopped: the node's keys are already gone
        try:
            return await self._run(script, *args)
        except BackendError as exc:
            self._dirty = True
            logger.warning("membership update not written to Redis (%s); will resync", exc)
            return None

    async def _publish(self, script: str, *args: str) -> Any:
        """Publish to other nodes: at most once, counted and logged when it fails."""
        if not self._down:
            try:
                return await self._run(script, *args)
            except BackendError as exc:
                self._publish_failed(str(exc))
                return None
        self._publish_failed("redis unavailable")
        return None

    def _publish_failed(self, error: str) -> None:
        self._publish_failures += 1
        self._unlogged_failures += 1
        self._report_losses(error)

    def _lost(self, frames: int, why: str) -> None:
        self._frames_lost += frames
        self._unlogged_lost += frames
        self._report_losses(why)

    def _report_losses(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_loss_log < LOSS_LOG_INTERVAL:
            return
        logger.warning(
            "redis: other nodes' clients missed frames: %d failed publishes and %d lost "
            "frames since the last report (%d and %d in total, see get_stats()); local "
            "clients got theirs; last: %s",
            self._unlogged_failures,
            self._unlogged_lost,
            self._publish_failures,
            self._frames_lost,
            why,
        )
        self._unlogged_failures = self._unlogged_lost = 0
        self._last_loss_log = now

    def _failed(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        if not self._down:
            logger.warning("redis unavailable (%s); delivering locally only", self._last_error)
            self._drop_idle_connections()
            # Probe now rather than at the end of the heartbeat's wait: one broken connection
            # (an idle one closed by Redis's `timeout` or a proxy) is not an outage.
            self._wake.set()
        self._down = True
        self._dirty = True

    def _drop_idle_connections(self) -> None:
        # The idle connections point at the Redis that failed: drop them, so the first
        # commands after it is back open fresh ones instead of failing one by one.
        if self._redis is not None:
            self._spawn(self._redis.connection_pool.disconnect(inuse_connections=False))

    # -- heartbeat, resync and reaping --------------------------------------------------

    async def _beat(self) -> None:
        """Heartbeat, write membership back if needed, finish claims, reap dead nodes."""
        routes = _json_list(sorted(self.node.served_routes()))
        try:
            registered, foreign = await self._run(
                "heartbeat",
                self.node_id,
                str(int(self.node_ttl * 1000)),
                f"{self._token}:{self._beats}",
                routes,
                "1" if self._beats else "0",
                self._token,
            )
            if foreign and self._beats:
                logger.error(
                    "another process beats with node_id %r: give every process its own "
                    "node_id (or leave it out of WS_BACKEND_URL)",
                    self.node_id,
                )
            if registered and self._beats:
                deadline = time.monotonic() + self.node_ttl + self.heartbeat
                self._peers_before = (deadline, json.loads(self._peers))
                logger.warning(
                    "redis forgot node %s (it restarted empty, or reaped this node while it "
                    "was cut off); rewriting its membership, room frames go to every node "
                    "for %.1f s",
                    self.node_id,
                    self.node_ttl,
                )
            self._beats += 1
            if registered or self._dirty:
                await self._sync()
        except BackendError:
            return
        if self._down:
            self._down = False
            self._kick_listener.set()
            logger.warning("redis reachable again; membership of node %s rewritten", self.node_id)
        await self._finish_claims(list(self._claims - self._in_handler))
        await self._reap(routes)

    async def _sync(self) -> None:
        """Make Redis hold this node's view, in bounded chunks; hand strays over."""
        outer = self._removed_in_sync
        removed: set[str] = set()
        self._removed_in_sync = removed
        try:
            await self._write_view()
        finally:
            self._removed_in_sync = outer
            if outer is not None:
                outer |= removed
        # A chunk written from the earlier view may have put a client removed meanwhile back.
        again = removed - self._index.client_rooms.keys()
        self._removed |= again
        try:
            for cid in again:
                await self._remove(cid)
                self._removed.discard(cid)
        except BackendError:
            self._dirty = True  # what is left in _removed is removed by the next sync
            raise
        await self._hand_over_strays("node-clients:", "hand_over_clients", self._index.client_rooms)
        await self._hand_over_strays("claims:", "hand_over_claims", self._claims)
        self._synced = True

    async def _write_view(self) -> None:
        before = self._mutations
        self._dirty = False
        entries: list[list[Any]] = []
        size = 0
        extra: list[str] = []
        view = [(cid, list(rooms)) for cid, rooms in self._index.client_rooms.items()]
        for cid, rooms in view:
            if cid not in self._index.client_rooms:
                continue  # removed since the view was taken (a chunk write awaited)
            info, closing = self._info.get(cid, ""), int(cid in self._closing)
            for start in range(0, max(len(rooms), 1), CHUNK):
                part = rooms[start : start + CHUNK]
                if entries and size + len(part) + 1 > CHUNK:
                    extra += await self._run("sync", self.node_id, json.dumps(entries))
                    entries, size = [], 0
                final = len(rooms) if start + CHUNK >= len(rooms) else -1
                entries.append([cid, info, closing, part, final])
                size += len(part) + 1
        if entries:
            extra += await self._run("sync", self.node_id, json.dumps(entries))
        for cid in extra:  # Redis has it in rooms it left here: leave them there too
            await self._leave_stray_rooms(cid)
        if self._mutations != before:
            self._dirty = True  # changed meanwhile: write again on the next beat

    async def _leave_stray_rooms(self, client_id: str) -> None:
        key = self.prefix + "client-rooms:" + client_id
        stray: list[str] = []
        for room in await self._members(key):
            rooms = self._index.client_rooms.get(client_id)
            if rooms is not None and room not in rooms:
                stray.append(room)
        for start in range(0, len(stray), CHUNK):
            part = stray[start : start + CHUNK]
            await self._run("leave_rooms", client_id, self.node_id, json.dumps(part))

    async def _hand_over_strays(self, key: str, script: str, mine: Collection[str]) -> None:
        """Entries Redis has under this node id that this process does not hold."""
        assert self._redis is not None
        stray: list[str] = []
        removed: list[str] = []
        clients = script == "hand_over_clients"
        for cid in await self._members(self.prefix + key + self.node_id):
            if cid not in mine:
                (removed if clients and cid in self._removed else stray).append(cid)
        for cid in removed:  # removed here while Redis was away: a clean close, no logic
            await self._remove(cid)
            self._removed.discard(cid)
        if stray and self._synced:
            # Only a previous run leaves entries under our id, and the first sync of this run
            # handed those over: another live process must be using this node_id.
            logger.error(
                "node %s: Redis has %d entries under this node_id that this process does not "
                "hold; another process uses node_id %r (give each process its own)",
                self.node_id,
                len(stray),
                self.node_id,
            )
            return
        handed = 0
        for start in range(0, len(stray), CHUNK):
            part = json.dumps(stray[start : start + CHUNK])
            handed += int(await self._run(script, self.node_id, part))
        if handed:
            logger.warning(
                "node %s found %d %s of a previous run under its id; handed over to a "
                "process that serves their route",
                self.node_id,
                handed,
                "clients" if script == "hand_over_clients" else "unfinished claims",
            )

    async def _reap(self, routes: str) -> None:
        for _ in range(MAX_REAP_ROUNDS):
            try:
                dead, claimed, peers, more = await self._run(
                    "reap", self.node_id, str(CHUNK), routes
                )
            except BackendError:
                return
            known = {str(n): int(c) for n, c in zip(peers[::2], peers[1::2], strict=True)}
            if self._peers_before is not None:
                deadline, before = self._peers_before
                if time.monotonic() < deadline:
                    known = before | known
                else:
                    self._peers_before = None
            self._peers = json.dumps(known)
            for node, moved, done in dead:
                if done:
                    self._reaped += 1
                logger.warning(
                    "node %s missed its heartbeat for %.1f s: %d clients handed over%s",
                    node,
                    self.node_ttl,
                    moved,
                    "" if done else " (more to come)",
                )
            if claimed:
                ids = [str(entry[0]) for entry in claimed]
                self._claims.update(ids)  # now, so that no resync takes them for strays
                self._in_handler.update(ids)
                self._spawn(self._run_claimed(claimed))
            if not more:
                return

    async def _run_claimed(self, claimed: list[list[Any]]) -> None:
        """Run the disconnect logic of claimed clients, each removed as soon as its own ends.

        The handlers run side by side (at most `VANISHED_CONCURRENCY` at once), so each
        starts within the reaping bound, however long the others take.
        """
        runs = []
        for cid, info, started, orphan in claimed:
            if started:
                self._not_rerun += 1  # its logic started on a node that died: not again
                self._in_handler.discard(str(cid))
                runs.append(self._finish_claims([str(cid)]))
                continue
            self._claimed += 1
            self._orphaned += int(orphan)
            runs.append(self._run_one_claimed(str(cid), _decode_info(info)))
        await asyncio.gather(*runs)

    async def _run_one_claimed(self, client_id: str, info: dict[str, Any]) -> None:
        try:
            async with self._gone_slots:
                await self.node.clients_gone({client_id: info})
        except asyncio.CancelledError:
            raise  # stopping: drop() hands the claim over, it is not run again
        except Exception:
            logger.exception("disconnect logic for vanished client %s failed", client_id)
        finally:
            self._in_handler.discard(client_id)
        await self._finish_claims([client_id])

    async def _finish_claims(self, client_ids: Iterable[str]) -> None:
        """Remove claimed clients whose disconnect logic ended (retried on each beat)."""
        for cid in client_ids:
            try:
                while await self._run("finish", self.node_id, cid, str(CHUNK)):
                    pass
            except BackendError:
                return  # Redis is away: the next beat retries
            self._claims.discard(cid)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            delay = min(self.heartbeat, 0.5) if self._down else self.heartbeat
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            if self._stopping:
                return
            _check_cancelled()
            self._wake.clear()
            try:
                await self._beat()
            except Exception:
                logger.exception("redis heartbeat failed")

    # -- the listener -------------------------------------------------------------------

    async def _listen(self) -> None:
        """Keep one subscription alive: reconnect with backoff, forever."""
        backoff = 0.1
        while not self._stopping:
            pubsub: PubSub | None = None
            _check_cancelled()
            try:
                assert self._redis is not None
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self.prefix + "node:" + self.node_id, self.prefix + "all")
                await self._receive(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                if self._listening:
                    backoff = 0.1
                    logger.warning("redis listener lost (%s); reconnecting", exc)
                    self._drop_idle_connections()
                # Commands may still work (only our subscription was cut): the heartbeat
                # probes now, and it alone decides that Redis is down.
                self._dirty = True
                self._wake.set()
            finally:
                self._listening = False
                if pubsub is not None:
                    with suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            # The heartbeat kicks us as soon as Redis answers again.
            self._kick_listener.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(
                    self._kick_listener.wait(), backoff * (0.5 + random.random())
                )
            backoff = min(backoff * 2, 2.0)

    async def _receive(self, pubsub: PubSub) -> None:
        last_seen = time.monotonic()
        last_ping = last_seen
        while not self._stopping:
            message = await pubsub.get_message(timeout=min(1.0, self.heartbeat))
            _check_cancelled()
            now = time.monotonic()
            if message is not None:
                last_seen = now
                kind = message["type"]
                if kind == "subscribe" and not self._listening and message["data"] == 2:
                    self._subscribed()
                elif kind == "message":
                    try:
                        self._handle(message["data"])
                    except Exception:
                        self._lost(1, "an inter-node message failed (see the error logged)")
                        logger.exception("dropped an inter-node message that failed")
                continue
            if now - last_seen > 3 * self.heartbeat:
                # Redis may drop a subscriber (output buffer limit) without redis-py raising.
                raise BackendError("no reply from redis to the listener's pings")
            if now - last_ping >= self.heartbeat:
                last_ping = now
                await pubsub.ping()

    def _subscribed(self) -> None:
        self._listening = True
        self._subscription.set()
        if self._tasks and self._last_error is not None:
            self._reconnects += 1
            logger.warning("redis listener resubscribed (reconnect %d)", self._reconnects)
        self._dirty = True
        self._wake.set()  # heartbeat now: rewrite membership, clear the outage

    def _handle(self, data: str) -> None:
        head_text, _, frame = data.partition("\n")
        try:
            head = json.loads(head_text)
        except ValueError:
            self._lost(1, "a malformed inter-node message")
            return
        if not isinstance(head, dict) or head.get("v") != VERSION:
            version = head.get("v") if isinstance(head, dict) else None
            self._lost(1, f"an inter-node message of version {version!r}")
            logger.warning("dropped an inter-node message of version %r", version)
            return
        if head.get("o") == self.node_id and not head.get("h"):
            return  # our own broadcast (local clients already have it)
        kind = head.get("k")
        node = self.node
        if kind == "room":
            members = self._index.members(head["r"])
            if members:
                node.deliver_local(frame, members, frozenset(head.get("x", ())))
        elif kind == "all":
            node.deliver_local(frame, None, frozenset(head.get("x", ())))
        elif kind == "client":
            node.deliver_local(frame, (head["c"],), ())
        elif kind == "user":
            node.deliver_user_local(head["u"], frame)
        elif kind == "close":
            self._spawn(node.close_local(head["c"], int(head["code"]), str(head["reason"])))
        elif kind == "close-user":
            self._spawn(node.close_user_local(head["u"], int(head["code"]), str(head["reason"])))
        elif kind == "peer":
            peers = json.loads(self._peers)
            if peers.get(head["o"], 0) < 1:
                peers[head["o"]] = 1
                self._peers = json.dumps(peers)
        elif kind in ("join", "leave"):
            client_id, room = head["c"], head["r"]
            index = self._index
            if kind == "join":
                changed = index.join(client_id, room)
            else:
                changed = index.leave(client_id, room)
            if changed:
                self._mutations += 1
        else:
            self._lost(1, f"an inter-node message of kind {kind!r}")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)


def _json_list(items: Iterable[str]) -> str:
    return json.dumps(list(items), separators=(",", ":"))


def _decode_info(info: str) -> dict[str, Any]:
    if not info:
        return {}
    try:
        decoded = json.loads(info)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _check_cancelled() -> None:
    """Re-raise a cancellation that redis-py turned into a read timeout."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
