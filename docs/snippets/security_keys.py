"""Two kinds of tokens: users' (HS256, from WS_JWT_*) and a service's (ES256 public key)."""

import os

from fastapi import FastAPI

from fastapi_orcs_ws import AuthOptions, Connection, JWTVerifier, WebSocketRouter

service_tokens = JWTVerifier(
    public_key=os.environ["BILLING_PUBLIC_KEY"],  # PEM; only the issuer holds the private key
    algorithms=["ES256"],  # pinned: the token's own "alg" header never widens this
    audience="ingest",
    issuer="https://billing.internal",
    leeway=5,  # seconds of clock skew tolerated on exp, nbf and iat
)

router = WebSocketRouter()  # users' tokens: WS_JWT_SECRET, WS_JWT_ALGORITHMS...
users = router.ws("/ws/users", auth={"required": True})
ingest = router.ws("/ws/ingest", auth=AuthOptions(required=True, verifier=service_tokens))


@ingest.on("usage")
async def usage(ws: Connection, payload: dict[str, int]) -> str:
    return f"{ws.data.user.id}: {sum(payload.values())}"


app = FastAPI()
app.include_router(router)
