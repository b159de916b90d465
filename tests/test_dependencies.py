"""FastAPI's own dependency machinery in event handlers (in-process; the handshake refusal and
the thread-pool proof run on a real uvicorn in test_dependencies_e2e.py)."""
# No `from __future__ import annotations`: FastAPI reads these annotations as objects.

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
import fastapi
import pytest
from fastapi import (
    BackgroundTasks,
    Body,
    Cookie,
    Depends,
    FastAPI,
    File,
    Form,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    Security,
    UploadFile,
    WebSocketException,
)
from fastapi.exceptions import WebSocketRequestValidationError
from fastapi.security import APIKeyHeader, SecurityScopes
from pydantic import BaseModel
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    ConnectionData,
    WebSocketManager,
    WebSocketRouter,
    get_connection,
    get_manager,
)
from fastapi_orcs_ws import dependencies as adapter
from fastapi_orcs_ws.dependencies import validate_handshake
from fastapi_orcs_ws.handlers import compile_handler

pytestmark = pytest.mark.anyio

FASTAPI_VERSION = tuple(int(part) for part in fastapi.__version__.split(".")[:2])


class Item(BaseModel):
    name: str


# -- helpers -------------------------------------------------------------------------------


@contextmanager
def served(
    handlers: dict[str, Any], path: str = "/ws", url: str | None = None, **connect: Any
) -> Iterator[tuple[Any, FastAPI]]:
    """An app with one event route, started in a TestClient, and one open WebSocket."""
    router = WebSocketRouter()
    router.ws(path, handlers)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client, client.websocket_connect(url or path, **connect) as ws:
        yield ws, app


def ask(ws: Any, event: str, payload: Any = None, msg_id: int = 1) -> dict[str, Any]:
    """Send ``event`` with an id; the reply (ack or error) to it."""
    ws.send_json({"event": event, "payload": payload, "id": msg_id})
    while True:
        frame = ws.receive_json()
        if frame.get("id") == msg_id:
            return frame  # type: ignore[no-any-return]


def detached(path: str = "/ws", **scope: Any) -> Connection:
    """A Connection with no peer whose handshake scope holds ``scope`` (for direct calls)."""
    data = ConnectionData("c1", connected_at=datetime.now(UTC), manager=WebSocketManager())
    conn = Connection.detached(data, path=path)
    conn.websocket.scope.update(scope)
    return conn


# -- every parameter source ----------------------------------------------------------------


def tenant(x_tenant: str | None = Header(None), key: str = Query("none")) -> str:
    return f"{x_tenant}/{key}"


def test_header_and_query_reach_a_nested_dependency_as_values() -> None:
    """The issue's example: the dependency gets the values, not FastAPI's markers."""

    async def whoami(ws: Connection, payload: Any, t: Annotated[str, Depends(tenant)]) -> str:
        return t

    with served({"whoami": whoami}, url="/ws?key=abc", headers={"x-tenant": "acme"}) as (ws, _):
        assert ask(ws, "whoami") == {"event": "ack", "payload": "acme/abc", "id": 1}
    with served({"whoami": whoami}) as (ws, _):
        assert ask(ws, "whoami")["payload"] == "None/none"  # the declared defaults


def session_cookie(session: Annotated[str, Cookie()]) -> str:
    return session


def test_header_query_cookie_and_path_directly_and_nested() -> None:
    async def everything(
        ws: Connection,
        payload: Item,
        room: str,  # in the route path: a path parameter, as in FastAPI
        x_trace: Annotated[int, Header()],
        limit: int = 10,  # a plain query parameter
        tags: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI's idiom
        session: str = Depends(session_cookie),
        tenant_id: Annotated[str, Depends(tenant)] = "",
    ) -> dict[str, Any]:
        return {
            "name": payload.name,
            "room": room,
            "trace": x_trace,
            "limit": limit,
            "tags": tags,
            "session": session,
            "tenant": tenant_id,
        }

    url = "/ws/lobby?limit=3&tags=a&tags=b&key=k1"
    headers = {"x-trace": "42", "x-tenant": "acme", "cookie": "session=s3cr3t"}
    with served({"all": everything}, path="/ws/{room}", url=url, headers=headers) as (ws, _):
        reply = ask(ws, "all", {"name": "ada"})
    assert reply["payload"] == {
        "name": "ada",
        "room": "lobby",
        "trace": 42,  # converted, as FastAPI does
        "limit": 3,
        "tags": ["a", "b"],
        "session": "s3cr3t",
        "tenant": "acme/k1",
    }


def test_explicit_path_marker_and_connect_disconnect_handlers_take_parameters() -> None:
    seen: list[Any] = []

    async def connect(
        ws: Connection, room: Annotated[int, Path()], t: Annotated[str, Depends(tenant)]
    ) -> None:
        await ws.send("welcome", {"room": room, "tenant": t})

    async def disconnect(ws: Connection, payload: Any, room: int) -> None:
        seen.append((room, payload["code"]))

    handlers = {"connect": connect, "disconnect": disconnect}
    with served(handlers, path="/rooms/{room}", url="/rooms/7?key=z") as (ws, _):
        assert ws.receive_json() == {"event": "welcome", "payload": {"room": 7, "tenant": "None/z"}}
        ws.close(4000)
    assert seen == [(7, 4000)]


def test_a_path_parameter_of_the_router_prefix_needs_an_explicit_path_marker() -> None:
    async def where(
        ws: Connection, payload: Any, org: Annotated[str, Path()], room: int
    ) -> list[Any]:
        return [org, room]

    router = WebSocketRouter()
    router.ws("/rooms/{room}", {"where": where})
    app = FastAPI()
    app.include_router(router, prefix="/orgs/{org}")
    with TestClient(app) as client, client.websocket_connect("/orgs/acme/rooms/3") as ws:
        assert ask(ws, "where")["payload"] == ["acme", 3]


def scopes_of(security_scopes: SecurityScopes, x_user: Annotated[str, Header()]) -> list[str]:
    return [x_user, *security_scopes.scopes]


def admin(found: Annotated[list[str], Security(scopes_of, scopes=["admin"])]) -> list[str]:
    return found


def test_security_scopes_directly_and_nested() -> None:
    async def guarded(
        ws: Connection,
        payload: Any,
        direct: Annotated[list[str], Security(scopes_of, scopes=["read"])],
        nested: Annotated[list[str], Security(admin, scopes=["write"])],
    ) -> dict[str, list[str]]:
        return {"direct": direct, "nested": nested}

    with served({"guarded": guarded}, headers={"x-user": "ada"}) as (ws, _):
        assert ask(ws, "guarded")["payload"] == {
            "direct": ["ada", "read"],
            "nested": ["ada", "write", "admin"],  # parent scopes first, as in FastAPI
        }


api_key = APIKeyHeader(name="x-api-key")


@pytest.mark.skipif(FASTAPI_VERSION < (0, 144), reason="security classes take Request before")
def test_fastapi_security_classes_read_the_handshake() -> None:
    async def me(ws: Connection, payload: Any, key: Annotated[str, Security(api_key)]) -> str:
        return key

    with served({"me": me}, headers={"x-api-key": "k3y"}) as (ws, _):
        assert ask(ws, "me")["payload"] == "k3y"


@pytest.mark.skipif(FASTAPI_VERSION >= (0, 144), reason="security classes take HTTPConnection")
def test_old_fastapi_security_classes_are_refused_at_registration() -> None:
    async def me(ws: Connection, payload: Any, key: Any = Security(api_key)) -> None: ...

    with pytest.raises(ConfigurationError, match=r"'request'.*Request.*0\.144"):
        compile_handler("me", me)


class Pager:
    def __init__(self, page: int = 1, size: Annotated[int, Query(le=50)] = 10) -> None:
        self.page = page
        self.size = size


def test_class_dependencies() -> None:
    async def listing(
        ws: Connection, payload: Any, pager: Annotated[Pager, Depends()]
    ) -> list[int]:
        return [pager.page, pager.size]

    with served({"list": listing}, url="/ws?page=3&size=20") as (ws, _):
        assert ask(ws, "list")["payload"] == [3, 20]


# -- sync and async, plain and yield ---------------------------------------------------------


def test_sync_and_async_plain_and_yield_dependencies_clean_up_after_each_event() -> None:
    log: list[str] = []
    threads: dict[str, int] = {}

    def sync_plain() -> str:
        threads["sync_plain"] = threading.get_ident()
        return "sp"

    async def async_plain() -> str:
        return "ap"

    def sync_yield() -> Iterator[str]:
        threads["sync_yield"] = threading.get_ident()
        log.append("sync open")
        yield "sy"
        log.append("sync close")

    async def async_yield(inner: Annotated[str, Depends(sync_yield)]) -> AsyncIterator[str]:
        log.append("async open")
        yield "ay+" + inner
        log.append("async close")

    def sync_handler(ws: Connection, payload: Any, v: Annotated[str, Depends(async_yield)]) -> str:
        log.append("sync handler")
        return v

    async def handler(
        ws: Connection,
        payload: Any,
        a: Annotated[str, Depends(sync_plain)],
        b: Annotated[str, Depends(async_plain)],
        c: Annotated[str, Depends(async_yield)],
    ) -> list[str]:
        threads["loop"] = threading.get_ident()
        log.append("handler")
        return [a, b, c]

    with served({"use": handler, "sync": sync_handler}) as (ws, _):
        assert ask(ws, "use")["payload"] == ["sp", "ap", "ay+sy"]
        assert log == ["sync open", "async open", "handler", "async close", "sync close"]
        log.clear()
        assert ask(ws, "sync", msg_id=2)["payload"] == "ay+sy"  # a fresh set-up per event
        assert log == ["sync open", "async open", "sync handler", "async close", "sync close"]
    # Sync dependencies ran in worker threads, as FastAPI runs them.
    assert threads["sync_plain"] != threads["loop"]
    assert threads["sync_yield"] != threads["loop"]


def test_overrides_apply_to_direct_and_nested_dependencies_per_event() -> None:
    def base() -> int:
        return 1

    def doubled(value: Annotated[int, Depends(base)]) -> int:
        return value * 2

    async def handler(
        ws: Connection,
        payload: Any,
        direct: Annotated[int, Depends(base)],
        nested: Annotated[int, Depends(doubled)],
    ) -> list[int]:
        return [direct, nested]

    with served({"use": handler}) as (ws, app):
        assert ask(ws, "use")["payload"] == [1, 2]
        app.dependency_overrides[base] = lambda: 21
        assert ask(ws, "use", msg_id=2)["payload"] == [21, 42]
        app.dependency_overrides[doubled] = lambda: 0
        assert ask(ws, "use", msg_id=3)["payload"] == [21, 0]
        app.dependency_overrides.clear()
        assert ask(ws, "use", msg_id=4)["payload"] == [1, 2]


def test_dependency_cache_is_fresh_for_each_event() -> None:
    calls: list[str] = []

    def counted() -> int:
        calls.append("counted")
        return len(calls)

    def wrapper(inner: Annotated[int, Depends(counted)]) -> int:
        return inner

    async def handler(
        ws: Connection,
        payload: Any,
        a: Annotated[int, Depends(counted)],
        b: Annotated[int, Depends(wrapper)],
        uncached: Annotated[int, Depends(counted, use_cache=False)],
    ) -> list[int]:
        return [a, b, uncached]

    with served({"use": handler}) as (ws, _):
        assert ask(ws, "use")["payload"] == [1, 1, 2]  # cached once within the event
        assert ask(ws, "use", msg_id=2)["payload"] == [3, 3, 4]  # and solved anew next event


# -- what a dependency can ask for ----------------------------------------------------------


def test_dependencies_reach_the_connection_manager_and_handshake_websocket() -> None:
    def room_of(
        ws: Annotated[Connection, Depends(get_connection)],
        manager: Annotated[WebSocketManager, Depends(get_manager)],
        websocket: WebSocket,
        http: HTTPConnection,
    ) -> dict[str, Any]:
        return {
            "same_conn": ws.websocket.scope["path"] == websocket.scope["path"],
            "manager": manager is ws.data.manager,
            "header": websocket.headers["x-room"],
            "http_header": http.headers["x-room"],
        }

    async def handler(
        ws: Connection,
        payload: Any,
        info: Annotated[dict[str, Any], Depends(room_of)],
        raw: WebSocket,
        manager: WebSocketManager,
    ) -> dict[str, Any]:
        assert raw is ws.websocket and manager is ws.data.manager
        return info

    with served({"use": handler}, headers={"x-room": "blue"}) as (ws, _):
        assert ask(ws, "use")["payload"] == {
            "same_conn": True,
            "manager": True,
            "header": "blue",
            "http_header": "blue",
        }


def test_get_connection_outside_an_event_is_a_clear_error() -> None:
    app = FastAPI()

    @app.get("/where")
    async def where(conn: Annotated[Connection, Depends(get_connection)]) -> str:
        return conn.client_id

    with (
        TestClient(app, raise_server_exceptions=True) as client,
        pytest.raises(ConfigurationError, match="only in event handlers"),
    ):
        client.get("/where")


# -- errors propagate unchanged ---------------------------------------------------------------


async def test_http_and_websocket_exceptions_propagate_unchanged_and_reach_yield_cleanup() -> None:
    seen: list[str] = []

    async def guard(x_key: Annotated[str | None, Header()] = None) -> AsyncIterator[str]:
        try:
            yield x_key or ""
        except Exception as exc:
            seen.append(type(exc).__name__)
            raise

    forbidden = HTTPException(status_code=403, detail="nope")
    closing = WebSocketException(code=1008, reason="go away")

    async def raises(ws: Connection, payload: str, key: Annotated[str, Depends(guard)]) -> None:
        raise forbidden if payload == "http" else closing

    def refuses(key: Annotated[str, Depends(guard)]) -> str:
        raise HTTPException(status_code=401)

    async def in_dependency(ws: Connection, payload: Any, v: Annotated[str, Depends(refuses)]):
        raise AssertionError("not reached")

    conn = detached()
    handler = compile_handler("e", raises)
    with pytest.raises(HTTPException) as http_info:
        await handler(conn, "http")
    assert http_info.value is forbidden
    with pytest.raises(WebSocketException) as ws_info:
        await handler(conn, "ws")
    assert ws_info.value is closing
    assert seen == ["HTTPException", "WebSocketException"]  # as FastAPI throws into yield deps
    with pytest.raises(HTTPException) as dep_info:
        await compile_handler("e", in_dependency)(conn, None)
    assert dep_info.value.status_code == 401


async def test_a_yield_dependency_that_swallows_the_handlers_exception_is_loud() -> None:
    async def swallow() -> AsyncIterator[None]:
        try:
            yield
        except Exception:
            return  # the bug under test: the handler's exception is lost

    async def fails(ws: Connection, payload: Any, s: Annotated[None, Depends(swallow)]) -> str:
        raise ValueError("lost?")

    with pytest.raises(RuntimeError, match="swallowed") as info:
        await compile_handler("e", fails)(detached(), None)
    assert isinstance(info.value.__cause__, ValueError)


async def test_missing_request_values_at_event_time_raise_fastapis_validation_error() -> None:
    async def needs(ws: Connection, payload: Any, t: Annotated[int, Header()]) -> None:
        raise AssertionError("not reached")

    conn = detached(headers=[(b"t", b"not-a-number")])
    with pytest.raises(WebSocketRequestValidationError) as info:
        await compile_handler("e", needs)(conn, None)
    [error] = info.value.errors()
    assert error["loc"] == ("header", "t") and error["type"] == "int_parsing"


# -- compiled once ------------------------------------------------------------------------------


async def test_a_handler_without_fastapi_parameters_never_touches_the_solver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(**_: Any) -> Any:
        raise AssertionError("the solver was called")

    monkeypatch.setattr(adapter, "solve_dependencies", refuse)

    async def echo(ws, payload):  # type: ignore[no-untyped-def]
        return [ws.client_id, payload]

    async def injected(payload: int, manager: WebSocketManager, conn: Connection) -> int:
        return payload + 1

    plain = compile_handler("echo", echo)
    assert plain.dependencies is None
    conn = detached()
    assert await plain(conn, {"x": 1}) == ["c1", {"x": 1}]
    assert compile_handler("inc", injected).dependencies is None
    assert await compile_handler("inc", injected)(conn, 1) == 2
    # ...while one with a FastAPI parameter does go through it.
    with pytest.raises(AssertionError, match="solver"):
        await compile_handler("t", lambda ws, payload, t=Depends(tenant): t)(conn, None)


async def test_concurrent_events_of_one_connection_keep_their_own_yield_cleanups() -> None:
    """Each event has its own exit stacks, even when the solving of two events of one
    connection interleaves (FastAPI finds the stacks in the scope)."""
    log: list[str] = []
    second_solving = anyio.Event()
    first_inside = anyio.Event()
    second_done = anyio.Event()
    pauses = 0

    async def pause() -> None:
        nonlocal pauses
        pauses += 1
        if pauses == 1:
            await second_solving.wait()  # the first event's solving waits for the second's
        else:
            second_solving.set()

    async def resource() -> AsyncIterator[str]:
        yield "r"
        log.append("cleanup")

    async def wrapped(r: Annotated[str, Depends(resource)]) -> str:
        return r  # nested: FastAPI looks the stacks up again while solving this one

    async def handler(
        ws: Connection,
        payload: str,
        p: Annotated[None, Depends(pause)],
        r: Annotated[str, Depends(wrapped)],
    ) -> None:
        if payload == "first":
            first_inside.set()
            await second_done.wait()
            log.append("first handler ends")  # its clean-up must not have run yet
        else:
            await first_inside.wait()

    compiled = compile_handler("e", handler)
    conn = detached()

    async def second() -> None:
        await compiled(conn, "second")
        second_done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(compiled, conn, "first")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(second)
    assert log == ["cleanup", "first handler ends", "cleanup"]


# -- registration errors --------------------------------------------------------------------


def body_dep(item: Item) -> Item:  # a model parameter: FastAPI reads it from the body
    return item


def form_dep(name: Annotated[str, Form()]) -> str:
    return name


def request_dep(request: Request) -> str:
    return request.url.path


def needs_connection(ws: Connection) -> str:
    return ws.client_id


@pytest.mark.parametrize(
    ("handler", "parameter", "owner"),
    [
        (lambda ws, payload, extra=Body(): None, "extra", "the handler"),
        (lambda ws, payload, extra=Form(): None, "extra", "the handler"),
        (lambda ws, payload, upload=File(): None, "upload", "the handler"),
        (lambda ws, payload, request=Depends(body_dep): None, "item", "body_dep"),
        (lambda ws, payload, v=Depends(form_dep): None, "name", "form_dep"),
        (lambda ws, payload, v=Depends(request_dep): None, "request", "request_dep"),
        (lambda ws, payload, v=Depends(needs_connection): None, "ws", "needs_connection"),
    ],
)
def test_http_only_parameters_fail_at_registration(
    handler: Any, parameter: str, owner: str
) -> None:
    router = WebSocketRouter()
    route = router.ws("/ws")
    with pytest.raises(ConfigurationError) as info:
        route.add("evt", handler)
    message = str(info.value)
    assert "'evt'" in message and f"'{parameter}'" in message and owner in message


def test_http_only_types_in_the_handler_fail_at_registration() -> None:
    async def with_model(ws: Connection, payload: Any, other: Item) -> None: ...

    async def with_upload(ws: Connection, payload: Any, f: UploadFile) -> None: ...

    async def with_request(ws: Connection, payload: Any, r: Request) -> None: ...

    async def with_response(ws: Connection, payload: Any, r: Response) -> None: ...

    async def with_tasks(ws: Connection, payload: Any, tasks: BackgroundTasks) -> None: ...

    expected = {
        with_model: ("other", "request body"),
        with_upload: ("f", "request body"),
        with_request: ("r", "WebSocket or HTTPConnection"),
        with_response: ("r", "ws.send"),
        with_tasks: ("tasks", "task of your own"),
    }
    for handler, (parameter, advice) in expected.items():
        with pytest.raises(ConfigurationError) as info:
            compile_handler("evt", handler)
        message = str(info.value)
        assert handler.__qualname__ in message, message
        assert f"'{parameter}'" in message and advice in message, message


def test_fastapis_own_refusals_become_configuration_errors() -> None:
    async def bad_path(
        ws: Connection, payload: Any, room: Annotated[str, Path()] = "x"
    ) -> None: ...

    with pytest.raises(ConfigurationError, match=r"bad_path.*Path parameters cannot have default"):
        compile_handler("evt", bad_path, path="/ws/{room}")

    async def positional(ws: Connection, t: Annotated[str, Header()], /) -> None: ...

    with pytest.raises(ConfigurationError, match="positional-only"):
        compile_handler("evt", positional)


# -- the handshake check ------------------------------------------------------------------------


def handshake(path: str = "/ws", app: Any = None, **scope: Any) -> WebSocket:
    async def no_io(*_: Any) -> Any:
        raise AssertionError("validate_handshake must not do I/O")

    full = {"type": "websocket", "path": path, "headers": [], "query_string": b"", **scope}
    if app is not None:
        full["app"] = app
    return WebSocket(full, no_io, no_io)


async def test_validate_handshake_reports_every_source_once_without_calling_dependencies() -> None:
    called: list[str] = []

    def needs_header(x_tenant: Annotated[str, Header()]) -> str:
        called.append("needs_header")
        return x_tenant

    async def first(ws: Connection, payload: Any, t: Annotated[str, Depends(needs_header)]): ...

    async def second(
        ws: Connection,
        payload: Any,
        t: Annotated[str, Depends(needs_header)],
        room: int,
        key: Annotated[str, Query()],
        sid: Annotated[str, Cookie()],
    ) -> None: ...

    async def plain(ws: Connection, payload: Any) -> None: ...

    handlers = [
        compile_handler("a", first, path="/ws/{room}"),
        compile_handler("b", second, path="/ws/{room}"),
        compile_handler("c", plain),
    ]
    errors = await validate_handshake(handlers, handshake(path_params={"room": "abc"}))
    assert sorted((e["loc"], e["type"]) for e in errors) == [
        (("cookie", "sid"), "missing"),
        (("header", "x-tenant"), "missing"),  # needed twice, reported once
        (("path", "room"), "int_parsing"),
        (("query", "key"), "missing"),
    ]
    good = handshake(
        path_params={"room": "7"},
        query_string=b"key=k",
        headers=[(b"x-tenant", b"acme"), (b"cookie", b"sid=s")],
    )
    assert await validate_handshake(handlers, good) == []
    assert await validate_handshake([handlers[2]], handshake()) == []
    assert called == []


async def test_validate_handshake_honours_dependency_overrides() -> None:
    def needs_header(x_tenant: Annotated[str, Header()]) -> str:
        return x_tenant

    def needs_query(key: Annotated[str, Query()]) -> str:
        return key

    async def handler(ws: Connection, payload: Any, t: Annotated[str, Depends(needs_header)]): ...

    handlers = [compile_handler("a", handler)]
    app = FastAPI()
    assert [e["loc"] for e in await validate_handshake(handlers, handshake(app=app))] == [
        ("header", "x-tenant")
    ]
    app.dependency_overrides[needs_header] = needs_query
    errors = await validate_handshake(handlers, handshake(app=app))
    assert [e["loc"] for e in errors] == [("query", "key")]
    app.dependency_overrides[needs_header] = lambda: "test"
    assert await validate_handshake(handlers, handshake(app=app)) == []


# -- the docs ----------------------------------------------------------------------------------


def test_the_example_in_docs_events_runs_as_documented() -> None:
    page = (FilePath(__file__).resolve().parent.parent / "docs" / "events.md").read_text("utf-8")
    section = page.split("### FastAPI dependencies", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/events.md", "exec"), namespace)
    app = namespace["app"]
    with TestClient(app) as client:
        headers = {"x-tenant": "acme"}
        with client.websocket_connect("/ws/lobby?key=k1", headers=headers) as ws:
            assert ask(ws, "whoami")["payload"] == {
                "room": "lobby",
                "tenant": "acme/k1",
                "db_open": True,
            }
        with (
            client.websocket_connect("/ws/lobby") as ws,
            pytest.raises(WebSocketDisconnect) as info,
        ):
            ws.receive_json()  # no x-tenant header: refused at the handshake
        assert info.value.code == 1008 and "x-tenant" in info.value.reason


def test_handlers_registered_after_a_connection_are_checked_at_the_next_handshake() -> None:
    """The route keeps the list of handlers a handshake must satisfy: registering one later,
    on the route or on the manager, is seen by the next connection."""
    manager = WebSocketManager()
    router = WebSocketRouter(manager=manager)
    route = router.ws("/ws")

    @route.on("plain")
    async def plain(ws: Connection, payload: Any) -> str:
        return "ok"

    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            assert ask(ws, "plain")["payload"] == "ok"

        @route.on("tenant")
        async def on_tenant(ws: Connection, payload: Any, x_tenant: Annotated[str, Header()]):
            return x_tenant

        with client.websocket_connect("/ws") as ws, pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()  # no x-tenant header: refused at the handshake
        assert info.value.code == 1008 and "x-tenant" in info.value.reason
        with client.websocket_connect("/ws", headers={"x-tenant": "acme"}) as ws:
            assert ask(ws, "tenant")["payload"] == "acme"

        async def on_key(ws: Connection, payload: Any, key: Annotated[str, Query()]) -> str:
            return key

        manager.on("key", on_key)
        with (
            client.websocket_connect("/ws", headers={"x-tenant": "acme"}) as ws,
            pytest.raises(WebSocketDisconnect) as info,
        ):
            ws.receive_json()  # a manager handler now needs ?key=
        assert info.value.code == 1008 and "key" in info.value.reason
        with client.websocket_connect("/ws?key=k1", headers={"x-tenant": "acme"}) as ws:
            assert ask(ws, "key")["payload"] == "k1"
