"""Backends: where room membership lives and how frames reach other processes.

A backend is chosen by URL: ``memory://`` (the default, one process) or
``redis://host:port/db`` (several processes or hosts; ``pip install fastapi-orcs-ws[redis]``).
"""

from __future__ import annotations

from .base import Backend, BackendStats, Node
from .memory import MemoryBackend

__all__ = ["Backend", "BackendStats", "MemoryBackend", "Node", "backend_from_url"]


def backend_from_url(url: str) -> Backend:
    """Build the backend a URL names."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryBackend()
    if scheme in ("redis", "rediss"):
        from .redis import RedisBackend  # the optional dependency is imported only here

        return RedisBackend(url)
    from ..errors import ConfigurationError

    raise ConfigurationError(
        f"WS_BACKEND_URL: unsupported backend {url!r}; use memory:// or redis://host:port/db"
    )
