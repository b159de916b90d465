"""Serve the target with ``fastapi_orcs_ws.run()``, the documented way, plus overrides.

    python -m bench.attacks.serve PORT '{"http": "h11", "h11_max_incomplete_event_size": 8192}'

The overrides are uvicorn keyword arguments; they win over what ``run()`` chooses, exactly
as a user's ``run(app, **kwargs)`` would.
"""

from __future__ import annotations

import json
import sys

from fastapi_orcs_ws import run

from .target import app

if __name__ == "__main__":
    port = int(sys.argv[1])
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **overrides)
