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

A node whose heartbeat lapsed is reaped by exactly one survivor within about
``node_ttl + heartbeat`` seconds (13.3 s by default). Keys (``P`` is the prefix):

=============================  ====================================================
``P nodes``                    set of registered node ids
``P alive:{node}``             heartbeat string, expires after ``node_ttl``
``P node-clients:{node}``      set of the clients a node holds
``P owner``                    hash client id -> node id (its size: the connections)
``P client-rooms:{client}``    set of a client's rooms
``P members:{room}``           set of a room's clients
``P room-nodes:{room}``        hash node id -> how many of the room's clients it holds
``P rooms``                    set of non-empty rooms
``P memberships``              the sum of all room sizes
=============================  ====================================================

Channels: ``P node:{node}`` (frames and commands for one node's clients) and ``P all``
(broadcasts). A room's frame is published only to the nodes in ``room-nodes``, a
direct frame only to the owner's channel. Local recipients never go through Redis.

A message between nodes is a one-line JSON header, a newline, then the frame as the
manager encoded it (never re-encoded): ``{"v":1,"k":"room","o":"node-a","r":"general",
"x":["c1"]}\\n{"event":...}``. Kinds: ``all``, ``room``, ``client`` (a frame), ``close``,
``join``, ``leave`` (commands for the owner of a client).
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
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import BackendError, ConfigurationError
from .base import Backend, BackendStats, Node
from .rooms import RoomIndex

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["RedisBackend"]

logger = logging.getLogger("fastapi_orcs_ws.redis")

VERSION = 1
T = TypeVar("T")

_LIB = """
local P = ARGV[1]
local function leave(cid, room, owner)
  if redis.call('SREM', P..'members:'..room, cid) == 0 then return 0 end
  redis.call('SREM', P..'client-rooms:'..cid, room)
  if redis.call('HINCRBY', P..'room-nodes:'..room, owner, -1) <= 0 then
    redis.call('HDEL', P..'room-nodes:'..room, owner)
  end
  redis.call('DECR', P..'memberships')
  if redis.call('SCARD', P..'members:'..room) == 0 then
    redis.call('SREM', P..'rooms', room)
    redis.call('DEL', P..'room-nodes:'..room)
  end
  return 1
end
local function join(cid, room, owner)
  if redis.call('SADD', P..'members:'..room, cid) == 0 then return 0 end
  redis.call('SADD', P..'client-rooms:'..cid, room)
  redis.call('HINCRBY', P..'room-nodes:'..room, owner, 1)
  redis.call('INCR', P..'memberships')
  redis.call('SADD', P..'rooms', room)
  return 1
end
local function add(cid, node, info)
  redis.call('HSET', P..'owner', cid, node)
  redis.call('SADD', P..'node-clients:'..node, cid)
  if info and info ~= '' then redis.call('HSET', P..'client-info', cid, info) end
end
local function remove(cid)
  local owner = redis.call('HGET', P..'owner', cid)
  if not owner then return 0 end
  for _, room in ipairs(redis.call('SMEMBERS', P..'client-rooms:'..cid)) do
    leave(cid, room, owner)
  end
  redis.call('DEL', P..'client-rooms:'..cid)
  redis.call('HDEL', P..'owner', cid)
  redis.call('HDEL', P..'client-info', cid)
  redis.call('SREM', P..'node-clients:'..owner, cid)
  return 1
end
local function drop_node(node)
  local gone = {}
  for _, cid in ipairs(redis.call('SMEMBERS', P..'node-clients:'..node)) do
    table.insert(gone, cid)
    table.insert(gone, redis.call('HGET', P..'client-info', cid) or '')
    remove(cid)
  end
  redis.call('DEL', P..'node-clients:'..node)
  redis.call('SREM', P..'nodes', node)
  return gone
end
local function excluded(key, first)
  local n = 0
  for i = first, #ARGV do
    if redis.call('SISMEMBER', key, ARGV[i]) == 1 then n = n + 1 end
  end
  return n
end
"""

_SCRIPTS = {
    # ARGV: P, node, cid, info (JSON)
    "add": "add(ARGV[3], ARGV[2], ARGV[4]) return 1",
    # ARGV: P, cid
    "remove": "return remove(ARGV[2])",
    # ARGV: P, cid, room, self, register (0/1), command for the owner -> owner or false
    "join": """
if ARGV[5] == '1' then add(ARGV[2], ARGV[4]) end
local owner = redis.call('HGET', P..'owner', ARGV[2])
if not owner then return false end
join(ARGV[2], ARGV[3], owner)
if owner ~= ARGV[4] then redis.call('PUBLISH', P..'node:'..owner, ARGV[6]) end
return owner""",
    # ARGV: P, cid, room, self, command for the owner -> 1 if it was in the room
    "leave": """
local owner = redis.call('HGET', P..'owner', ARGV[2])
if not owner then return 0 end
local left = leave(ARGV[2], ARGV[3], owner)
if left == 1 and owner ~= ARGV[4] then redis.call('PUBLISH', P..'node:'..owner, ARGV[5]) end
return left""",
    # ARGV: P, room, self, message, excluded... -> how many members were addressed
    "publish_room": """
for _, node in ipairs(redis.call('HKEYS', P..'room-nodes:'..ARGV[2])) do
  if node ~= ARGV[3] then redis.call('PUBLISH', P..'node:'..node, ARGV[4]) end
end
local key = P..'members:'..ARGV[2]
return redis.call('SCARD', key) - excluded(key, 5)""",
    # ARGV: P, message, excluded... -> how many clients were addressed
    "publish_all": """
redis.call('PUBLISH', P..'all', ARGV[2])
local n = redis.call('HLEN', P..'owner')
for i = 3, #ARGV do n = n - redis.call('HEXISTS', P..'owner', ARGV[i]) end
return n""",
    # ARGV: P, cid, self, message -> 1 sent, 0 unknown client, -1 owned by self
    "send": """
local owner = redis.call('HGET', P..'owner', ARGV[2])
if not owner then return 0 end
if owner == ARGV[3] then return -1 end
redis.call('PUBLISH', P..'node:'..owner, ARGV[4])
return 1""",
    # ARGV: P, node, ttl ms -> 1 if the node was not registered (new, forgotten or reaped)
    "heartbeat": """
redis.call('SET', P..'alive:'..ARGV[2], '1', 'PX', ARGV[3])
return redis.call('SADD', P..'nodes', ARGV[2])""",
    # ARGV: P, self -> {node, {client, info, ...}, node, {...}, ...} of the nodes reaped now
    "reap": """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', P..'nodes')) do
  if node ~= ARGV[2] and redis.call('EXISTS', P..'alive:'..node) == 0 then
    table.insert(out, node)
    table.insert(out, drop_node(node))
  end
end
return out""",
    # ARGV: P, node, JSON {client: [rooms]}, JSON {client: info}
    # -> make Redis hold exactly this node's view
    "sync": """
local node = ARGV[2]
local want = cjson.decode(ARGV[3])
local infos = cjson.decode(ARGV[4])
for _, cid in ipairs(redis.call('SMEMBERS', P..'node-clients:'..node)) do
  if want[cid] == nil then remove(cid) end
end
for cid, rooms in pairs(want) do
  local owner = redis.call('HGET', P..'owner', cid)
  if owner and owner ~= node then remove(cid) end
  add(cid, node, infos[cid])
  local keep = {}
  for _, room in ipairs(rooms) do keep[room] = true; join(cid, room, node) end
  for _, room in ipairs(redis.call('SMEMBERS', P..'client-rooms:'..cid)) do
    if not keep[room] then leave(cid, room, node) end
  end
end
return 1""",
    # ARGV: P, node
    "drop": "redis.call('DEL', P..'alive:'..ARGV[2]) drop_node(ARGV[2]) return 1",
    # ARGV: P
    "stats": """
return {redis.call('HLEN', P..'owner'), redis.call('SCARD', P..'rooms'),
        tonumber(redis.call('GET', P..'memberships') or '0')}""",
}

_OPTIONS = ("node_ttl", "heartbeat", "prefix", "max_frame", "node_id", "max_connections")


class RedisBackend(Backend):
    """Membership in Redis and delivery over pub/sub, for several processes or hosts.

    Example:
        ```python
        manager = WebSocketManager(backend="redis://localhost:6379/0?node_ttl=10")
        # or WS_BACKEND_URL=redis://localhost:6379/0
        ```

    A process without sockets (a worker) uses the same URL and calls
    ``broadcast_to_room`` or ``send_to_client``.
    """

    name = "redis"

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
        self._mutations = 0
        self._dirty = True
        self._wake = asyncio.Event()
        # Health
        self._down = False
        self._listening = False
        self._publish_failures = 0
        self._unlogged_failures = 0
        self._last_failure_log = 0.0
        self._reconnects = 0
        self._reaped = 0
        self._last_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, node: Node) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._node = node
        self._dirty = True
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
            name: self._redis.register_script(_LIB + body) for name, body in _SCRIPTS.items()
        }
        await self._beat()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(), name=f"orcs-redis-listener-{self.node_id}"),
            loop.create_task(self._heartbeat_loop(), name=f"orcs-redis-heartbeat-{self.node_id}"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._spawned]
        for task in tasks:
            task.cancel()
        if tasks:
            # redis-py can swallow a cancellation that races a read timeout; the loops
            # also check for it themselves, so this wait is short.
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                logger.warning("redis backend task %s did not stop", task.get_name())
        self._tasks.clear()
        if self._redis is not None:
            try:
                await self._run("drop", self.node_id)
            except BackendError as exc:
                logger.warning("could not remove node %s from Redis: %s", self.node_id, exc)
            await self._redis.aclose()
            self._redis = None
        self._index.clear()

    # -- membership ---------------------------------------------------------------------

    async def add_client(self, client_id: str, info: Mapping[str, str] | None = None) -> None:
        self._index.add_client(client_id)
        encoded = json.dumps(dict(info)) if info else ""
        if encoded:
            self._info[client_id] = encoded
        self._mutations += 1
        await self._write("add", self.node_id, client_id, encoded)

    async def remove_client(self, client_id: str) -> None:
        self._info.pop(client_id, None)
        self._index.remove_client(client_id)
        self._mutations += 1
        await self._write("remove", client_id)

    async def join(self, client_id: str, room: str) -> bool:
        if self._index.join(client_id, room):
            self._mutations += 1
            await self._write("join", client_id, room, self.node_id, "1", "")
            return True
        command = self._message("join", c=client_id, r=room)
        owner = await self._run("join", client_id, room, self.node_id, "0", command)
        return owner is not None

    async def leave(self, client_id: str, room: str) -> bool:
        if client_id in self._index.client_rooms:
            if not self._index.leave(client_id, room):
                return False
            self._mutations += 1
            await self._write("leave", client_id, room, self.node_id, "")
            return True
        command = self._message("leave", c=client_id, r=room)
        return bool(await self._run("leave", client_id, room, self.node_id, command))

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
            "reconnects": self._reconnects,
            "reaped_nodes": self._reaped,
            "last_error": self._last_error,
        }
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
            )
        details["scope"] = "cluster"
        return BackendStats(
            connections=int(connections),
            rooms=int(rooms),
            memberships=int(memberships),
            healthy=self._listening and not self._down,
            details=details,
        )

    # -- delivery -----------------------------------------------------------------------

    async def publish_all(self, frame: str, exclude: Collection[str]) -> int:
        self._check_size(frame)
        local = self.node.deliver_local(frame, None, exclude)
        message = self._message("all", frame, x=list(exclude))
        total = await self._publish("publish_all", message, *exclude)
        return local if total is None else int(total)

    async def publish_room(self, room: str, frame: str, exclude: Collection[str]) -> int:
        self._check_size(frame)
        members = self._index.members(room)
        local = self.node.deliver_local(frame, members, exclude) if members else 0
        message = self._message("room", frame, r=room, x=list(exclude))
        total = await self._publish("publish_room", room, self.node_id, message, *exclude)
        return local if total is None else int(total)

    async def publish_client(self, client_id: str, frame: str) -> bool:
        self._check_size(frame)
        if client_id in self._index.client_rooms:
            return self.node.deliver_local(frame, (client_id,), ()) == 1
        message = self._message("client", frame, c=client_id)
        return bool(await self._publish("send", client_id, self.node_id, message) == 1)

    async def disconnect_client(self, client_id: str, code: int, reason: str) -> bool:
        if client_id in self._index.client_rooms:
            return await self.node.close_local(client_id, code, reason)
        message = self._message("close", c=client_id, code=code, reason=reason)
        return bool(await self._run("send", client_id, self.node_id, message) == 1)

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

    async def _run(self, script: str, *args: str) -> Any:
        return await self._call(lambda r: self._scripts[script](args=[self.prefix, *args]))

    async def _write(self, script: str, *args: str) -> None:
        """Write this node's membership; if Redis is away, the heartbeat rewrites it later."""
        if self._redis is None:
            return  # stopped: the node's keys are already gone
        try:
            await self._run(script, *args)
        except BackendError as exc:
            self._dirty = True
            logger.warning("membership update not written to Redis (%s); will resync", exc)

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
        now = time.monotonic()
        if now - self._last_failure_log >= 5.0:
            logger.warning(
                "redis publish failed (%d since last report, %d in total): %s; "
                "other nodes miss these frames, local clients still get them",
                self._unlogged_failures,
                self._publish_failures,
                error,
            )
            self._unlogged_failures = 0
            self._last_failure_log = now

    def _failed(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        if not self._down:
            logger.warning("redis unavailable (%s); delivering locally only", self._last_error)
        self._down = True
        self._dirty = True

    # -- background tasks ---------------------------------------------------------------

    async def _beat(self) -> None:
        """Heartbeat, write membership back if needed, reap dead nodes."""
        try:
            forgotten = await self._run("heartbeat", self.node_id, str(int(self.node_ttl * 1000)))
            if forgotten or self._dirty:
                await self._sync()
        except BackendError:
            return
        if self._down:
            self._down = False
            logger.warning("redis reachable again; membership of node %s rewritten", self.node_id)
        await self._reap()

    async def _sync(self) -> None:
        before = self._mutations
        self._dirty = False
        view = {cid: sorted(rooms) for cid, rooms in self._index.client_rooms.items()}
        infos = {cid: info for cid, info in self._info.items() if cid in view}
        await self._run(
            "sync",
            self.node_id,
            json.dumps(view) if view else "{}",
            json.dumps(infos) if infos else "{}",
        )
        if self._mutations != before:
            self._dirty = True  # changed meanwhile: write again on the next beat

    async def _reap(self) -> None:
        try:
            found = await self._run("reap", self.node_id)
        except BackendError:
            return
        for dead, clients in zip(found[::2], found[1::2], strict=True):
            self._reaped += 1
            logger.warning(
                "node %s missed its heartbeat for %.1f s: reaped its %d clients",
                dead,
                self.node_ttl,
                len(clients) // 2,
            )
            if clients:
                gone = {
                    cid: json.loads(info) if info else {}
                    for cid, info in zip(clients[::2], clients[1::2], strict=True)
                }
                # Not awaited here: slow disconnect logic must not delay our own heartbeat.
                self._spawn(self.node.clients_gone(gone))

    async def _heartbeat_loop(self) -> None:
        while True:
            delay = min(self.heartbeat, 0.5) if self._down else self.heartbeat
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            _check_cancelled()
            self._wake.clear()
            try:
                await self._beat()
            except Exception:
                logger.exception("redis heartbeat failed")

    async def _listen(self) -> None:
        """Keep one subscription alive: reconnect with backoff, forever."""
        backoff = 0.1
        while True:
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
                if self._listening:
                    backoff = 0.1
                    self._failed(exc)
                    logger.warning("redis listener lost (%s); reconnecting", exc)
                else:
                    self._last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._listening = False
                if pubsub is not None:
                    with suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)

    async def _receive(self, pubsub: PubSub) -> None:
        last_seen = time.monotonic()
        last_ping = last_seen
        while True:
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
            logger.warning("dropped a malformed inter-node message")
            return
        if head.get("v") != VERSION:
            logger.warning("dropped an inter-node message of version %r", head.get("v"))
            return
        kind = head.get("k")
        if head.get("o") == self.node_id and kind == "all":
            return
        node = self.node
        if kind == "room":
            members = self._index.members(head["r"])
            if members:
                node.deliver_local(frame, members, frozenset(head.get("x", ())))
        elif kind == "all":
            node.deliver_local(frame, None, frozenset(head.get("x", ())))
        elif kind == "client":
            node.deliver_local(frame, (head["c"],), ())
        elif kind == "close":
            self._spawn(node.close_local(head["c"], int(head["code"]), str(head["reason"])))
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
            logger.warning("dropped an inter-node message of kind %r", kind)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)


def _check_cancelled() -> None:
    """Re-raise a cancellation that redis-py turned into a read timeout."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
