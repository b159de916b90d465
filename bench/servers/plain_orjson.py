"""The plain loop of ``plain.py``, decoding with ``orjson.loads`` and encoding with
``orjson.dumps``: the baseline for the inbound path (issue 9: echo against a plain loop that
decodes with orjson).

    uvicorn bench.servers.plain_orjson:app --ws websockets-sansio --ws-per-message-deflate false
"""

from __future__ import annotations

from typing import Any

import orjson

from .plain import make_app


def _dumps(value: Any) -> str:
    # send_text takes str; orjson gives bytes (valid UTF-8 by construction)
    return orjson.dumps(value).decode()


app = make_app(orjson.loads, _dumps)
