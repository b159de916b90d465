"""Settings read from ``WS_*`` environment variables and ``.env``."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import from_json
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigurationError
from .jwt import SUPPORTED_ALGORITHMS

__all__ = ["WebSocketSettings"]

MiB = 1024 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class WebSocketSettings(BaseSettings):
    """Every setting, with its environment variable (``WS_`` + the upper-case name).

    Values come from keyword arguments, then the environment, then ``.env``, then the
    defaults. List settings (``allowed_origins``, ``jwt_algorithms``) take a JSON list
    (``["a", "b"]``, as pydantic-settings users write) or a comma-separated string
    (``a, b``), from any of these sources.

    Raises:
        ConfigurationError: a value is invalid; the message names the variable
            (``WS_IDLE_TIMEOUT: ...``) and what it accepts.

    Example:
        ```python
        settings = WebSocketSettings(idle_timeout=60)  # WS_IDLE_TIMEOUT ignored
        router = WebSocketRouter(settings=settings)
        ```
    """

    # An empty variable (WS_JWT_SECRET=) means "not set", as in shells and compose files.
    model_config = SettingsConfigDict(
        env_prefix="WS_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
    )

    idle_timeout: float = Field(120.0, ge=1, allow_inf_nan=False)
    """Seconds after which a peer that answers nothing, not even pings, is dropped."""
    max_payload_length: int = Field(16 * MiB, gt=0)
    """Largest inbound frame in bytes; larger frames close the connection with 1009."""
    send_queue_size: int = Field(1024, ge=1)
    """Frames that may wait for one client; one more closes it with 4429. Above half of it
    the client is *behind*: its senders wait (flow control, docs/lifecycle.md)."""
    send_queue_bytes: int = Field(16 * MiB, ge=1)
    """Bytes (text characters) that may wait for one client, as ``send_queue_size``; a frame
    larger than this is still sent to a client with nothing queued."""
    slow_consumer_timeout: float = Field(5.0, gt=0, allow_inf_nan=False)
    """Seconds a write to one client may make no progress before it is closed with 4429; the
    longest a broadcast or ``ws.send`` waits on one client."""
    inbound_queue_size: int = Field(64, ge=1)
    """Events of one client received but not yet handled; when full the server stops reading
    that client (TCP backpressure) until a handler finishes."""
    inbound_queue_bytes: int = Field(16 * MiB, ge=1)
    """Bytes of those events; past it the server stops reading that client, as when
    ``inbound_queue_size`` is full (one frame is always taken)."""
    max_connections: int = Field(10_000, ge=0)
    """Connections this process accepts in all; more are refused (HTTP 429). 0: no cap."""
    max_connections_per_ip: int = Field(256, ge=0)
    """Connections from one client address (as the ASGI server reports it: behind a proxy,
    run uvicorn with ``--proxy-headers``); more are refused (HTTP 429). 0: no cap."""
    max_connections_per_user: int = Field(32, ge=0)
    """Connections of one authenticated user (``sub``) to this process; more are refused
    (HTTP 429). 0: no cap."""
    rate_limit_per_second: float = Field(100.0, ge=0)
    """Events per second one connection may send (a token bucket; per-route ``rate_limit=``
    overrides it). Over it: one ``rate_limited`` error event, then close 1008. 0: no limit."""
    rate_limit_burst: int = Field(200, ge=1)
    """Events one connection may send at once before the rate applies."""
    max_rooms_per_client: int = Field(100, ge=0)
    """Rooms one client may be in; ``join_room`` into one more raises ``RoomLimitError``
    (a ``room_limit`` error event when a handler lets it propagate). 0: no cap."""
    max_room_name_length: int = Field(256, ge=1)
    """Longest room name ``join_room`` accepts, in characters; longer: ``RoomLimitError``."""
    close_timeout: float = Field(5.0, gt=0, allow_inf_nan=False)
    """Seconds to wait for a close frame to be written before giving up on the peer."""
    drain_seconds: float = Field(0.0, ge=0, le=3600)
    """Seconds over which a shutting-down process closes its clients (1012, spread with
    jitter) instead of all at once; new WebSockets are refused meanwhile (HTTP 503). Used on
    SIGTERM, by ``manager.stop()`` and by ``manager.drain()``. 0: close at once."""
    compression: bool = False
    """Offer permessage-deflate (used by `uvicorn_settings`). Off: it costs CPU per frame."""
    debug: bool = False
    """Check outgoing payloads against declared ``emits`` models."""
    docs_console: bool = True
    """Offer the "Try it" console on the ``/ws-docs`` page (connect, send events, see every
    frame). ``false`` (e.g. in production): the page only documents. It shows only when every
    router of the app has it on: one ``false`` turns it off for the whole page."""
    backend_url: str = "memory://"
    """Where membership and delivery live: ``memory://`` or ``redis://host:port/db``."""

    auth_enabled: bool = True
    """Read and verify tokens on the handshake."""
    auth_required: bool = False
    """Refuse connections without a valid token (per-route ``auth=`` overrides it)."""
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins (``scheme://host[:port]``) allowed to connect, as a JSON list or comma-separated;
    empty disables the check. Compared as browsers send them (lower case, no default port)."""

    jwt_secret: SecretStr | None = None
    """Shared secret for HS256/HS384/HS512."""
    jwt_public_key: str | None = None
    """PEM public key (or certificate) for RS*/ES* algorithms."""
    jwt_jwks: str | None = None
    """A JWK set as JSON (``{"keys": [...]}``) for RS*/ES*; tokens pick a key by ``kid``."""
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["HS256"])
    """Accepted algorithms, as a JSON list or comma-separated. Never taken from the token."""
    jwt_audience: str | None = None
    """When set, tokens must carry this ``aud``."""
    jwt_issuer: str | None = None
    """When set, tokens must carry this ``iss``."""
    jwt_leeway: float = Field(0.0, ge=0)
    """Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"WS_{str(err['loc'][0]).upper()}: {_message(err['msg'])}"
                if err["loc"]
                else _message(err["msg"])
                for err in exc.errors(include_url=False)
            )
            raise ConfigurationError(f"invalid WebSocket settings: {problems}") from None

    @field_validator("allowed_origins", "jwt_algorithms", mode="before")
    @classmethod
    def _list_setting(cls, value: Any) -> list[str]:
        return _parse_list(value)

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        return [_serialised_origin(origin) for origin in origins]

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, algorithms: list[str]) -> list[str]:
        if not algorithms:
            raise ValueError("at least one algorithm is required, e.g. HS256")
        for alg in algorithms:
            if alg in SUPPORTED_ALGORITHMS:
                continue
            if alg.lower() == "none":
                hint = "'none' (unsigned tokens) is never accepted"
            elif alg.upper() in SUPPORTED_ALGORITHMS:
                hint = f"{alg!r} is spelled {alg.upper()} (names are case-sensitive)"
            else:
                hint = f"{alg!r:.40} is not supported"
            raise ValueError(f"{hint}; choose from {', '.join(SUPPORTED_ALGORITHMS)}")
        return list(dict.fromkeys(algorithms))


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _parse_list(value: Any) -> list[str]:
    """A JSON list of strings or a comma-separated string, as a list of non-empty strings."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [part.strip() for part in text.split(",") if part.strip()]
        try:
            value = from_json(text)
        except ValueError as exc:
            raise ValueError(
                f"starts with '[' but is not a JSON list ({str(exc)[:80]}); write "
                '["a", "b"] or a, b'
            ) from None
    if not isinstance(value, list | tuple):
        raise ValueError(
            f'expected a JSON list of strings (["a", "b"]) or a comma-separated string (a, b), '
            f"not {type(value).__name__}"
        )
    items = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"every entry must be a non-empty string, not {item!r:.40}")
        items.append(item.strip())
    return items


def _serialised_origin(origin: str) -> str:
    """``origin`` as a browser sends it in ``Origin`` (RFC 6454 §6.2), or ``ValueError``."""
    if origin == "*":
        raise ValueError("'*' is not an origin; leave the list empty to allow every origin")
    try:
        parts = urlsplit(origin.rstrip("/"))
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or not parts.scheme
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(
            f"{origin!r:.80} is not an origin; write scheme://host[:port], e.g. "
            "https://app.example (no path)"
        )
    scheme, host = parts.scheme.lower(), parts.hostname  # urlsplit lower-cases the host
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
