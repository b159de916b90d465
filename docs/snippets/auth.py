"""A route that requires a token, tested with a minted one."""

from fastapi import FastAPI

from fastapi_orcs_ws import Connection, WebSocketRouter, WebSocketSettings

settings = WebSocketSettings(jwt_secret="change-me-to-a-long-random-secret")
router = WebSocketRouter(settings=settings)
private = router.ws("/ws/private", auth={"required": True})


@private.on("whoami")
async def whoami(ws: Connection) -> str:
    return str(ws.data.user.id)


app = FastAPI()
app.include_router(router)
