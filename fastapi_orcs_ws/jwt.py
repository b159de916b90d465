"""A hardened JWT verifier on top of python-jose.

python-jose 3.5 has unsafe defaults (see ``PITFALLS.md``): without ``algorithms`` it trusts the
token's ``alg``; it accepts a token without ``aud``/``exp`` unless told to require them; it
ignores ``crit``; it does not refuse an ``iat`` in the future.
[`JWTVerifier`][fastapi_orcs_ws.JWTVerifier] closes each of these gaps and does the cheap structural
checks before any cryptography runs.

Every refusal raises [`AuthenticationError`][fastapi_orcs_ws.AuthenticationError] with a generic
message (``"invalid token"`` or ``"token expired"``); the precise reason is logged at DEBUG on
the ``fastapi_orcs_ws.auth`` logger, never with the token itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk
from jose import jwt as jose_jwt
from jose.exceptions import ExpiredSignatureError, JOSEError

from .errors import AuthenticationError, ConfigurationError

if TYPE_CHECKING:
    from .settings import WebSocketSettings

__all__ = ["MAX_TOKEN_BYTES", "SUPPORTED_ALGORITHMS", "JWTVerifier"]

logger = logging.getLogger("fastapi_orcs_ws.auth")

MAX_TOKEN_BYTES = 8 * 1024
"""Tokens longer than this are refused before any decoding work."""

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# RFC 7518 §3.3/§3.4. No PS*: python-jose 3.x cannot verify RSASSA-PSS signatures.
_PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(
    sorted(_HMAC_ALGORITHMS) + sorted(_PUBLIC_KEY_ALGORITHMS)
)
"""The JWS algorithms a verifier accepts (RFC 7518); ``none`` is never one of them."""
# RFC 7518 §3.4: each ECDSA algorithm is tied to one curve (JWK ``crv``, cryptography's name).
_CURVES = {
    "ES256": ("P-256", "secp256r1"),
    "ES384": ("P-384", "secp384r1"),
    "ES512": ("P-521", "secp521r1"),
}
# Compact JWS: three base64url segments; the signature may not be empty (that is ``alg: none``).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}")


def _refuse(reason: str, *, message: str = "invalid token") -> NoReturn:
    logger.debug("token refused: %s", reason)
    raise AuthenticationError(message)


_KEY_TYPES = {"RS": "RSA", "ES": "EC"}


def _fits(key: Mapping[str, Any], alg: str) -> bool:
    """Whether a JWK may verify ``alg``: never HMAC, the right key type (and EC curve)."""
    if alg not in _PUBLIC_KEY_ALGORITHMS or key.get("kty") != _KEY_TYPES.get(alg[:2]):
        return False
    if alg in _CURVES and key.get("crv") != _CURVES[alg][0]:
        return False
    return key.get("alg") in (None, alg)


def _pem_algorithms(pem: str, algorithms: Sequence[str]) -> list[str]:
    """Which of ``algorithms`` a PEM public key (or certificate) can verify."""
    if "PRIVATE KEY" in pem:
        raise ConfigurationError(
            "WS_JWT_PUBLIC_KEY holds a private key: give the public key (the server only verifies)"
        )
    data = pem.strip().encode()
    key: Any
    try:
        if b"CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        hint = " (it holds literal \\n: use real line breaks)" if "\\n" in pem else ""
        raise ConfigurationError(
            f"WS_JWT_PUBLIC_KEY is not a PEM public key or certificate{hint}: {str(exc)[:120]}"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        return [alg for alg in algorithms if alg.startswith("RS")]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return [a for a in algorithms if a in _CURVES and key.curve.name == _CURVES[a][1]]
    return []


def _parse_jwks(jwks: Mapping[str, Any] | str, algorithms: Sequence[str]) -> dict[str, Any]:
    """``{kid: jwk}`` of the public keys in a JWK set, each checked at start-up."""
    try:
        data = json.loads(jwks) if isinstance(jwks, str) else dict(jwks)
    except ValueError as exc:
        raise ConfigurationError(f"WS_JWT_JWKS is not JSON: {exc}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise ConfigurationError('WS_JWT_JWKS must be a JWK set: {"keys": [...]}')
    found: dict[str, Any] = {}
    for key in keys:
        if not isinstance(key, dict) or not isinstance(key.get("kid"), str):
            raise ConfigurationError("WS_JWT_JWKS: every key needs a string kid")
        if "d" in key or key.get("kty") == "oct":
            raise ConfigurationError("WS_JWT_JWKS holds public keys only (no secrets)")
        usable = [alg for alg in algorithms if _fits(key, alg)]
        if not usable:
            raise ConfigurationError(
                f"WS_JWT_JWKS: key {key['kid']!r} (kty {key.get('kty')!r}, alg "
                f"{key.get('alg')!r}) fits none of WS_JWT_ALGORITHMS {list(algorithms)}"
            )
        try:
            jwk.construct(key, usable[0])
        except (JOSEError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"WS_JWT_JWKS: key {key['kid']!r}: {exc}") from None
        found[key["kid"]] = key
    return found


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class JWTVerifier:
    """Verify signed JWTs (JWS compact form) with python-jose, safely.

    Args:
        secret: Shared secret for ``HS256``/``HS384``/``HS512``.
        public_key: PEM public key (or certificate) for ``RS*`` (an RSA key) or ``ES*`` (an EC
            key on the algorithm's curve: P-256, P-384, P-521). Private keys are refused.
        jwks: A JWK set (``{"keys": [...]}``, as a mapping or JSON text) for ``RS*``/``ES*``:
            a token naming a ``kid`` is checked with that key only, and only if the key's type
            (curve, and ``alg`` when the key states one) fits the token's algorithm.
        algorithms: The only algorithms accepted (RFC 7518 names: ``HS256``/``384``/``512``,
            ``RS256``/``384``/``512``, ``ES256``/``384``/``512``; python-jose cannot verify
            ``PS*``); the token's header never widens this list. Every HMAC algorithm needs
            ``secret``; every public-key algorithm a ``public_key`` or ``jwks`` key that fits
            it; every key given must serve at least one listed algorithm.
        audience: When set, the token must carry an ``aud`` containing it.
        issuer: When set, the token must carry exactly this ``iss``.
        leeway: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.

    Refused, with [`AuthenticationError`][fastapi_orcs_ws.AuthenticationError]:

    * tokens over 8 KiB, tokens that are not three base64url segments (encrypted JWE tokens
      have five), a header that is not a JSON object, a ``crit`` header, ``alg: none`` or any
      ``alg`` outside ``algorithms`` -- all before any signature work;
    * a bad signature. The key is chosen by the algorithm family, so an ``HS256`` token signed
      with the RSA public key of an ``RS256`` set-up is checked against the shared secret (or,
      with no secret configured, refused outright) and fails;
    * a missing or non-numeric ``exp``; ``exp`` in the past, ``nbf`` or ``iat`` in the future
      (each beyond ``leeway``);
    * with ``audience``/``issuer`` configured, a token lacking ``aud``/``iss`` or carrying another
      value. Without ``audience``, a token that carries an ``aud`` is refused too (it was meant
      for somebody else).

    Raises:
        ConfigurationError: an unknown algorithm (``none`` included), an algorithm no key can
            verify, a key no algorithm uses, or a key that does not parse. The message names
            the ``WS_JWT_*`` variable to set.

    Example:
        ```python
        verifier = JWTVerifier(secret=os.environ["WS_JWT_SECRET"], audience="chat")
        claims = await verifier.verify(token)
        ```
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        jwks: Mapping[str, Any] | str | None = None,
        algorithms: Sequence[str] = ("HS256",),
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        if isinstance(algorithms, str):
            algorithms = (algorithms,)
        algs = tuple(dict.fromkeys(a.strip() for a in algorithms if a.strip()))
        if not algs:
            raise ConfigurationError("WS_JWT_ALGORITHMS: at least one algorithm is required")
        unknown = [a for a in algs if a not in _HMAC_ALGORITHMS | _PUBLIC_KEY_ALGORITHMS]
        if unknown:
            raise ConfigurationError(
                f"WS_JWT_ALGORITHMS: unsupported {', '.join(unknown)}; choose from "
                f'{", ".join(SUPPORTED_ALGORITHMS)} ("none" is never allowed)'
            )
        if leeway < 0:
            raise ConfigurationError("WS_JWT_LEEWAY must be >= 0")
        hmac_algs = [a for a in algs if a in _HMAC_ALGORITHMS]
        public_algs = [a for a in algs if a in _PUBLIC_KEY_ALGORITHMS]
        if hmac_algs and not secret:
            raise ConfigurationError(
                f"WS_JWT_ALGORITHMS includes {', '.join(hmac_algs)} but WS_JWT_SECRET is not "
                "set: set WS_JWT_SECRET, or list in WS_JWT_ALGORITHMS only the algorithms "
                "your keys verify (the default is HS256)"
            )
        if secret and not hmac_algs:
            raise ConfigurationError(
                f"WS_JWT_SECRET is set but WS_JWT_ALGORITHMS ({', '.join(algs)}) has no "
                "HS256/HS384/HS512 to use it: add one, or unset WS_JWT_SECRET"
            )
        if (public_key or jwks is not None) and not public_algs:
            given = "WS_JWT_PUBLIC_KEY" if public_key else "WS_JWT_JWKS"
            raise ConfigurationError(
                f"{given} is set but WS_JWT_ALGORITHMS ({', '.join(algs)}) has no RS*/ES* "
                "algorithm to use it: add the algorithm your tokens are signed with, e.g. RS256"
            )
        self._jwks = _parse_jwks(jwks, public_algs) if jwks is not None else {}
        self._pem_algorithms = frozenset(
            _pem_algorithms(public_key, public_algs) if public_key else ()
        )
        if public_key and not self._pem_algorithms:
            raise ConfigurationError(
                f"WS_JWT_PUBLIC_KEY verifies none of WS_JWT_ALGORITHMS ({', '.join(public_algs)})"
                ": RS* needs an RSA key, ES256/ES384/ES512 an EC key on P-256/P-384/P-521"
            )
        for alg in sorted(self._pem_algorithms):  # python-jose must take it too, now
            assert public_key is not None
            try:
                jwk.construct(public_key, alg)
            except (JOSEError, ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"WS_JWT_PUBLIC_KEY is not a usable {alg} public key: {exc}"
                ) from None
        keyless = [
            alg
            for alg in public_algs
            if alg not in self._pem_algorithms
            and not any(_fits(k, alg) for k in self._jwks.values())
        ]
        if keyless:
            raise ConfigurationError(
                f"WS_JWT_ALGORITHMS includes {', '.join(keyless)} but no key verifies "
                f"{'it' if len(keyless) == 1 else 'them'}: set WS_JWT_PUBLIC_KEY (PEM) or "
                "WS_JWT_JWKS with a matching key, or remove "
                f"{'it' if len(keyless) == 1 else 'them'} from WS_JWT_ALGORITHMS"
            )
        if secret and len(secret.encode()) < 32:
            logger.warning("the JWT secret is shorter than 32 bytes; use a long random secret")
        self._secret = secret
        self._public_key = public_key
        self.algorithms: tuple[str, ...] = algs
        self.audience = audience
        self.issuer = issuer
        self.leeway = float(leeway)

    @classmethod
    def from_settings(cls, settings: WebSocketSettings) -> JWTVerifier:
        """Build from ``WS_JWT_*`` settings; raises
        [`ConfigurationError`][fastapi_orcs_ws.ConfigurationError] if no key fits."""
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        return cls(
            secret=secret,
            public_key=settings.jwt_public_key,
            jwks=settings.jwt_jwks,
            algorithms=settings.jwt_algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
        )

    def __repr__(self) -> str:  # never show the secret
        return (
            f"JWTVerifier(algorithms={list(self.algorithms)!r}, audience={self.audience!r}, "
            f"issuer={self.issuer!r}, leeway={self.leeway!r})"
        )

    async def verify(self, token: str) -> Mapping[str, Any]:
        """Return the token's claims, or raise
        [`AuthenticationError`][fastapi_orcs_ws.AuthenticationError]."""
        return self.verify_sync(token)

    def verify_sync(self, token: str) -> dict[str, Any]:
        """Synchronous [`verify`][fastapi_orcs_ws.JWTVerifier.verify] (the work is a few
        microseconds of CPU)."""
        if not isinstance(token, str) or not token:
            _refuse("empty token")
        if len(token) > MAX_TOKEN_BYTES:  # str length <= UTF-8 length; checked before encoding
            _refuse("token too long")
        if not token.isascii() or len(token.encode()) > MAX_TOKEN_BYTES:
            _refuse("token not ASCII or too long")
        if token.count(".") != 2:
            _refuse("not a compact JWS (encrypted or malformed token)")
        if not _COMPACT_JWS.fullmatch(token):
            _refuse("malformed token")
        header = self._header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            _refuse(f"algorithm {str(alg)[:20]!r} not allowed")
        key: str | dict[str, Any] | None = (
            self._secret
            if alg in _HMAC_ALGORITHMS
            else self._public_key
            if alg in self._pem_algorithms
            else None
        )
        kid = header.get("kid")
        if self._jwks and kid is not None and alg in _PUBLIC_KEY_ALGORITHMS:
            # The key set decides: the named key, and only for an algorithm it fits.
            chosen = self._jwks.get(kid) if isinstance(kid, str) else None
            if chosen is None:
                _refuse("unknown kid")
            if not _fits(chosen, alg):
                _refuse(f"key {kid[:40]!r} does not fit {alg}")
            key = chosen
        if not key:
            _refuse(f"no key configured for {alg}")
        options: dict[str, Any] = {
            "require_exp": True,
            "require_aud": self.audience is not None,
            "require_iss": self.issuer is not None,
            "leeway": self.leeway,
        }
        try:
            claims: dict[str, Any] = jose_jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options=options,
            )
        except ExpiredSignatureError:
            _refuse("expired", message="token expired")
        except (JOSEError, ValueError, TypeError, KeyError) as exc:
            _refuse(f"{type(exc).__name__}: {str(exc)[:200]}")
        self._check_times(claims)
        return claims

    def _header(self, token: str) -> dict[str, Any]:
        segment = token.split(".", 1)[0]
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
            header = json.loads(raw)
        except (binascii.Error, ValueError, RecursionError):
            _refuse("header is not base64url JSON")
        if not isinstance(header, dict):
            _refuse("header is not a JSON object")
        if "crit" in header:
            _refuse("crit header not supported")
        if "enc" in header:
            _refuse("encrypted tokens not supported")
        return header

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = time.time()
        exp = claims.get("exp")
        if not _is_number(exp):
            _refuse("exp missing or not a number")
        assert isinstance(exp, int | float)
        if exp + self.leeway <= now:
            _refuse("expired", message="token expired")
        for name in ("nbf", "iat"):
            if name not in claims:
                continue
            value = claims[name]
            if not _is_number(value):
                _refuse(f"{name} not a number")
            if value > now + self.leeway:
                _refuse(f"{name} in the future")
