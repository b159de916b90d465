"""Several WebSocketRouters in one app, and a WebSocketRouter that is just an APIRouter.

Each router has its own manager and auth configuration: HTTP endpoints ask the router for
them (``Depends(router.get_manager)``, ``Depends(router.current_user)``); the WebSocket side
uses the route that is serving. Nothing is last-wins: a plain ``get_manager`` or
``current_user`` that cannot know which router is meant is refused at start-up, or raises
with the fix in the message.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fastapi_orcs_ws import (
    ConfigurationError,
    Connection,
    User,
    WebSocketManager,
    WebSocketRouter,
    WebSocketSettings,
    current_user,
    get_manager,
    optional_user,
)
from fastapi_orcs_ws.testing import LiveServer, mint_token, serve

from .wsclient import client, expect

SECRET_A = "router-a-secret-0123456789abcdef0123456789"
SECRET_B = "router-b-secret-0123456789abcdef0123456789"


def settings(secret: str = SECRET_A) -> WebSocketSettings:
    return WebSocketSettings(jwt_secret=secret)


# -- several routers, real uvicorn ------------------------------------------------------------


def news_router(name: str, manager: WebSocketManager | None, secret: str) -> WebSocketRouter:
    """A router whose clients join the room "news"; POST /publish broadcasts to it through
    the router's own manager dependency."""
    router = WebSocketRouter(manager=manager, settings=settings(secret))

    async def connect(ws: Connection) -> None:
        await ws.data.manager.join_room(ws.data.client_id, "news")
        await ws.send("joined", {"router": name})

    router.ws("/ws", {"connect": connect})

    @router.post("/publish")
    async def publish(
        text: str, manager: WebSocketManager = Depends(router.get_manager)
    ) -> dict[str, int]:
        return {"delivered": await manager.broadcast_to_room("news", "headline", {"text": text})}

    return router


def news_app(groups: Sequence[int]) -> FastAPI:
    """One router per entry of ``groups``, mounted at /r0, /r1...; routers with the same
    group number share one manager (explicitly), the others have their own."""
    shared: dict[int, WebSocketManager] = {}
    app = FastAPI()
    for i, group in enumerate(groups):
        if groups.count(group) > 1:
            manager = shared.setdefault(group, WebSocketManager(settings=settings()))
        else:
            manager = None
        app.include_router(news_router(f"r{i}", manager, SECRET_A), prefix=f"/r{i}")

    @app.get("/which")
    async def which(request: Request) -> dict[str, str]:
        # Called directly (not through Depends), so the start-up check cannot see it.
        try:
            get_manager(request)
        except ConfigurationError as exc:
            return {"error": str(exc)}
        return {"error": ""}

    return app


GROUPS = {
    "two routers, own managers": [0, 1],
    "three routers, own managers": [0, 1, 2],
    "two routers, one shared manager": [0, 0],
    "three routers, two sharing a manager": [0, 0, 1],
}


@pytest.mark.anyio
@pytest.mark.parametrize("groups", GROUPS.values(), ids=list(GROUPS))
async def test_each_router_dependency_broadcasts_to_its_own_clients(groups: list[int]) -> None:
    app = news_app(groups)
    with serve(app) as server:
        async with (
            httpx.AsyncClient(base_url=server.http_url, timeout=5) as http,
            clients(server, len(groups)) as sockets,
        ):
            for i, group in enumerate(groups):
                reply = await http.post(f"/r{i}/publish", params={"text": f"from-{i}"})
                same = [j for j, g in enumerate(groups) if g == group]
                assert reply.json() == {"delivered": len(same)}
                for j in same:
                    frame = await expect(sockets[j], "headline")
                    assert frame["payload"] == {"text": f"from-{i}"}
                # The others got nothing: a fence sent through their own manager is
                # the next frame they see.
                others = {g: groups.index(g) for g in set(groups) if g != group}
                for router in others.values():
                    await http.post(f"/r{router}/publish", params={"text": f"fence-{i}"})
                for j, g in enumerate(groups):
                    if g != group:
                        frame = await expect(sockets[j], "headline")
                        assert frame["payload"] == {"text": f"fence-{i}"}

            error = (await http.get("/which")).json()["error"]
            if len(set(groups)) > 1:
                assert f"has {len(set(groups))} WebSocket managers" in error
                assert "Depends(router.get_manager)" in error
                assert "WebSocketRouter(manager=shared)" in error
                assert "/r0/ws" in error and "/r1/ws" in error
            else:
                assert error == ""


@asynccontextmanager
async def clients(server: LiveServer, count: int) -> AsyncIterator[list[ClientConnection]]:
    """One client per router, each past its ``joined`` frame (so it is in the room)."""
    async with AsyncExitStack() as stack:
        sockets = []
        for i in range(count):
            ws = await stack.enter_async_context(client(server.ws_url(f"/r{i}/ws")))
            assert (await expect(ws, "joined"))["payload"] == {"router": f"r{i}"}
            sockets.append(ws)
        yield sockets


def test_plain_get_manager_with_several_managers_is_refused_at_startup() -> None:
    app = news_app([0, 1])

    @app.post("/announce")
    async def announce(manager: Annotated[WebSocketManager, Depends(get_manager)]) -> None:
        await manager.broadcast("announcement", {})

    with pytest.raises(ConfigurationError) as exc, TestClient(app):
        pass
    message = str(exc.value)
    assert message.startswith("route /announce depends on get_manager")
    assert "Depends(router.get_manager)" in message
    assert "WebSocketRouter(manager=shared)" in message


def test_plain_get_manager_works_with_one_shared_manager() -> None:
    app = news_app([0, 0, 0])

    @app.post("/announce")
    async def announce(
        manager: Annotated[WebSocketManager, Depends(get_manager)],
    ) -> dict[str, int]:
        return {"delivered": await manager.broadcast_to_room("news", "headline", {})}

    with (
        TestClient(app) as http,
        http.websocket_connect("/r0/ws") as a,
        http.websocket_connect("/r2/ws") as b,
    ):
        assert a.receive_json()["event"] == "joined"
        assert b.receive_json()["event"] == "joined"
        assert http.post("/announce").json() == {"delivered": 2}
        assert a.receive_json()["event"] == "headline"
        assert b.receive_json()["event"] == "headline"


def test_an_overridden_plain_get_manager_is_not_refused() -> None:
    app = news_app([0, 1])
    mine = WebSocketManager()

    @app.get("/count")
    async def count(manager: Annotated[WebSocketManager, Depends(get_manager)]) -> bool:
        return manager is mine

    app.dependency_overrides[get_manager] = lambda: mine
    with TestClient(app) as http:
        assert http.get("/count").json() is True


def test_the_handshake_dependencies_find_the_serving_router() -> None:
    app = FastAPI()
    seen: list[WebSocketManager] = []

    def record(manager: Annotated[WebSocketManager, Depends(get_manager)]) -> None:
        seen.append(manager)

    routers = [WebSocketRouter(settings=settings()) for _ in range(2)]
    for i, router in enumerate(routers):
        router.ws("/ws", dependencies=[Depends(record)])
        app.include_router(router, prefix=f"/r{i}")
    with TestClient(app) as http:
        for path in ("/r1/ws", "/r0/ws"):
            with http.websocket_connect(path):
                pass
    assert seen == [routers[1].manager, routers[0].manager]


# -- per-router auth -----------------------------------------------------------------------


def auth_app() -> tuple[FastAPI, WebSocketRouter, WebSocketRouter]:
    a = WebSocketRouter(settings=settings(SECRET_A))
    b = WebSocketRouter(settings=settings(SECRET_B))

    async def who(ws: Connection) -> None:
        await ws.send("you", {"user": getattr(ws.data.user, "id", None)})

    for router in (a, b):
        router.ws("/ws", {"connect": who}, auth={"required": True})

        @router.get("/me")
        async def me(user: User = Depends(router.current_user)) -> dict[str, str]:
            return {"id": user.id}

        @router.get("/maybe")
        async def maybe(
            user: User | None = Depends(router.optional_user),
        ) -> dict[str, str | None]:
            return {"id": user.id if user else None}

    app = FastAPI()
    app.include_router(a, prefix="/a")
    app.include_router(b, prefix="/b")
    return app, a, b


@pytest.mark.anyio
async def test_each_router_checks_tokens_with_its_own_settings() -> None:
    app, _, _ = auth_app()
    token_a = mint_token("alice", secret=SECRET_A)
    token_b = mint_token("bob", secret=SECRET_B)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=5) as http:
            for prefix, good, bad, user in (
                ("/a", token_a, token_b, "alice"),
                ("/b", token_b, token_a, "bob"),
            ):
                ok = await http.get(f"{prefix}/me", headers=bearer(good))
                assert ok.json() == {"id": user}
                refused = await http.get(f"{prefix}/me", headers=bearer(bad))
                assert refused.status_code == 401
                assert (await http.get(f"{prefix}/maybe")).json() == {"id": None}
                maybe_bad = await http.get(f"{prefix}/maybe", headers=bearer(bad))
                assert maybe_bad.status_code == 401

                async with client(
                    server.ws_url(f"{prefix}/ws"), additional_headers=bearer(good)
                ) as ws:
                    assert (await expect(ws, "you"))["payload"] == {"user": user}
                async with client(
                    server.ws_url(f"{prefix}/ws"), additional_headers=bearer(bad)
                ) as ws:
                    assert await close_code(ws) == 4401


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def close_code(ws: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as exc, anyio.fail_after(5):
        while True:
            await ws.recv()
    assert exc.value.rcvd is not None
    return exc.value.rcvd.code


@pytest.mark.parametrize("dependency", [current_user, optional_user])
def test_plain_current_user_with_several_auth_configurations_is_refused(dependency: Any) -> None:
    app, _, _ = auth_app()

    @app.get("/whoami")
    async def whoami(user: Any = Depends(dependency)) -> None:
        return None

    with pytest.raises(ConfigurationError) as exc, TestClient(app):
        pass
    message = str(exc.value)
    assert message.startswith("route /whoami depends on current_user/optional_user")
    assert "2 different auth configurations" in message
    assert "Depends(router.current_user)" in message


def test_plain_current_user_uses_the_one_configuration_routers_share() -> None:
    app = FastAPI()
    for i in range(3):
        router = WebSocketRouter(settings=settings(SECRET_B))  # equal settings, own objects
        router.ws("/ws")
        app.include_router(router, prefix=f"/r{i}")

    @app.get("/me")
    async def me(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"id": user.id}

    with TestClient(app) as http:
        assert http.get("/me", headers=bearer(mint_token("bob", secret=SECRET_B))).json() == {
            "id": "bob"
        }
        assert (
            http.get("/me", headers=bearer(mint_token("eve", secret=SECRET_A))).status_code == 401
        )


def test_no_app_state_is_written() -> None:
    app, _, _ = auth_app()
    before = dict(app.state._state)
    with TestClient(app) as http:
        http.get("/a/maybe")
    assert {k for k in app.state._state if "orcs" in k} == {k for k in before if "orcs" in k}


# -- a WebSocketRouter without event routes is an APIRouter ------------------------------------


class Item(BaseModel):
    name: str
    price: float


def fill(router: APIRouter) -> APIRouter:
    """The same HTTP routes, nested router included, on either kind of router."""

    def token(x_token: str | None = None) -> str | None:
        return x_token

    @router.get("/{item_id}", tags=["items"], responses={404: {"description": "gone"}})
    async def read(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @router.post("/", status_code=201, dependencies=[Depends(token)])
    async def create(item: Item) -> Item:
        return item

    inner = type(router)()

    @inner.get("/ping")
    async def ping() -> str:
        return "pong"

    router.include_router(inner, prefix="/inner")
    return router


def routes_of(app: FastAPI) -> list[tuple[str, str, tuple[str, ...]]]:
    from fastapi_orcs_ws.routing import _mounted_routes

    return [
        (path, getattr(route, "name", ""), tuple(sorted(getattr(route, "methods", None) or ())))
        for path, route in _mounted_routes(app)
    ]


def two_apps(**router_kwargs: Any) -> tuple[FastAPI, FastAPI]:
    apps = []
    for cls in (APIRouter, WebSocketRouter):
        app = FastAPI(title="same")
        app.include_router(fill(cls(**router_kwargs)), prefix="/items")
        apps.append(app)
    return apps[0], apps[1]


def test_same_routes_and_openapi_as_an_api_router() -> None:
    plain, ours = two_apps(prefix="/v1", tags=["t"])
    assert routes_of(ours) == routes_of(plain)
    assert ours.openapi() == plain.openapi()
    with TestClient(plain) as a, TestClient(ours) as b:
        for method, path, body in (
            ("GET", "/items/v1/3?q=x", None),
            ("POST", "/items/v1/", {"name": "n", "price": 1.5}),
            ("GET", "/items/v1/inner/ping", None),
            ("GET", "/items/v1/ws-docs", None),
            ("GET", "/asyncapi.json", None),
        ):
            left, right = a.request(method, path, json=body), b.request(method, path, json=body)
            assert (right.status_code, right.content) == (left.status_code, left.content), path
    # Nothing was added at start-up either.
    assert routes_of(ours) == routes_of(plain)
    assert ours.description == plain.description == ""


LIFESPAN_FORMS = ["async context manager", "sync generator"]
if {"on_startup", "on_shutdown"} <= set(inspect.signature(APIRouter).parameters):
    LIFESPAN_FORMS.append("on_startup/on_shutdown")  # gone from newer FastAPI versions


def lifespan_kwargs(form: str, calls: list[str]) -> dict[str, Any]:
    """The router arguments for ``form``, recording into ``calls``."""
    if form == "on_startup/on_shutdown":
        return {
            "on_startup": [lambda: calls.append("startup")],
            "on_shutdown": [lambda: calls.append("shutdown")],
        }
    if form == "sync generator":

        def sync_gen(app: Any) -> Iterator[None]:
            calls.append("sync in")
            yield
            calls.append("sync out")

        return {"lifespan": sync_gen}

    @asynccontextmanager
    async def async_cm(app: Any) -> AsyncIterator[dict[str, Any]]:
        calls.append("async in")
        yield {"answer": 42}
        calls.append("async out")

    return {"lifespan": async_cm}


@pytest.mark.parametrize("form", LIFESPAN_FORMS)
@pytest.mark.parametrize("nested", [False, True], ids=["included", "nested"])
def test_same_lifespan_as_an_api_router(form: str, nested: bool) -> None:
    results = []
    for cls in (APIRouter, WebSocketRouter):
        calls: list[str] = []
        # Older Starlette versions deprecate some forms: the same warnings, for both.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            router = cls(**lifespan_kwargs(form, calls))

            @router.get("/state")
            async def state(request: Request) -> dict[str, Any]:
                return dict(request.state._state)

            app = FastAPI()
            if nested:
                outer = cls()
                outer.include_router(router, prefix="/in")
                app.include_router(outer, prefix="/out")
                path = "/out/in/state"
            else:
                app.include_router(router)
                path = "/state"
            with TestClient(app) as http:
                calls.append("serving")
                body = http.get(path).json()
        seen = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        results.append((calls, body, seen))
    assert results[1] == results[0]
    assert len(results[0][0]) > 1, "the lifespan ran"


def test_event_routes_do_not_change_the_app_description_or_openapi() -> None:
    router = WebSocketRouter(settings=settings())
    router.ws("/ws")
    fill(router)
    app = FastAPI(title="t", description="mine")
    app.include_router(router, prefix="/items")
    before = app.openapi()
    with TestClient(app) as http:
        assert http.get("/openapi.json").json() == before
        assert http.get("/ws-docs").status_code == 200
    assert app.description == "mine"
    assert app.openapi() == before


def test_docs_arguments_on_a_router_name_the_fix() -> None:
    for name in ("asyncapi_url", "docs_url"):
        with pytest.raises(ConfigurationError, match=rf"mount_docs\(app, {name}=\.\.\.\)"):
            WebSocketRouter(**{name: None})
