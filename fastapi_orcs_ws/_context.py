"""The keys this library stores in an ASGI scope, in one place.

The session puts the serving connection, its manager and its authenticator into the
WebSocket's scope, so dependencies (``get_manager``, ``current_user``) find the router that
is serving without any app-wide, last-wins state.
"""

from __future__ import annotations

__all__ = [
    "SCOPE_AUTHENTICATOR",
    "SCOPE_CONNECTION",
    "SCOPE_MANAGER",
    "SCOPE_ROUTE",
]

SCOPE_CONNECTION = "fastapi_orcs_ws.connection"
"""The [`Connection`][fastapi_orcs_ws.Connection] being served."""
SCOPE_MANAGER = "fastapi_orcs_ws.manager"
"""The manager of the router serving this WebSocket."""
SCOPE_AUTHENTICATOR = "fastapi_orcs_ws.authenticator"
"""The authenticator of the route serving this WebSocket."""
SCOPE_ROUTE = "fastapi_orcs_ws.route"
"""The [`EventRoute`][fastapi_orcs_ws.EventRoute] serving this WebSocket."""
