"""The generated AsyncAPI 3.0 document of an app's event routes, and an offline docs page.

FastAPI's OpenAPI document leaves WebSockets out.
[`asyncapi_document`][fastapi_orcs_ws.asyncapi.asyncapi_document] describes every event route
instead: a server (host, ``ws``/``wss``, the ASGI ``root_path``), one channel per route (its address
is the full path: router prefixes and ``Mount`` paths included), one message per event with the
schema of its payload type, ``receive`` operations for what clients send, ``send`` operations for
what the server emits, acknowledgements as operation replies, and the route's authentication.

The docs are served once per app, for every router in it: ``/asyncapi.json`` (the
document) and ``/ws-docs`` (a self-contained HTML page that needs no network). When an app
with event routes starts, they are mounted at those paths unless
[`mount_docs`][fastapi_orcs_ws.asyncapi.mount_docs] was called for the app, which is the one place
to move them or turn them off. They come after every route of the app, so the app's own routes
always win.

Modules: ``document`` builds the document, ``schemas`` turns Pydantic's JSON Schemas into
AsyncAPI Schema Objects, ``examples`` writes example payloads, ``site`` serves the docs.

Example:
    ```python
    app = FastAPI()
    app.include_router(router)
    mount_docs(app, docs_url="/internal/ws-docs", asyncapi_url=None)  # or leave the defaults
    ```
"""

from .document import asyncapi_document
from .site import add_openapi_link, mount_docs, render_page

__all__ = ["add_openapi_link", "asyncapi_document", "mount_docs", "render_page"]
