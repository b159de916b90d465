"""JWK sets: a token picks its key by `kid`, and only a key that fits its algorithm."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from jose import jwk
from jose import jwt as jose_jwt

from fastapi_orcs_ws import ConfigurationError, JWTVerifier, WebSocketSettings
from fastapi_orcs_ws.errors import AuthenticationError

from .tokens import hand_made, rsa_key_pair

pytestmark = pytest.mark.anyio


def public_jwk(public_pem: str, kid: str, **extra: Any) -> dict[str, Any]:
    key: dict[str, Any] = jwk.construct(public_pem, "RS256").to_dict()
    key.update(kid=kid, **extra)
    return key


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    first_private, first_public, _ = rsa_key_pair()
    second_private, second_public, second_der = rsa_key_pair()
    return {
        "k1": (first_private, public_jwk(first_public, "k1")),
        "k2": (second_private, public_jwk(second_public, "k2", alg="RS256")),
        "k2_der": second_der,
        "set": {"keys": [public_jwk(first_public, "k1"), public_jwk(second_public, "k2")]},
    }


def sign(private_pem: str, kid: str | None, **claims: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    body = {"sub": "ada", "exp": time.time() + 60, **claims}
    return str(jose_jwt.encode(body, private_pem, algorithm="RS256", headers=headers))


async def test_each_kid_selects_its_key(keys: dict[str, Any]) -> None:
    verifier = JWTVerifier(jwks=keys["set"], algorithms=["RS256"])
    for kid in ("k1", "k2"):
        claims = await verifier.verify(sign(keys[kid][0], kid))
        assert claims["sub"] == "ada"
    # The JSON text of a set (what WS_JWT_JWKS holds) works the same.
    settings = WebSocketSettings(jwt_jwks=json.dumps(keys["set"]), jwt_algorithms=["RS256"])
    assert (await JWTVerifier.from_settings(settings).verify(sign(keys["k1"][0], "k1")))["sub"]


@pytest.mark.parametrize(
    "case",
    [
        "wrong key for the kid",
        "unknown kid",
        "no kid and no default key",
        "hs256 with key as secret",
    ],
)
async def test_refusals(keys: dict[str, Any], case: str) -> None:
    verifier = JWTVerifier(jwks=keys["set"], algorithms=["RS256", "HS256"], secret="s" * 32)
    if case == "wrong key for the kid":
        token = sign(keys["k1"][0], "k2")  # signed with k1, claims to be k2
    elif case == "unknown kid":
        token = sign(keys["k1"][0], "k9")
    elif case == "no kid and no default key":
        token = sign(keys["k1"][0], None)
    else:
        # Key confusion: HS256 "signed" with a listed public key, naming its kid.
        token = hand_made(
            {"alg": "HS256", "typ": "JWT", "kid": "k2"},
            {"sub": "mallory", "exp": time.time() + 60},
            keys["k2_der"],
        )
    with pytest.raises(AuthenticationError):
        await verifier.verify(token)


def test_bad_key_sets_fail_at_start_up(keys: dict[str, Any]) -> None:
    good = keys["set"]["keys"][0]
    for jwks in (
        "not json",
        {"nokeys": []},
        {"keys": [{**good, "kid": None}]},
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]},  # a secret in a public set
        {"keys": [{**good, "alg": "ES256"}]},  # fits none of the algorithms
    ):
        with pytest.raises(ConfigurationError):
            JWTVerifier(jwks=jwks, algorithms=["RS256"])
