"""``python -m examples.chat_app``: serve the chat at http://127.0.0.1:42069."""

import os

from fastapi_orcs_ws import run

run(
    "examples.chat_app.main:app",
    host=os.environ.get("HOST", "127.0.0.1"),
    port=int(os.environ.get("PORT", "42069")),
)
