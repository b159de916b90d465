"""fastapi_orcs_ws.client against real servers: the chat example under uvicorn (restarted for
real in one test) and the extras app (a slow handler, a route that requires a token, and a
stand-in for issue 13's room positions)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastapi_orcs_ws import EventError
from fastapi_orcs_ws.client import (
    Backoff,
    BufferFullError,
    Client,
    ClientClosedError,
    RequestTimeoutError,
    connect,
)
from fastapi_orcs_ws.testing import LiveServer, mint_token, serve
from tests.js_client.apps import SECRET, ChatProcess, extras_app, free_port

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.05, maximum=0.2)


@pytest.fixture(scope="module")
def chat() -> Iterator[ChatProcess]:
    server = ChatProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def extras() -> Iterator[LiveServer]:
    with serve(extras_app()) as live:
        yield live


def waiter(
    client: Client, event: str, where: Callable[[Any], bool] | None = None
) -> asyncio.Future[Any]:
    """A future for the next ``event`` (matching ``where``); register before it can happen."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def handler(payload: Any) -> None:
        if not future.done() and (where is None or where(payload)):
            future.set_result(payload)
            client.off(event, handler)

    client.on(event, handler)
    return future


async def within(future: asyncio.Future[Any], seconds: float = 10.0) -> Any:
    async with asyncio.timeout(seconds):
        return await future


async def test_request_ack_and_broadcast(chat: ChatProcess) -> None:
    client = connect(chat.ws_url)
    welcome = waiter(client, "welcome")
    async with client:
        hello = await within(welcome)
        assert hello["message"] == "Welcome to chat!"
        assert client.state == "open"
        # The chat's join answers {room, recovered, offset, epoch} (its rooms keep history).
        ack = await client.request("join", {"room": "py"})
        assert ack == {"room": "py", "recovered": False, "offset": 0, "epoch": ack["epoch"]}
        assert isinstance(ack["epoch"], str) and ack["epoch"]
        received = waiter(client, "message", lambda p: p["room"] == "py")
        await client.emit("message", {"room": "py", "text": "hello from python"})
        message = await within(received)
    assert message["text"] == "hello from python" and message["from"] == hello["clientId"]
    assert client.state == "closed"


async def test_error_event_raises_event_error(chat: ChatProcess) -> None:
    async with connect(chat.ws_url) as client:
        with pytest.raises(EventError) as invalid:
            await client.request("join", {})
        assert invalid.value.code == "validation_error"
        assert invalid.value.extra["event"] == "join"
        assert invalid.value.extra["errors"][0]["loc"] == ["room"]
        with pytest.raises(EventError) as unknown:
            await client.request("no-such-event")
        assert unknown.value.code == "unknown_event"
        # The connection is still usable.
        assert (await client.request("join", {"room": "after"}))["room"] == "after"


async def test_request_timeout(extras: LiveServer) -> None:
    async with connect(extras.ws_url("/ws/slow")) as client:
        with pytest.raises(RequestTimeoutError) as timed_out:
            await client.request("slow", {"seconds": 5}, timeout=0.2)
        assert isinstance(timed_out.value, TimeoutError) and timed_out.value.code == "timeout"
        assert await client.request("fast") == "fast"


async def test_4401_stops_reconnecting(extras: LiveServer) -> None:
    asked = 0

    def token() -> str:
        nonlocal asked
        asked += 1
        return "not-a-valid-token"

    client = Client(extras.ws_url("/ws/private"), token=token, reconnect=FAST)
    reconnects: list[Any] = []
    client.on("reconnect", reconnects.append)
    closed = waiter(client, "close")
    await client.start(wait=False)
    # The server accepts, then closes with 4401 (so that browsers can read the code).
    info = await within(closed)
    assert info == {"code": 4401, "reason": "Unauthorized", "will_reconnect": False}
    assert client.state == "closed" and reconnects == []
    assert asked == 2  # for the connection, then once after the refusal: same token, so stop
    with pytest.raises(ClientClosedError):
        await client.request("whoami")


async def test_new_token_after_4401_reconnects(extras: LiveServer) -> None:
    tokens = ["not-a-valid-token", mint_token("alice", secret=SECRET)]

    async def token() -> str:
        return tokens.pop(0) if len(tokens) > 1 else tokens[0]

    client = Client(extras.ws_url("/ws/private"), token=token, reconnect=FAST)
    first_close = waiter(client, "close")
    async with client:
        assert (await within(first_close))["will_reconnect"] is True
        assert await client.request("whoami") == "alice"


async def test_subprotocol_carries_the_token(extras: LiveServer) -> None:
    token = mint_token("bob", secret=SECRET)
    async with connect(extras.ws_url("/ws/private"), token=token) as client:
        assert client._ws is not None and client._ws.subprotocol == "token"
        assert "token" not in client.url
        assert await client.request("whoami") == "bob"


async def test_buffer_overflow_and_close() -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ws/chat"
    client = Client(dead, buffer_size=2, reconnect=Backoff(initial=5, maximum=5))
    await client.start(wait=False)
    first = asyncio.ensure_future(client.emit("message", {"text": "1"}))
    second = asyncio.ensure_future(client.emit("message", {"text": "2"}))
    await asyncio.sleep(0)  # let both reach the buffer
    assert client.buffered == 2
    with pytest.raises(BufferFullError):
        await client.emit("message", {"text": "3"})
    await client.close()
    for task in (first, second):
        with pytest.raises(ClientClosedError):
            await task


async def test_emits_before_open_are_sent_in_order(chat: ChatProcess) -> None:
    client = connect(chat.ws_url)
    received = waiter(client, "message", lambda p: p["room"] == "early")
    await client.start(wait=False)
    joined = asyncio.ensure_future(client.request("join", {"room": "early"}))
    sent = asyncio.ensure_future(client.emit("message", {"room": "early", "text": "before open"}))
    await asyncio.sleep(0)
    assert client.state == "connecting" and client.buffered == 2
    assert (await within(joined))["room"] == "early"
    await within(sent)
    assert (await within(received))["text"] == "before open"
    await client.close()


async def test_server_restart_reconnects_rejoins_and_sends_buffered(chat: ChatProcess) -> None:
    client = Client(chat.ws_url, reconnect=Backoff(initial=0.1, maximum=0.5))
    opens: list[Any] = []
    client.on("open", opens.append)
    async with client:
        await client.request("join", {"room": "survivors"})
        dropped = waiter(client, "close")
        await asyncio.to_thread(chat.stop)
        info = await within(dropped)
        assert info["code"] == 1012 and info["will_reconnect"] is True
        delivered = waiter(client, "message", lambda p: p["room"] == "survivors")
        sent = asyncio.ensure_future(
            client.emit("message", {"room": "survivors", "text": "sent while down"})
        )
        await asyncio.sleep(0)
        assert client.buffered == 1
        await asyncio.to_thread(chat.start)
        await within(sent, 30)
        # Arrives only if the client rejoined "survivors" by itself, then sent what waited.
        assert (await within(delivered, 30))["text"] == "sent while down"
    assert opens[0] == {"reconnected": False} and opens[-1] == {"reconnected": True}


async def test_room_positions_are_sent_when_rejoining(extras: LiveServer) -> None:
    client = Client(extras.ws_url("/ws/positions"), reconnect=FAST)
    async with client:
        joined = await client.request("join", {"room": "p"})
        assert joined["offset"] == 0 and client.positions == {
            "p": {"offset": 0, "epoch": "epoch-1"}
        }
        await client.request("publish", {"room": "p", "count": 3})
        assert client.positions == {"p": {"offset": 3, "epoch": "epoch-1"}}
        recovered = waiter(client, "recovery")
        await client.emit("drop")  # the server closes with 1012; the client reconnects, rejoins
        recovery = await within(recovered)
        assert recovery["room"] == "p" and recovery["recovered"] is True
        assert recovery["since"] == {"offset": 3, "epoch": "epoch-1"}
        again = await client.request("join", {"room": "p"})
        assert again["since"] == {"offset": 3, "epoch": "epoch-1"}
        await client.emit("leave", {"room": "p"})
        assert client.positions == {}


async def test_a_join_ack_never_moves_a_position_back(extras: LiveServer) -> None:
    client = Client(extras.ws_url("/ws/positions"), reconnect=FAST)
    seen: list[int] = []
    client.on("message", lambda payload, frame: seen.append(frame["offset"]))
    async with client:
        # Live frames 1 and 2 reach the client before the join's ack, which says offset 0.
        joined = await client.request("join", {"room": "never-back", "overtaken": 2})
        assert joined["offset"] == 0 and seen == [1, 2]
        assert client.positions == {"never-back": {"offset": 2, "epoch": "epoch-1"}}
        recovered = waiter(client, "recovery")
        await client.emit("drop")
        recovery = await within(recovered)
        # Asked from 2, so frames 1 and 2 are not replayed a second time.
        assert recovery["since"] == {"offset": 2, "epoch": "epoch-1"}


async def test_a_failing_handler_is_logged_and_others_still_run(
    chat: ChatProcess, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(chat.ws_url)

    def broken(payload: Any) -> None:
        raise RuntimeError("handler bug")

    async def broken_async(payload: Any) -> None:
        raise RuntimeError("async handler bug")

    client.on("welcome", broken)
    client.on("welcome", broken_async)
    welcome = waiter(client, "welcome")
    with caplog.at_level(logging.ERROR, logger="fastapi_orcs_ws.client"):
        async with client:
            await within(welcome)
    messages = [r.getMessage() + str(r.exc_info) for r in caplog.records]
    assert any("handler bug" in m for m in messages), messages
    assert any("async handler bug" in m for m in messages), messages


async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="ws://"):
        Client("http://example.invalid/ws")
    with pytest.raises(ValueError, match="token_in"):
        Client("ws://127.0.0.1:1/ws", token_in="header")
    with pytest.raises(ValueError):
        Backoff(initial=0)


async def test_token_in_query_when_asked(extras: LiveServer) -> None:
    token = mint_token("carol", secret=SECRET)
    async with connect(extras.ws_url("/ws/private"), token=token, token_in="query") as client:
        assert client._ws is not None and client._ws.subprotocol is None
        assert await client.request("whoami") == "carol"


@pytest.mark.parametrize(("code", "retried"), [(1000, False), (4403, False), (4429, True)])
async def test_which_server_closes_are_retried(
    extras: LiveServer, code: int, retried: bool
) -> None:
    client = Client(extras.ws_url("/ws/slow"), reconnect=FAST)
    async with client:
        closed = waiter(client, "close")
        await client.emit("kick", code)
        info = await within(closed)
        assert info == {"code": code, "reason": "kicked", "will_reconnect": retried}
        if retried:
            await client.wait_open(10)
            assert await client.request("fast") == "fast"
        else:
            assert client.state == "closed"
            with pytest.raises(ClientClosedError):
                await client.emit("fast")
