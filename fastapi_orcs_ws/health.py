"""Liveness and readiness endpoints for load balancers and orchestrators.

::

    app.include_router(health_router())   # GET /health/live, GET /health/ready

- **Liveness** answers 200 as long as the process's event loop runs requests: restarting the
  process cannot fix a broker outage, so liveness never looks at the backend.
- **Readiness** answers 200 when every manager of the app's event routes is started, is not
  draining, and its backend answers and is healthy (Redis reachable, subscription up);
  otherwise 503 with the reason, so a load balancer sends new clients elsewhere. A drain
  (``manager.drain()``, SIGTERM with ``WS_DRAIN_SECONDS``) turns readiness to 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from .manager import WebSocketManager
    from .routing import WebSocketRouter

__all__ = ["health_router", "readiness"]

logger = logging.getLogger("fastapi_orcs_ws")


async def readiness(manager: WebSocketManager, *, timeout: float = 2.0) -> dict[str, Any]:
    """The readiness of one manager: ``{"ready": bool, "started": bool, "draining": bool,
    "backend": str, "backend_healthy": bool | None, "problem": str | None}``.

    ``backend_healthy`` is None when the backend was not asked (the manager is stopped) or
    did not answer within ``timeout`` seconds.
    """
    report: dict[str, Any] = {
        "ready": False,
        "started": manager.started,
        "draining": manager.draining,
        "backend": manager.backend.name,
        "backend_healthy": None,
        "problem": None,
    }
    if not manager.started:
        report["problem"] = "the WebSocket manager is not started (app starting or stopped)"
        return report
    try:
        stats = await asyncio.wait_for(manager.backend.stats(), timeout)
    except Exception as exc:
        report["problem"] = (
            f"the {manager.backend.name} backend did not answer within {timeout:g} s "
            f"({type(exc).__name__})"
        )
        return report
    report["backend_healthy"] = stats.healthy
    if manager.draining:
        report["problem"] = "draining: this process hands its clients over to the others"
    elif not stats.healthy:
        detail = stats.details.get("last_error") or stats.details.get("listener") or ""
        report["problem"] = f"the {manager.backend.name} backend is unhealthy {detail}".strip()
    else:
        report["ready"] = True
    return report


def health_router(
    *targets: WebSocketManager | WebSocketRouter,
    live_path: str = "/health/live",
    ready_path: str = "/health/ready",
    timeout: float = 2.0,
) -> APIRouter:
    """An ``APIRouter`` with a liveness and a readiness endpoint (not in the OpenAPI schema).

    Args:
        *targets: the routers or managers to check; none: every manager of the app's event
            routes, found when a request comes.
        live_path: the liveness path; answers ``200 {"status": "ok"}``.
        ready_path: the readiness path; answers ``200 {"status": "ready", "managers": [...]}``
            or ``503 {"status": "unavailable", "managers": [...]}``, each entry as
            `readiness` gives it, plus the ``routes`` it serves.
        timeout: seconds a backend may take to answer the readiness check.

    Example:
        ```python
        app.include_router(health_router())
        # Kubernetes: readinessProbe httpGet /health/ready, livenessProbe httpGet /health/live
        ```
    """
    managers: Sequence[Any] = [getattr(target, "manager", target) for target in targets]
    router = APIRouter(include_in_schema=False)
    last_ready: dict[int, bool] = {}

    @router.get(live_path)
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(ready_path)
    async def ready(request: Request) -> JSONResponse:
        from .routing import managers_of

        found = managers_of(request.app)
        checked = list(managers) or list(found)
        reports = []
        for manager in checked:
            report = await readiness(manager, timeout=timeout)
            report["routes"] = found.get(manager, [])
            reports.append(report)
            if last_ready.get(id(manager), True) and not report["ready"]:
                logger.warning("readiness: not ready: %s", report["problem"])
            last_ready[id(manager)] = report["ready"]
        ok = bool(checked) and all(report["ready"] for report in reports)
        body = {"status": "ready" if ok else "unavailable", "managers": reports}
        if not checked:
            body["problem"] = "this app has no WebSocket event routes to serve"
        return JSONResponse(body, status_code=200 if ok else 503)

    return router
