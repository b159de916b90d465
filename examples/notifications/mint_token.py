"""DEMO ONLY: mint a token for local testing of the notifications example.

    python -m examples.notifications.mint_token alice [--ttl 3600]

Signs with ``WS_JWT_SECRET`` (HS256/384/512 from ``WS_JWT_ALGORITHMS``) and adds
``WS_JWT_AUDIENCE`` / ``WS_JWT_ISSUER`` when set. Real applications get tokens from their
identity provider; never expose a minting endpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from jose import jwt

from fastapi_orcs_ws import WebSocketSettings


def mint(user_id: str, *, ttl: int = 3600, settings: WebSocketSettings | None = None) -> str:
    """A signed token for ``user_id`` valid for ``ttl`` seconds (demo only)."""
    settings = settings if settings is not None else WebSocketSettings()
    if settings.jwt_secret is None:
        raise SystemExit("set WS_JWT_SECRET first (the demo mints HS* tokens only)")
    algorithm = next((a for a in settings.jwt_algorithms if a.startswith("HS")), None)
    if algorithm is None:
        raise SystemExit("WS_JWT_ALGORITHMS has no HS256/HS384/HS512 to mint with")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return str(jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm=algorithm))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DEMO ONLY: mint a token for a local user.")
    parser.add_argument("user_id")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds of validity (3600)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    print(mint(args.user_id, ttl=args.ttl))
    print("(demo token: do not use in production)", file=sys.stderr)


if __name__ == "__main__":
    main()
