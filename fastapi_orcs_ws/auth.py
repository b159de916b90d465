"""Authentication of WebSocket handshakes and HTTP requests.

Token transports (WebSocket handshakes):

* ``?token=<jwt>`` in the query string;
* ``Authorization: Bearer <jwt>``;
* the subprotocol pair ``["token", <jwt>]`` (``Sec-WebSocket-Protocol: token, <jwt>``). The
  handshake must then select ``token`` -- never the JWT -- or browsers fail the connection:
  [`AuthResult.subprotocol`][fastapi_orcs_ws.AuthResult.subprotocol] is ``"token"`` whenever the
  client offered it (even with auth disabled), and the router passes it to ``accept()``.

Plain HTTP requests authenticate by ``Authorization: Bearer`` only: a query-string token on
HTTP is ignored (it would end up in proxy logs and ``Referer`` headers).

When several transports carry a token they must carry the *same* token; different tokens are
refused (never "any one valid").

Policy (documented decisions):

* auth disabled (``WS_AUTH_ENABLED=false`` or ``auth={"enabled": False}``): always anonymous,
  tokens are ignored, nothing is verified;
* no token: anonymous when not required, refused when required;
* a token is presented but invalid (bad signature, expired, conflicting...): **refused even
  when auth is not required** -- a client that sends a bad credential is told so rather than
  silently downgraded to anonymous;
* a ``user_loader`` that returns ``None`` refuses the connection (unknown or disabled user).

"Refused" means [`Authenticator.authenticate`][fastapi_orcs_ws.Authenticator.authenticate] raises
[`AuthenticationError`][fastapi_orcs_ws.AuthenticationError] with a generic message that never
contains the token; the router accepts and then closes with 4401 ``Unauthorized``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from fastapi import HTTPException
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from ._redact import install_log_redaction
from .errors import AuthenticationError, ConfigurationError
from .jwt import JWTVerifier
from .settings import WebSocketSettings

__all__ = [
    "AuthOptions",
    "AuthResult",
    "Authenticator",
    "JWTVerifier",
    "TokenVerifier",
    "User",
    "current_user",
    "extract_token",
    "install_log_redaction",
    "optional_user",
]

logger = logging.getLogger("fastapi_orcs_ws.auth")

SCOPE_CONNECTION = "fastapi_orcs_ws.connection"
SCOPE_AUTHENTICATOR = "fastapi_orcs_ws.authenticator"
APP_STATE_AUTHENTICATOR = "fastapi_orcs_ws_authenticator"
_APP_STATE_DEFAULT = "_fastapi_orcs_ws_default_authenticator"
TOKEN_SUBPROTOCOL = "token"


@runtime_checkable
class TokenVerifier(Protocol):
    """Plug your own authentication in: turn a token into claims, or refuse it.

    ``verify`` returns the claims (``sub`` becomes `User.id` unless you supply a
    ``user_loader``; a numeric ``exp`` makes the router close the connection at expiry) and
    raises [`AuthenticationError`][fastapi_orcs_ws.AuthenticationError] to refuse. Any other
    exception also refuses (and is logged as a bug in the verifier).

    Example:
        ```python
        class SessionVerifier:
            async def verify(self, token: str) -> Mapping[str, Any]:
                session = await sessions.get(token)
                if session is None:
                    raise AuthenticationError("invalid token")
                return {"sub": session.user_id}

        router = WebSocketRouter(auth=AuthOptions(verifier=SessionVerifier()))
        ```
    """

    async def verify(self, token: str) -> Mapping[str, Any]: ...


class User(BaseModel):
    """The default user: ``id`` from the ``sub`` claim, every claim in `claims`."""

    id: str
    claims: dict[str, Any]


UserLoader = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class AuthOptions:
    """Per-route (or per-router) overrides; ``None`` means "take it from the settings".

    ``required=True`` implies ``enabled=True`` for that route even when ``WS_AUTH_ENABLED`` is
    false; ``enabled=False`` together with ``required=True`` is a configuration error.
    ``user_loader(claims)`` may be sync or async and returns the app's user object (``None``
    refuses the connection).
    """

    enabled: bool | None = None
    required: bool | None = None
    verifier: TokenVerifier | None = None
    user_loader: UserLoader | None = None

    def __post_init__(self) -> None:
        for name in ("enabled", "required"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigurationError(f"auth option {name!r} must be a bool or None")
        if self.enabled is False and self.required is True:
            raise ConfigurationError("auth options: required=True contradicts enabled=False")
        if self.verifier is not None and not callable(getattr(self.verifier, "verify", None)):
            raise ConfigurationError("auth option 'verifier' must have an async verify(token)")
        if self.user_loader is not None and not callable(self.user_loader):
            raise ConfigurationError("auth option 'user_loader' must be callable")

    @classmethod
    def coerce(cls, value: AuthOptions | Mapping[str, Any] | bool | None) -> AuthOptions:
        """Accept an ``AuthOptions``, a mapping of its fields, ``True`` or ``False`` or ``None``.

        ``True`` means ``required=True``; ``False`` means ``enabled=False`` (anonymous route);
        ``None`` means "no override". Unknown mapping keys raise
        [`ConfigurationError`][fastapi_orcs_ws.ConfigurationError].
        """
        if value is None:
            return cls()
        if isinstance(value, AuthOptions):
            return value
        if isinstance(value, bool):
            return cls(required=True) if value else cls(enabled=False)
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(str(k) for k in value if k not in known)
            if unknown:
                raise ConfigurationError(
                    f"unknown auth option(s): {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known))}"
                )
            return cls(**value)
        raise ConfigurationError(
            f"auth must be an AuthOptions, a mapping, a bool or None, not {type(value).__name__}"
        )

    def merged(self, override: AuthOptions) -> AuthOptions:
        """``self`` with every field that ``override`` sets (not ``None``) replaced."""
        changes = {f.name: getattr(override, f.name) for f in fields(override)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class AuthResult:
    """The outcome of a successful
    [`Authenticator.authenticate`][fastapi_orcs_ws.Authenticator.authenticate]."""

    authenticated: bool
    user: Any
    """The user object, ``None`` when anonymous."""
    claims: Mapping[str, Any] | None
    expires_at: datetime | None
    """Aware UTC time from ``exp`` (plus the verifier's leeway); close with 4401 then."""
    subprotocol: str | None
    """``"token"`` when the client offered the token subprotocol: pass it to ``accept()``."""


_ANONYMOUS = AuthResult(False, None, None, None, None)


def _anonymous(subprotocol: str | None) -> AuthResult:
    """An anonymous result; the common one (no subprotocol) is shared, not one per connection."""
    return _ANONYMOUS if subprotocol is None else AuthResult(False, None, None, None, subprotocol)


def _offered_subprotocols(conn: HTTPConnection) -> list[str]:
    offered = conn.scope.get("subprotocols")
    if offered is not None:
        return [str(p) for p in offered]
    return [
        part.strip()
        for value in conn.headers.getlist("sec-websocket-protocol")
        for part in value.split(",")
        if part.strip()
    ]


def _subprotocol_tokens(offered: list[str]) -> list[str]:
    tokens: list[str] = []
    for i, proto in enumerate(offered):
        if proto == TOKEN_SUBPROTOCOL:
            # "token" as the last entry carries no value: a presented, empty (invalid) token.
            tokens.append(offered[i + 1] if i + 1 < len(offered) else "")
    return tokens


def _bearer_tokens(conn: HTTPConnection) -> list[str]:
    tokens: list[str] = []
    for value in conn.headers.getlist("authorization"):
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            tokens.append(credentials.strip())
    return tokens


def extract_token(conn: HTTPConnection) -> tuple[str | None, str | None]:
    """Find the token a client sent: ``(token, transport)`` or ``(None, None)``.

    ``transport`` is ``"subprotocol"``, ``"header"`` or ``"query"`` (in that order of reporting
    when several carry the same token). WebSocket handshakes use all three transports; HTTP
    requests only the ``Authorization: Bearer`` header. A presented but empty token is returned
    as ``""`` (and fails verification). Other ``Authorization`` schemes are not tokens.

    Raises:
        AuthenticationError: different tokens arrived (across transports, or repeated in one).
    """
    found: list[tuple[str, str]] = []
    if conn.scope.get("type") == "websocket":
        found += [(t, "subprotocol") for t in _subprotocol_tokens(_offered_subprotocols(conn))]
    found += [(t, "header") for t in _bearer_tokens(conn)]
    if conn.scope.get("type") == "websocket":
        found += [(t, "query") for t in conn.query_params.getlist("token")]
    if not found:
        return None, None
    if len({token for token, _ in found}) > 1:
        logger.debug("token refused: different tokens in %s", sorted({t for _, t in found}))
        raise AuthenticationError("conflicting tokens")
    return found[0]


async def _call_user_loader(loader: UserLoader, claims: Mapping[str, Any]) -> Any:
    result = loader(claims)
    if inspect.isawaitable(result):
        result = await result
    return result


def _default_user(claims: Mapping[str, Any]) -> User:
    sub = claims.get("sub")
    if isinstance(sub, bool) or not isinstance(sub, str | int) or sub == "":
        logger.debug("token refused: no usable sub claim")
        raise AuthenticationError("invalid token")
    return User(id=str(sub), claims=dict(claims))


def _expires_at(claims: Mapping[str, Any], leeway: float) -> datetime | None:
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return datetime.fromtimestamp(exp + leeway, UTC)
    except (OverflowError, OSError, ValueError):
        return None


_JWT_SETTINGS = ("jwt_secret", "jwt_public_key", "jwt_jwks", "jwt_audience", "jwt_issuer")


def _auth_asked_for(settings: WebSocketSettings, options: AuthOptions) -> str:
    """Why this configuration expects tokens to be verified ("" when nothing asks for it)."""
    given = settings.model_fields_set
    reasons = [f"WS_{name.upper()} is set" for name in _JWT_SETTINGS if getattr(settings, name)]
    reasons += [
        f"WS_{name.upper()} is set" for name in ("jwt_algorithms", "jwt_leeway") if name in given
    ]
    if settings.auth_enabled and "auth_enabled" in given:
        reasons.append("WS_AUTH_ENABLED=true")
    if settings.auth_required and options.required is not False:
        reasons.append("WS_AUTH_REQUIRED=true")
    if options.required:
        reasons.append("the route requires auth")
    elif options.enabled:
        reasons.append("the route enables auth")
    return ", ".join(reasons)


class Authenticator:
    """Applies the settings and [`AuthOptions`][fastapi_orcs_ws.AuthOptions] to a handshake or
    request.

    The JWT verifier is built from ``WS_JWT_*`` when no custom ``verifier`` is given, here, at
    start-up (the router builds its authenticator when it is created, each route's when it is
    registered).

    Raises:
        ConfigurationError: auth is asked for (any ``WS_JWT_*`` key, algorithm, audience,
            issuer or leeway set, ``WS_AUTH_ENABLED=true`` or ``WS_AUTH_REQUIRED=true`` set
            explicitly, or a route's ``auth=`` requiring or enabling it) but the keys cannot
            verify every configured algorithm: ``WS_JWT_ALGORITHMS=none`` or another unknown
            algorithm, HS* without ``WS_JWT_SECRET``, RS*/ES* without a fitting
            ``WS_JWT_PUBLIC_KEY`` or ``WS_JWT_JWKS`` key, a key no algorithm uses. The message
            names the variable to set. With nothing configured at all (the defaults), clients
            connect anonymously, every presented token is refused with 4401, and a WARNING
            says so once per authenticator.
    """

    def __init__(self, settings: WebSocketSettings, options: AuthOptions | None = None) -> None:
        self.settings = settings
        self.options = options if options is not None else AuthOptions()
        opts = self.options
        self.required: bool = opts.required if opts.required is not None else settings.auth_required
        if opts.enabled is not None:
            self.enabled: bool = opts.enabled
        else:
            self.enabled = settings.auth_enabled or opts.required is True
        if not self.enabled:
            self.required = False
        self._origins = frozenset(o.strip().rstrip("/") for o in settings.allowed_origins)
        self._routes: dict[AuthOptions, Authenticator] = {}
        self.verifier: TokenVerifier | None = opts.verifier
        if self.verifier is None and self.enabled:
            asked = _auth_asked_for(settings, opts)
            try:
                self.verifier = JWTVerifier.from_settings(settings)
            except ConfigurationError as exc:
                if asked:  # the configuration asks for tokens it cannot verify: refuse to start
                    raise ConfigurationError(
                        f"{exc} (auth is on: {asked}; WS_AUTH_ENABLED=false turns it off)"
                    ) from None
                logger.warning(
                    "auth is enabled (the default) but no JWT key is configured: clients "
                    "connect anonymously and every presented token is refused with 4401. Set "
                    "WS_JWT_SECRET (or WS_JWT_PUBLIC_KEY / WS_JWT_JWKS), or "
                    "WS_AUTH_ENABLED=false to run without auth"
                )

    def for_route(self, options: AuthOptions) -> Authenticator:
        """A copy with ``options`` merged over this one's (cached: call it per connection)."""
        try:
            cached = self._routes.get(options)
        except TypeError:  # an unhashable verifier or loader
            cached = None
        if cached is not None:
            return cached
        merged = self.options.merged(options)
        if merged == self.options:
            return self
        route = Authenticator(self.settings, merged)
        if merged.verifier is None and route.enabled and isinstance(self.verifier, JWTVerifier):
            route.verifier = self.verifier  # share the parsed keys
        with contextlib.suppress(TypeError):  # unhashable options are simply not cached
            self._routes[options] = route
        return route

    async def authenticate(self, conn: HTTPConnection) -> AuthResult:
        """Authenticate a WebSocket handshake or an HTTP request (see the module docs).

        Raises:
            AuthenticationError: the connection must be refused (4401 / HTTP 401).
        """
        subprotocol = None
        if conn.scope.get("type") == "websocket" and TOKEN_SUBPROTOCOL in _offered_subprotocols(
            conn
        ):
            subprotocol = TOKEN_SUBPROTOCOL
        if not self.enabled:
            return _anonymous(subprotocol)
        token, _transport = extract_token(conn)
        if token is None:
            if self.required:
                logger.debug("token refused: none presented on a route that requires auth")
                raise AuthenticationError("missing token")
            return _anonymous(subprotocol)
        claims = await self._verify(token)
        if self.options.user_loader is not None:
            try:
                user = await _call_user_loader(self.options.user_loader, claims)
            except AuthenticationError:
                raise
            except Exception:
                logger.exception("user_loader failed; refusing the connection")
                raise AuthenticationError("invalid token") from None
            if user is None:
                logger.debug("token refused: user_loader returned None")
                raise AuthenticationError("unknown user")
        else:
            user = _default_user(claims)
        leeway = self.verifier.leeway if isinstance(self.verifier, JWTVerifier) else 0.0
        return AuthResult(True, user, claims, _expires_at(claims, leeway), subprotocol)

    async def _verify(self, token: str) -> Mapping[str, Any]:
        if self.verifier is None:
            logger.debug("token refused: no verifier configured")
            raise AuthenticationError("invalid token")
        try:
            claims = await self.verifier.verify(token)
        except AuthenticationError:
            raise
        except Exception:
            logger.exception("token verifier failed; refusing the connection")
            raise AuthenticationError("invalid token") from None
        if not isinstance(claims, Mapping):
            logger.error("token verifier returned %s, not a mapping", type(claims).__name__)
            raise AuthenticationError("invalid token")
        return claims

    def origin_allowed(self, conn: HTTPConnection) -> bool:
        """Check ``Origin`` against ``WS_ALLOWED_ORIGINS`` (exact match; trailing ``/`` ignored).

        An empty list disables the check: any site's pages may then open connections with the
        user's cookies (cross-site WebSocket hijacking) -- harmless only when auth uses tokens
        that scripts on other sites cannot read, never cookies. A handshake *without* ``Origin``
        is allowed: browsers always send one, so its absence means a non-browser client, which
        could forge any value anyway. Several ``Origin`` headers are refused.
        """
        if not self._origins:
            return True
        values = conn.headers.getlist("origin")
        if not values:
            return True
        if len(values) > 1:
            return False
        return values[0].strip() in self._origins


def _configuration(authenticator: Authenticator) -> tuple[Any, ...]:
    """What decides how a token is checked: the auth and JWT settings, and the options."""
    settings = authenticator.settings
    names = sorted(
        name
        for name in type(settings).model_fields
        if name.startswith(("auth_", "jwt_")) or name == "allowed_origins"
    )
    return tuple(getattr(settings, name) for name in names), authenticator.options


def _app_authenticators(app: Any) -> list[tuple[Authenticator, list[str]]]:
    """One router authenticator per distinct configuration among ``app``'s event routes,
    each with the paths of the routes it covers."""
    from .routing import app_event_routes  # routing builds on this module

    found: list[tuple[Authenticator, tuple[Any, ...], list[str]]] = []
    for path, route in app_event_routes(app):
        authenticator = route.router.authenticator
        key = _configuration(authenticator)
        for _, other, paths in found:
            if other == key:
                paths.append(path)
                break
        else:
            found.append((authenticator, key, [path]))
    return [(authenticator, paths) for authenticator, _, paths in found]


def _ambiguity(found: list[tuple[Authenticator, list[str]]]) -> str:
    routes = "; ".join(", ".join(paths) for _, paths in found)
    return (
        f"current_user/optional_user: this app's WebSocket routers have {len(found)} different "
        f"auth configurations (routes {routes}), so it cannot tell which one checks the token; "
        "depend on the router's own: Depends(router.current_user) or "
        "Depends(router.optional_user)"
    )


def ambiguous_authenticators(app: Any) -> str:
    """Why plain [`current_user`][fastapi_orcs_ws.current_user] cannot serve ``app`` over HTTP
    ('' when it can)."""
    found = _app_authenticators(app)
    return _ambiguity(found) if len(found) > 1 else ""


def _authenticator_for(
    conn: HTTPConnection, preferred: Authenticator | None = None
) -> Authenticator:
    """The authenticator for ``conn``: the serving WebSocket route's, else ``preferred`` (a
    router's own dependency), else the app's only configuration, else one from ``WS_*``."""
    found = conn.scope.get(SCOPE_AUTHENTICATOR)
    if isinstance(found, Authenticator):
        return found
    # A WebSocket handshake's own dependencies run before the session fills the scope.
    route = getattr(conn.scope.get("endpoint"), "__orcs_route__", None)
    found = getattr(route, "authenticator", None)
    if isinstance(found, Authenticator):
        return found
    if preferred is not None:
        return preferred
    app = conn.scope.get("app")
    state = getattr(app, "state", None)
    # Set by an application itself (this library never writes it): an explicit choice.
    found = getattr(state, APP_STATE_AUTHENTICATOR, None)
    if isinstance(found, Authenticator):
        return found
    routers = _app_authenticators(app)
    if len(routers) > 1:
        raise ConfigurationError(_ambiguity(routers))
    if routers:
        return routers[0][0]
    # No WebSocket router in this app: the settings from the environment, built once.
    found = getattr(state, _APP_STATE_DEFAULT, None)
    if isinstance(found, Authenticator):
        return found
    authenticator = Authenticator(WebSocketSettings())
    if state is not None:
        setattr(state, _APP_STATE_DEFAULT, authenticator)
    return authenticator


def _refuse(conn: HTTPConnection, message: str) -> Exception:
    if conn.scope.get("type") == "websocket":
        return AuthenticationError(message)
    return HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})


async def _resolve(
    conn: HTTPConnection, *, required: bool, authenticator: Authenticator | None = None
) -> Any:
    live = conn.scope.get(SCOPE_CONNECTION)
    if live is not None:
        data = live.data
        if data.authenticated:
            return data.user
        if required:
            raise AuthenticationError("authentication required")
        return None
    result: AuthResult | None = None
    try:
        # Over HTTP, no token means anonymous whatever WS_AUTH_REQUIRED says: the dependency
        # (current_user or optional_user) decides.
        if conn.scope.get("type") != "http" or extract_token(conn)[0] is not None:
            result = await _authenticator_for(conn, authenticator).authenticate(conn)
    except AuthenticationError as exc:
        raise _refuse(conn, str(exc)) from None
    if result is None or not result.authenticated:
        if required:
            raise _refuse(conn, "authentication required")
        return None
    return result.user


async def current_user(conn: HTTPConnection) -> Any:
    """FastAPI dependency: the authenticated user, or refuse.

    In an event handler it returns the connection's user (``AuthenticationError`` if the
    connection is anonymous). In an HTTP route it verifies ``Authorization: Bearer`` with the
    app's auth configuration and answers 401 (``WWW-Authenticate: Bearer``) when that fails.
    That configuration is the app's WebSocket routers' (all alike), or ``WS_*`` when the app
    has none; when routers differ, use the router's own ``Depends(router.current_user)``
    (the app refuses to start otherwise).

    Raises:
        ConfigurationError: over HTTP, the app's routers have several auth configurations.

    Example:
        ```python
        @app.get("/me")
        async def me(user: User = Depends(current_user)) -> dict[str, str]:
            return {"id": user.id}
        ```
    """
    return await _resolve(conn, required=True)


async def optional_user(conn: HTTPConnection) -> Any:
    """FastAPI dependency: the user, or ``None`` when anonymous.

    A presented but invalid token is still refused (401 / ``AuthenticationError``). Which
    configuration checks it: as for [`current_user`][fastapi_orcs_ws.current_user].
    """
    return await _resolve(conn, required=False)
