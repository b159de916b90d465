"""The spec's notifications example, on fastapi-orcs-ws.

Run from the repository root::

    export WS_JWT_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    uvicorn examples.notifications.main:app --port 42069

then, with a demo token (``python -m examples.notifications.mint_token alice``)::

    curl -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
         -d '{"title": "Hello"}' http://127.0.0.1:42069/notify/alice

A page of the app receives them with the official client (served at ``/orcs-client.js``;
it sends the token as the ``["token", JWT]`` subprotocol, asks ``getToken`` again before each
reconnect, and stops for good on 4401 unless that gives a new token)::

    <script type="module">
      import { connect } from "/orcs-client.js";
      const inbox = connect("/ws/notifications", { token: () => getToken() });
      inbox.on("unread-count", ({ count }) => showBadge(count));
      inbox.on("notification", (n) => showToast(n.title, n.body));
      inbox.on("close", ({ code, willReconnect }) => {
        if (code === 4401 && !willReconnect) location.assign("/login");
      });
      markAllRead.onclick = async () => showBadge((await inbox.request("read")).count);
    </script>

Python services use ``fastapi_orcs_ws.client`` the same way, and
``python -m fastapi_orcs_ws typescript examples.notifications.main:app`` writes the types
(``WsNotificationsEvents``) for TypeScript (see docs/clients.md).

* ``/ws/notifications`` requires a valid token (``?token=``, ``Authorization: Bearer`` or the
  ``["token", JWT]`` subprotocol); without one the client gets close code 4401. On connect the
  client joins ``user:{id}`` and receives ``unread-count`` ``{"count": n}``; sending ``read``
  resets the count.
* ``POST /notify/{user_id}`` (bearer token required) delivers a ``notification`` event to every
  open connection of that user and answers ``{"delivered": n}``. Any authenticated user may
  notify any user here: a real app would check permissions.

Unread counts live in this process's memory: a demo, not a store. With several workers (or the
Redis backend) ``delivered`` counts only this worker's connections.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    User,
    WebSocketRouter,
    WebSocketSettings,
    current_user,
)
from fastapi_orcs_ws.auth import install_log_redaction

install_log_redaction()  # tokens arrive in query strings: keep them out of uvicorn's logs

settings = WebSocketSettings()
if settings.auth_enabled is False or not (settings.jwt_secret or settings.jwt_public_key):
    raise ConfigurationError(
        "the notifications example needs WS_JWT_SECRET (and WS_AUTH_ENABLED left on)"
    )


def room_of(user_id: str) -> str:
    return f"user:{user_id}"


class UnreadCount(BaseModel):
    count: int


class NotificationIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str | None = Field(None, max_length=4000)


class Notification(BaseModel):
    id: int
    title: str
    body: str | None
    sender: str
    createdAt: datetime  # the wire name, as in the spec's JavaScript


class Delivered(BaseModel):
    delivered: int
    """How many open connections of the user received it (in this worker)."""


_unread: dict[str, int] = {}
_ids = itertools.count(1)

router = WebSocketRouter(settings=settings)
notifications = router.ws(
    "/ws/notifications",
    auth={"required": True},
    emits={"unread-count": UnreadCount, "notification": Notification},
    summary="Notifications for the signed-in user",
    description="Requires a token. Receives `unread-count` on connect and each `notification`.",
)


@notifications.on("connect")
async def connect(ws: Connection) -> None:
    user: User = ws.data.user
    await ws.data.manager.join_room(ws.data.client_id, room_of(user.id))
    await ws.send("unread-count", UnreadCount(count=_unread.get(user.id, 0)))


@notifications.on("read")
async def read(ws: Connection) -> UnreadCount:
    """Mark everything read; every connection of the user gets the new count."""
    user: User = ws.data.user
    _unread[user.id] = 0
    await ws.data.manager.broadcast_to_room(room_of(user.id), "unread-count", {"count": 0})
    return UnreadCount(count=0)


app = FastAPI(title="fastapi-orcs-ws notifications")
app.include_router(router)


@app.post("/notify/{user_id}")
async def notify(
    user_id: str,
    body: NotificationIn,
    sender: Annotated[User, Depends(current_user)],
) -> Delivered:
    """Deliver a ``notification`` to every open connection of ``user_id``."""
    _unread[user_id] = _unread.get(user_id, 0) + 1
    event = Notification(
        id=next(_ids),
        title=body.title,
        body=body.body,
        sender=sender.id,
        createdAt=datetime.now(UTC),
    )
    delivered = await router.manager.broadcast_to_room(room_of(user_id), "notification", event)
    return Delivered(delivered=delivered)
