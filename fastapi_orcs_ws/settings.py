"""Settings read from ``WS_*`` environment variables and ``.env``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigurationError

__all__ = ["WebSocketSettings"]

MiB = 1024 * 1024


class WebSocketSettings(BaseSettings):
    """Every setting, with its environment variable (``WS_`` + the upper-case name).

    Values come from keyword arguments, then the environment, then ``.env``, then the
    defaults. An invalid value raises :class:`ConfigurationError` naming the variable.

    Example:
        ```python
        settings = WebSocketSettings(idle_timeout=60)  # WS_IDLE_TIMEOUT ignored
        router = WebSocketRouter(settings=settings)
        ```
    """

    model_config = SettingsConfigDict(
        env_prefix="WS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    idle_timeout: float = Field(120.0, gt=0)
    """Seconds after which a peer that answers nothing, not even pings, is dropped."""
    max_payload_length: int = Field(16 * MiB, gt=0)
    """Largest inbound frame in bytes; larger frames close the connection with 1009."""
    send_queue_size: int = Field(1024, ge=1)
    """Frames waiting for a slow client before it is disconnected with 4429."""
    close_timeout: float = Field(5.0, gt=0)
    """Seconds to wait for a close frame to be written before giving up on the peer."""
    compression: bool = False
    """Offer permessage-deflate (used by :func:`uvicorn_settings`). Off: it costs CPU per frame."""
    debug: bool = False
    """Check outgoing payloads against declared ``emits`` models."""
    backend_url: str = "memory://"
    """Where membership and delivery live: ``memory://`` or ``redis://host:port/db``."""

    auth_enabled: bool = True
    """Read and verify tokens on the handshake."""
    auth_required: bool = False
    """Refuse connections without a valid token (per-route ``auth=`` overrides it)."""
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Exact ``Origin`` values allowed to connect (comma-separated); empty disables the check."""

    jwt_secret: SecretStr | None = None
    """Shared secret for HS256/HS384/HS512."""
    jwt_public_key: str | None = None
    """PEM public key for RS*/ES* algorithms."""
    jwt_jwks: str | None = None
    """A JWK set as JSON (``{"keys": [...]}``) for RS*/PS*/ES*; tokens pick a key by ``kid``."""
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["HS256"])
    """Accepted algorithms (comma-separated). Never taken from the token."""
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
                f"WS_{str(err['loc'][0]).upper()}: {err['msg']}" if err["loc"] else err["msg"]
                for err in exc.errors()
            )
            raise ConfigurationError(f"invalid WebSocket settings: {problems}") from None

    @field_validator("allowed_origins", "jwt_algorithms", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
