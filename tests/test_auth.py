"""Unit tests for fastapi_orcs_ws.auth and fastapi_orcs_ws.jwt (no server)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from jose import jwt as jose_jwt
from starlette.requests import HTTPConnection

from fastapi_orcs_ws.auth import (
    Authenticator,
    AuthOptions,
    AuthResult,
    JWTVerifier,
    TokenVerifier,
    User,
    current_user,
    extract_token,
    optional_user,
)
from fastapi_orcs_ws.errors import AuthenticationError, ConfigurationError
from fastapi_orcs_ws.settings import WebSocketSettings

from .tokens import b64, hand_made, rsa_key_pair

SECRET = "test-secret-0123456789-abcdefghijklmnop"
GENERIC_MESSAGES = {"invalid token", "token expired"}


# -- helpers ---------------------------------------------------------------------------------


def make_token(
    claims: Mapping[str, Any] | None = None,
    *,
    key: str = SECRET,
    algorithm: str = "HS256",
    headers: Mapping[str, Any] | None = None,
    exp_in: float | None = 3600,
) -> str:
    body: dict[str, Any] = {"sub": "alice"}
    if exp_in is not None:
        body["exp"] = int(time.time() + exp_in)
    body.update(claims or {})
    return str(jose_jwt.encode(body, key, algorithm=algorithm, headers=dict(headers or {})))


def ws_conn(
    *,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    subprotocols: list[str] | None = None,
    kind: str = "websocket",
) -> HTTPConnection:
    scope: dict[str, Any] = {
        "type": kind,
        "path": "/ws",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    if kind == "websocket":
        scope["subprotocols"] = subprotocols or []
    return HTTPConnection(scope)


def settings(**values: Any) -> WebSocketSettings:
    values.setdefault("jwt_secret", SECRET)
    return WebSocketSettings(_env_file=None, **values)


def refused(exc: pytest.ExceptionInfo[AuthenticationError], token: str) -> bool:
    message = str(exc.value)
    return token not in message and len(message) < 40


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str, bytes]:
    return rsa_key_pair()


# -- token transports --------------------------------------------------------------------------


def test_token_from_query() -> None:
    assert extract_token(ws_conn(query="a=1&token=abc.def.ghi")) == ("abc.def.ghi", "query")


def test_token_from_bearer_header() -> None:
    conn = ws_conn(headers={"Authorization": "Bearer abc.def.ghi"})
    assert extract_token(conn) == ("abc.def.ghi", "header")
    assert extract_token(ws_conn(headers={"Authorization": "bearer  abc.def.ghi "})) == (
        "abc.def.ghi",
        "header",
    )


def test_token_from_subprotocol_scope_and_header() -> None:
    assert extract_token(ws_conn(subprotocols=["token", "abc.def.ghi"])) == (
        "abc.def.ghi",
        "subprotocol",
    )
    assert extract_token(ws_conn(subprotocols=["chat", "token", "abc.def.ghi"]))[0] == (
        "abc.def.ghi"
    )
    # A websocket scope without "subprotocols": read Sec-WebSocket-Protocol.
    conn = HTTPConnection(
        {
            "type": "websocket",
            "path": "/ws",
            "query_string": b"",
            "headers": [(b"sec-websocket-protocol", b"token, abc.def.ghi")],
        }
    )
    assert extract_token(conn) == ("abc.def.ghi", "subprotocol")


def test_no_token_and_other_schemes() -> None:
    assert extract_token(ws_conn()) == (None, None)
    assert extract_token(ws_conn(headers={"Authorization": "Basic dXNlcjpwdw=="})) == (None, None)
    assert extract_token(ws_conn(subprotocols=["chat"])) == (None, None)


def test_empty_token_counts_as_presented() -> None:
    assert extract_token(ws_conn(query="token=")) == ("", "query")
    assert extract_token(ws_conn(subprotocols=["token"])) == ("", "subprotocol")


def test_identical_tokens_on_several_transports_are_fine() -> None:
    conn = ws_conn(
        query="token=abc.def.ghi",
        headers={"Authorization": "Bearer abc.def.ghi"},
        subprotocols=["token", "abc.def.ghi"],
    )
    assert extract_token(conn) == ("abc.def.ghi", "subprotocol")


@pytest.mark.parametrize(
    "conn",
    [
        ws_conn(query="token=one", headers={"Authorization": "Bearer two"}),
        ws_conn(query="token=one", subprotocols=["token", "two"]),
        ws_conn(headers={"Authorization": "Bearer one"}, subprotocols=["token", "two"]),
        ws_conn(query="token=one&token=two"),
    ],
)
def test_different_tokens_are_refused(conn: HTTPConnection) -> None:
    with pytest.raises(AuthenticationError) as exc:
        extract_token(conn)
    assert "one" not in str(exc.value) and "two" not in str(exc.value)


def test_http_requests_only_use_the_authorization_header() -> None:
    assert extract_token(ws_conn(kind="http", query="token=abc")) == (None, None)
    conn = ws_conn(kind="http", query="token=abc", headers={"Authorization": "Bearer xyz"})
    assert extract_token(conn) == ("xyz", "header")


# -- JWTVerifier -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_valid_hs256_token() -> None:
    claims = await JWTVerifier(secret=SECRET).verify(make_token({"role": "admin"}))
    assert claims["sub"] == "alice" and claims["role"] == "admin"


@pytest.mark.anyio
async def test_alg_none_is_refused() -> None:
    verifier = JWTVerifier(secret=SECRET)
    claims = {"sub": "alice", "exp": int(time.time()) + 60}
    for alg in ("none", "None", "NONE"):
        token = hand_made({"alg": alg, "typ": "JWT"}, claims, None)
        with pytest.raises(AuthenticationError):
            await verifier.verify(token)
        # Even with a signature segment appended.
        with pytest.raises(AuthenticationError):
            await verifier.verify(token + "c2ln")


@pytest.mark.anyio
async def test_algorithm_outside_configuration_is_refused() -> None:
    token = make_token(algorithm="HS512")
    with pytest.raises(AuthenticationError):
        await JWTVerifier(secret=SECRET, algorithms=["HS256"]).verify(token)
    assert await JWTVerifier(secret=SECRET, algorithms=["HS256", "HS512"]).verify(token)


@pytest.mark.anyio
async def test_rs256_valid(rsa_keys: tuple[str, str, bytes]) -> None:
    private_pem, public_pem, _ = rsa_keys
    token = make_token(key=private_pem, algorithm="RS256")
    verifier = JWTVerifier(public_key=public_pem, algorithms=["RS256"])
    assert (await verifier.verify(token))["sub"] == "alice"


@pytest.mark.anyio
async def test_hs256_signed_with_rsa_public_key_is_refused(
    rsa_keys: tuple[str, str, bytes],
) -> None:
    _, public_pem, public_der = rsa_keys
    claims = {"sub": "mallory", "exp": int(time.time()) + 3600}
    forged_der = hand_made({"alg": "HS256", "typ": "JWT"}, claims, public_der)
    forged_pem = hand_made({"alg": "HS256", "typ": "JWT"}, claims, public_pem.encode())
    # The pitfall is real: python-jose without pinned algorithms accepts the DER forgery.
    assert jose_jwt.decode(forged_der, public_der)["sub"] == "mallory"

    rs_only = JWTVerifier(public_key=public_pem, algorithms=["RS256"])
    both = JWTVerifier(secret=SECRET, public_key=public_pem, algorithms=["RS256", "HS256"])
    for verifier in (rs_only, both):
        for forged in (forged_der, forged_pem):
            with pytest.raises(AuthenticationError) as exc:
                await verifier.verify(forged)
            assert refused(exc, forged)


@pytest.mark.anyio
async def test_exp_is_required_and_checked() -> None:
    verifier = JWTVerifier(secret=SECRET)
    with pytest.raises(AuthenticationError):
        await verifier.verify(make_token(exp_in=None))
    with pytest.raises(AuthenticationError, match="token expired"):
        await verifier.verify(make_token(exp_in=-5))
    with pytest.raises(AuthenticationError):  # python-jose would int() a string
        await verifier.verify(make_token({"exp": str(int(time.time()) + 60)}, exp_in=None))
    with pytest.raises(AuthenticationError):
        await verifier.verify(make_token({"exp": True}, exp_in=None))


@pytest.mark.anyio
async def test_leeway_is_honoured() -> None:
    token = make_token(exp_in=-5)
    with pytest.raises(AuthenticationError):
        await JWTVerifier(secret=SECRET).verify(token)
    assert await JWTVerifier(secret=SECRET, leeway=30).verify(token)


@pytest.mark.anyio
@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_future_nbf_and_iat_are_refused(claim: str) -> None:
    token = make_token({claim: int(time.time()) + 20})
    with pytest.raises(AuthenticationError):
        await JWTVerifier(secret=SECRET).verify(token)
    assert await JWTVerifier(secret=SECRET, leeway=60).verify(token)
    assert await JWTVerifier(secret=SECRET).verify(make_token({claim: int(time.time()) - 20}))
    with pytest.raises(AuthenticationError):
        await JWTVerifier(secret=SECRET).verify(make_token({claim: "yesterday"}))


@pytest.mark.anyio
async def test_configured_audience_is_required() -> None:
    verifier = JWTVerifier(secret=SECRET, audience="chat")
    with pytest.raises(AuthenticationError):
        await verifier.verify(make_token())
    with pytest.raises(AuthenticationError):
        await verifier.verify(make_token({"aud": "billing"}))
    assert await verifier.verify(make_token({"aud": "chat"}))
    assert await verifier.verify(make_token({"aud": ["billing", "chat"]}))
    # No audience configured: a token meant for somebody else is refused.
    with pytest.raises(AuthenticationError):
        await JWTVerifier(secret=SECRET).verify(make_token({"aud": "billing"}))


@pytest.mark.anyio
async def test_configured_issuer_is_required() -> None:
    verifier = JWTVerifier(secret=SECRET, issuer="https://auth.example")
    with pytest.raises(AuthenticationError):
        await verifier.verify(make_token())
    with pytest.raises(AuthenticationError):
        await verifier.verify(make_token({"iss": "https://evil.example"}))
    assert await verifier.verify(make_token({"iss": "https://auth.example"}))


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("python-jose must not be reached")

    monkeypatch.setattr(jose_jwt, "decode", fail)  # the module fastapi_orcs_ws.jwt uses


@pytest.mark.anyio
async def test_crit_header_is_refused(no_decoding: None) -> None:
    token = make_token({"b64": False}, headers={"crit": ["b64"], "b64": False})
    with pytest.raises(AuthenticationError):
        await JWTVerifier(secret=SECRET).verify(token)


@pytest.mark.anyio
async def test_encrypted_five_part_token_is_refused(no_decoding: None) -> None:
    header = b64(json.dumps({"alg": "dir", "enc": "A256GCM"}).encode())
    token = f"{header}..{b64(b'iv' * 6)}.{b64(b'ciphertext')}.{b64(b'tag' * 5)}"
    assert token.count(".") == 4
    with pytest.raises(AuthenticationError):
        await JWTVerifier(secret=SECRET).verify(token)


@pytest.mark.anyio
async def test_oversized_token_is_refused_before_decoding(no_decoding: None) -> None:
    token = make_token({"padding": "x" * 9000})
    assert len(token) > 8 * 1024
    with pytest.raises(AuthenticationError):
        await JWTVerifier(secret=SECRET).verify(token)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "a.b.c.d", "é.é.é", "!!!.???.###", "e30.e30.", "W10.e30.c2ln"],
)
async def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(AuthenticationError) as exc:
        await JWTVerifier(secret=SECRET).verify(token)
    assert str(exc.value) == "invalid token"


@pytest.mark.anyio
async def test_error_messages_are_generic() -> None:
    verifier = JWTVerifier(secret=SECRET, audience="chat", issuer="iss")
    tokens = [
        make_token(),
        make_token(exp_in=-10),
        make_token(key="another-secret-that-is-long-enough-123"),
        make_token({"aud": "chat", "iss": "iss"}) + "x",
    ]
    for token in tokens:
        with pytest.raises(AuthenticationError) as exc:
            await verifier.verify(token)
        assert str(exc.value) in GENERIC_MESSAGES
        assert token not in repr(exc.value)


def test_configuration_errors(rsa_keys: tuple[str, str, bytes]) -> None:
    with pytest.raises(ConfigurationError):
        JWTVerifier()  # HS256 without a secret
    with pytest.raises(ConfigurationError):
        JWTVerifier(secret=SECRET, algorithms=["RS256"])  # no public key
    with pytest.raises(ConfigurationError):
        JWTVerifier(secret=SECRET, algorithms=["none"])
    with pytest.raises(ConfigurationError):
        JWTVerifier(secret=SECRET, algorithms=[])
    with pytest.raises(ConfigurationError):
        JWTVerifier(public_key="not a key", algorithms=["RS256"])
    with pytest.raises(ConfigurationError):
        JWTVerifier(secret=SECRET, leeway=-1)
    assert JWTVerifier(public_key=rsa_keys[1], algorithms=["RS256"]).algorithms == ("RS256",)


def test_from_settings_and_repr_hides_secret() -> None:
    verifier = JWTVerifier.from_settings(
        settings(jwt_algorithms="HS256,HS384", jwt_audience="a", jwt_issuer="i", jwt_leeway=2)
    )
    assert verifier.algorithms == ("HS256", "HS384")
    assert (verifier.audience, verifier.issuer, verifier.leeway) == ("a", "i", 2.0)
    assert SECRET not in repr(verifier)


# -- Authenticator -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_authenticated_user_from_claims() -> None:
    token = make_token({"name": "Alice"})
    result = await Authenticator(settings()).authenticate(ws_conn(query=f"token={token}"))
    assert result.authenticated
    assert isinstance(result.user, User)
    assert result.user.id == "alice" and result.user.claims["name"] == "Alice"
    assert result.claims is not None and result.claims["sub"] == "alice"
    assert result.expires_at is not None and result.expires_at.tzinfo == UTC
    assert result.expires_at == datetime.fromtimestamp(result.claims["exp"], UTC)
    assert result.subprotocol is None


@pytest.mark.anyio
async def test_subprotocol_token_selects_token_never_the_jwt() -> None:
    token = make_token()
    result = await Authenticator(settings()).authenticate(ws_conn(subprotocols=["token", token]))
    assert result.authenticated and result.subprotocol == "token"
    # Auth disabled: the token is ignored, but "token" must still be selected for browsers.
    disabled = Authenticator(settings(auth_enabled=False))
    result = await disabled.authenticate(ws_conn(subprotocols=["token", token]))
    assert not result.authenticated and result.subprotocol == "token"


@pytest.mark.anyio
async def test_expires_at_includes_leeway() -> None:
    token = make_token()
    result = await Authenticator(settings(jwt_leeway=5)).authenticate(
        ws_conn(query=f"token={token}")
    )
    assert result.claims is not None and result.expires_at is not None
    assert result.expires_at.timestamp() == result.claims["exp"] + 5


@pytest.mark.anyio
async def test_auth_disabled_is_always_anonymous() -> None:
    auth = Authenticator(settings(auth_enabled=False, auth_required=True))
    for conn in (ws_conn(query="token=garbage"), ws_conn(query=f"token={make_token()}")):
        assert await auth.authenticate(conn) == AuthResult(False, None, None, None, None)


@pytest.mark.anyio
async def test_not_required_and_no_token_is_anonymous() -> None:
    result = await Authenticator(settings()).authenticate(ws_conn())
    assert not result.authenticated and result.user is None and result.claims is None


@pytest.mark.anyio
@pytest.mark.parametrize("query", ["token=garbage", "token=", "token={expired}"])
async def test_not_required_but_invalid_token_is_refused(query: str) -> None:
    query = query.format(expired=make_token(exp_in=-10))
    with pytest.raises(AuthenticationError):
        await Authenticator(settings()).authenticate(ws_conn(query=query))


@pytest.mark.anyio
async def test_required_and_missing_or_invalid_token_is_refused() -> None:
    auth = Authenticator(settings(auth_required=True))
    with pytest.raises(AuthenticationError):
        await auth.authenticate(ws_conn())
    with pytest.raises(AuthenticationError):
        await auth.authenticate(ws_conn(headers={"Authorization": "Bearer nope"}))
    assert (await auth.authenticate(ws_conn(subprotocols=["token", make_token()]))).authenticated


@pytest.mark.anyio
async def test_conflicting_transports_are_refused_by_authenticate() -> None:
    conn = ws_conn(query=f"token={make_token()}", headers={"Authorization": "Bearer other"})
    with pytest.raises(AuthenticationError):
        await Authenticator(settings()).authenticate(conn)


@pytest.mark.anyio
async def test_sync_and_async_user_loaders() -> None:
    def sync_loader(claims: Mapping[str, Any]) -> dict[str, Any]:
        return {"user": claims["sub"]}

    async def async_loader(claims: Mapping[str, Any]) -> dict[str, Any]:
        return {"user": claims["sub"], "async": True}

    conn = ws_conn(query=f"token={make_token()}")
    result = await Authenticator(settings(), AuthOptions(user_loader=sync_loader)).authenticate(
        conn
    )
    assert result.user == {"user": "alice"}
    result = await Authenticator(settings(), AuthOptions(user_loader=async_loader)).authenticate(
        conn
    )
    assert result.user == {"user": "alice", "async": True}


@pytest.mark.anyio
async def test_user_loader_returning_none_or_failing_refuses() -> None:
    async def unknown(claims: Mapping[str, Any]) -> None:
        return None

    def broken(claims: Mapping[str, Any]) -> Any:
        raise RuntimeError("database down")

    conn = ws_conn(query=f"token={make_token()}")
    for loader in (unknown, broken):
        with pytest.raises(AuthenticationError):
            await Authenticator(settings(), AuthOptions(user_loader=loader)).authenticate(conn)


@pytest.mark.anyio
async def test_token_without_sub_is_refused_by_default_user() -> None:
    conn = ws_conn(query=f"token={make_token({'sub': ''})}")
    with pytest.raises(AuthenticationError):
        await Authenticator(settings()).authenticate(conn)


class SessionVerifier:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def verify(self, token: str) -> Mapping[str, Any]:
        self.seen.append(token)
        if token != "session-42":
            raise AuthenticationError("invalid token")
        return {"sub": 42, "plan": "pro"}


@pytest.mark.anyio
async def test_custom_verifier() -> None:
    verifier = SessionVerifier()
    assert isinstance(verifier, TokenVerifier)
    auth = Authenticator(settings(jwt_secret=None), AuthOptions(verifier=verifier))
    result = await auth.authenticate(ws_conn(query="token=session-42"))
    assert result.user == User(id="42", claims={"sub": 42, "plan": "pro"})
    assert result.expires_at is None
    with pytest.raises(AuthenticationError):
        await auth.authenticate(ws_conn(query="token=session-1"))


@pytest.mark.anyio
async def test_misbehaving_custom_verifier_refuses() -> None:
    class Broken:
        async def verify(self, token: str) -> Mapping[str, Any]:
            raise ValueError("bug")

    class NotAMapping:
        async def verify(self, token: str) -> Mapping[str, Any]:
            return ["sub"]  # type: ignore[return-value]

    for verifier in (Broken(), NotAMapping()):
        auth = Authenticator(settings(), AuthOptions(verifier=verifier))
        with pytest.raises(AuthenticationError):
            await auth.authenticate(ws_conn(query="token=x"))


@pytest.mark.anyio
async def test_for_route_merges_and_caches() -> None:
    base = Authenticator(settings())
    required = base.for_route(AuthOptions(required=True))
    assert required is base.for_route(AuthOptions(required=True))
    assert base.for_route(AuthOptions()) is base
    assert required.required and not base.required
    assert required.verifier is base.verifier
    with pytest.raises(AuthenticationError):
        await required.authenticate(ws_conn())
    anonymous = base.for_route(AuthOptions(enabled=False))
    assert not (await anonymous.authenticate(ws_conn(query="token=bad"))).authenticated
    # A route may require auth even when it is disabled globally.
    off = Authenticator(settings(auth_enabled=False))
    with pytest.raises(AuthenticationError):
        await off.for_route(AuthOptions.coerce({"required": True})).authenticate(ws_conn())


@pytest.mark.anyio
async def test_missing_key_configuration() -> None:
    with pytest.raises(ConfigurationError):
        Authenticator(settings(jwt_secret=None, auth_required=True))
    lenient = Authenticator(settings(jwt_secret=None))
    assert not (await lenient.authenticate(ws_conn())).authenticated
    with pytest.raises(AuthenticationError):
        await lenient.authenticate(ws_conn(query=f"token={make_token()}"))
    with pytest.raises(ConfigurationError):
        lenient.for_route(AuthOptions(required=True))


def test_auth_options_coerce() -> None:
    assert AuthOptions.coerce(None) == AuthOptions()
    assert AuthOptions.coerce(True) == AuthOptions(required=True)
    assert AuthOptions.coerce(False) == AuthOptions(enabled=False)
    assert AuthOptions.coerce({"required": True}) == AuthOptions(required=True)
    options = AuthOptions(enabled=True)
    assert AuthOptions.coerce(options) is options
    with pytest.raises(ConfigurationError, match="requierd"):
        AuthOptions.coerce({"requierd": True})
    with pytest.raises(ConfigurationError):
        AuthOptions.coerce("yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        AuthOptions(enabled=False, required=True)
    with pytest.raises(ConfigurationError):
        AuthOptions.coerce({"required": "yes"})
    with pytest.raises(ConfigurationError):
        AuthOptions(verifier=object())  # type: ignore[arg-type]


def test_origin_check() -> None:
    assert Authenticator(settings()).origin_allowed(ws_conn(headers={"Origin": "https://x.io"}))
    auth = Authenticator(settings(allowed_origins="https://app.example, https://admin.example/"))
    assert auth.origin_allowed(ws_conn(headers={"Origin": "https://app.example"}))
    assert auth.origin_allowed(ws_conn(headers={"Origin": "https://admin.example"}))
    for origin in (
        "https://evil.example",
        "https://app.example.evil",
        "null",
        "http://app.example",
    ):
        assert not auth.origin_allowed(ws_conn(headers={"Origin": origin}))
    assert auth.origin_allowed(ws_conn())  # no Origin: not a browser
    two = HTTPConnection(
        {
            "type": "websocket",
            "path": "/",
            "query_string": b"",
            "headers": [(b"origin", b"https://app.example"), (b"origin", b"https://evil.example")],
        }
    )
    assert not auth.origin_allowed(two)


# -- current_user / optional_user -------------------------------------------------------------


def http_app(authenticator: Authenticator | None) -> FastAPI:
    app = FastAPI()
    if authenticator is not None:
        app.state.fastapi_orcs_ws_authenticator = authenticator

    @app.get("/me")
    async def me(user: Annotated[User, Depends(current_user)]) -> dict[str, Any]:
        return {"id": user.id}

    @app.get("/maybe")
    async def maybe(user: Annotated[User | None, Depends(optional_user)]) -> dict[str, Any]:
        return {"id": user.id if user else None}

    return app


def test_http_dependencies() -> None:
    token = make_token()
    with TestClient(http_app(Authenticator(settings()))) as client:
        ok = {"Authorization": f"Bearer {token}"}
        assert client.get("/me", headers=ok).json() == {"id": "alice"}
        assert client.get("/maybe", headers=ok).json() == {"id": "alice"}
        missing = client.get("/me")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.get("/maybe").json() == {"id": None}
        bad = {"Authorization": "Bearer nope"}
        assert client.get("/me", headers=bad).status_code == 401
        assert client.get("/maybe", headers=bad).status_code == 401
        assert token not in client.get("/me", headers=bad).text
        # No query-string tokens over HTTP.
        assert client.get(f"/me?token={token}").status_code == 401


def test_http_dependencies_with_required_settings_still_allow_optional() -> None:
    with TestClient(http_app(Authenticator(settings(auth_required=True)))) as client:
        assert client.get("/maybe").json() == {"id": None}
        assert client.get("/me").status_code == 401


def test_http_dependencies_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_JWT_SECRET", SECRET)
    app = http_app(None)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {make_token()}"}
        assert client.get("/me", headers=headers).json() == {"id": "alice"}
        assert client.get("/me").status_code == 401
    assert isinstance(app.state._fastapi_orcs_ws_default_authenticator, Authenticator)


def test_http_dependencies_prefer_the_scope_authenticator() -> None:
    app = http_app(Authenticator(settings()))
    other = Authenticator(settings(jwt_secret="yet-another-secret-long-enough-0123456789"))

    @app.middleware("http")
    async def put_in_scope(request: Any, call_next: Any) -> Any:
        request.scope["fastapi_orcs_ws.authenticator"] = other
        return await call_next(request)

    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {make_token()}"}
        assert client.get("/me", headers=headers).status_code == 401
        key = "yet-another-secret-long-enough-0123456789"
        headers = {"Authorization": f"Bearer {make_token(key=key)}"}
        assert client.get("/me", headers=headers).json() == {"id": "alice"}


def live(user: Any, authenticated: bool) -> HTTPConnection:
    conn = ws_conn()
    conn.scope["fastapi_orcs_ws.connection"] = SimpleNamespace(
        data=SimpleNamespace(user=user, authenticated=authenticated)
    )
    return conn


@pytest.mark.anyio
async def test_dependencies_in_event_handlers_use_the_live_connection() -> None:
    user = User(id="bob", claims={"sub": "bob"})
    assert await current_user(live(user, True)) is user
    assert await optional_user(live(user, True)) is user
    assert await optional_user(live(None, False)) is None
    with pytest.raises(AuthenticationError):
        await current_user(live(None, False))


@pytest.mark.anyio
async def test_dependencies_on_a_plain_websocket_scope() -> None:
    conn = ws_conn(query=f"token={make_token()}")
    conn.scope["fastapi_orcs_ws.authenticator"] = Authenticator(settings())
    assert (await current_user(conn)).id == "alice"
    anonymous = ws_conn()
    anonymous.scope["fastapi_orcs_ws.authenticator"] = Authenticator(settings())
    assert await optional_user(anonymous) is None
    with pytest.raises(AuthenticationError):
        await current_user(anonymous)
