"""Your own authentication: a TokenVerifier for opaque session ids instead of JWTs."""

import secrets
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI

from fastapi_orcs_ws import AuthenticationError, AuthOptions, Connection, WebSocketRouter


class SessionStore:
    """Stands in for the app's session store (Redis, a database table...)."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[str, float]] = {}

    def open(self, user_id: str, ttl: float = 3600) -> str:
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = (user_id, time.time() + ttl)
        return session_id

    async def get(self, session_id: str) -> tuple[str, float] | None:
        return self._sessions.get(session_id)


class SessionVerifier:
    """Satisfies the TokenVerifier protocol: one async verify(token) method."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def verify(self, token: str) -> Mapping[str, Any]:
        session = await self.store.get(token)
        if session is None or session[1] <= time.time():
            raise AuthenticationError("invalid token")  # refused: 4401
        user_id, expires_at = session
        # "sub" becomes ws.data.user.id; a numeric "exp" closes the connection then (4401).
        return {"sub": user_id, "exp": expires_at}


sessions = SessionStore()
router = WebSocketRouter(auth=AuthOptions(verifier=SessionVerifier(sessions)))
support = router.ws("/ws/support", auth={"required": True})


@support.on("whoami")
async def whoami(ws: Connection) -> str:
    return str(ws.data.user.id)


app = FastAPI()
app.include_router(router)
