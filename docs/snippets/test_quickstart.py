"""Tests for the quickstart chat, in-process: `pytest test_quickstart.py`."""

import pytest

from docs.snippets.quickstart import app  # the app built above: use your module's path
from fastapi_orcs_ws import ErrorCode, EventError
from fastapi_orcs_ws.testing import EventClient


def test_a_message_reaches_the_room() -> None:
    with EventClient(app) as client, client.connect("/ws/chat") as alice:
        assert alice.expect("welcome") == {"clientId": alice.client_id}
        with client.connect("/ws/chat") as bob:
            bob.expect("welcome")
            alice.send("message", {"text": "Hello!"})
            assert bob.expect("message") == {"from": alice.client_id, "text": "Hello!"}
            assert alice.expect("message") == {"from": alice.client_id, "text": "Hello!"}


def test_a_message_without_text_is_refused() -> None:
    with EventClient(app) as client, client.connect("/ws/chat") as alice:
        alice.expect("welcome")
        with pytest.raises(EventError) as refused:
            alice.request("message", {"room": "general"})  # `text` is required
        assert refused.value.code == ErrorCode.VALIDATION_ERROR
        assert alice.request("message", {"text": "still here"}) is None  # the socket lives on
