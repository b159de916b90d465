"""Limits one client, one user or one address can reach: rates and connection caps.

Every limit has a setting with a safe default (docs/security.md lists them with their
refusal codes); ``0`` turns a cap off.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["Admission", "RateLimit", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Events per second one connection may send, with a burst allowance (a token bucket).

    ``per_second`` tokens are added each second up to ``burst``; each event takes one. An
    event that finds the bucket empty is not handled: the client gets one ``rate_limited``
    error event, and is closed with 1008 if it sends another ``burst`` events before the
    bucket refills.

    Example:
        ```python
        router.ws("/ws/chat", handlers, rate_limit=RateLimit(per_second=20, burst=40))
        router.ws("/ws/firehose", handlers, rate_limit=None)  # no limit on this route
        ```

    Raises:
        ConfigurationError: ``per_second`` or ``burst`` is not positive.
    """

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_second > 0 or not isinstance(self.burst, int) or self.burst < 1:
            raise ConfigurationError(
                f"RateLimit needs per_second > 0 and burst >= 1, got {self.per_second!r}, "
                f"{self.burst!r}"
            )


class TokenBucket:
    """One connection's [`RateLimit`][fastapi_orcs_ws.RateLimit] state."""

    __slots__ = ("_last", "_rate", "_tokens", "burst", "overdraft")

    def __init__(self, limit: RateLimit) -> None:
        self._rate = limit.per_second
        self.burst = limit.burst
        self._tokens = float(limit.burst)
        self._last = time.monotonic()
        self.overdraft = 0
        """Events refused since the bucket last had a token."""

    def take(self) -> bool:
        """Take a token; False (and one more overdraft) if there is none."""
        now = time.monotonic()
        tokens = min(float(self.burst), self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            self.overdraft = 0
            return True
        self._tokens = tokens
        self.overdraft += 1
        return False

    @property
    def retry_after(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self._tokens) / self._rate)


class Admission:
    """Connection caps of one process: in total, per client address, per user.

    `admit` reserves a place (or says which cap is full); `release` gives it back.
    """

    __slots__ = ("_per_ip", "_per_user", "_total", "max_per_ip", "max_per_user", "max_total")

    def __init__(self, max_total: int, max_per_ip: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_per_user = max_per_user
        self._total = 0
        self._per_ip: Counter[str] = Counter()
        self._per_user: Counter[str] = Counter()

    def admit(self, ip: str | None, user: str | None) -> str | None:
        """Reserve a place; return None, or the name of the full cap (nothing reserved)."""
        if self.max_total and self._total >= self.max_total:
            return "max_connections"
        if ip is not None and self.max_per_ip and self._per_ip[ip] >= self.max_per_ip:
            return "max_connections_per_ip"
        if user is not None and self.max_per_user and self._per_user[user] >= self.max_per_user:
            return "max_connections_per_user"
        self._total += 1
        if ip is not None:
            self._per_ip[ip] += 1
        if user is not None:
            self._per_user[user] += 1
        return None

    def release(self, ip: str | None, user: str | None) -> None:
        self._total -= 1
        for counter, key in ((self._per_ip, ip), (self._per_user, user)):
            if key is not None:
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]
