"""Testing an app in-process: two clients in a room, and an acknowledged request."""

from docs.snippets.rooms import app  # your application
from fastapi_orcs_ws.testing import EventClient


def test_two_clients_in_a_room() -> None:
    with (
        EventClient(app) as client,
        client.connect("/ws/rooms") as alice,
        client.connect("/ws/rooms") as bob,
    ):
        alice.request("join", {"room": "blue"})
        bob.request("join", {"room": "blue"})
        assert alice.expect("user-joined") == {"clientId": bob.client_id}
        client.http.post("/rooms/blue/announce", params={"text": "hello"})
        client.assert_room_received("blue", "announcement", {"text": "hello"})


def test_ack_round_trip() -> None:
    with EventClient(app) as client, client.connect("/ws/rooms") as ws:
        assert ws.request("join", {"room": "red"}) is None  # the handler returns None
        assert ws.client_id in client.room_members("red")
