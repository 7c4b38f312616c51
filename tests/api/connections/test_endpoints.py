"""Connections over the API, on both backends, against real HTTP on loopback:
the service itself is the OpenAI-compatible endpoint (its /v1/models needs no
worker), a closed port is an endpoint that is down, a tiny server redirects to
the metadata address. The key is in no response; another user sees nothing."""

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from domain.connections.client import INTERACTIVE_CALLS
from tests.conftest import free_port, wait_for
from tests.peer import redirecting_server

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
METADATA = "http://169.254.169.254/latest/meta-data/"


def register(client, name: str, base_url: str, api_key: str, **extra):
    return client.post("/v1/connections", json={"name": name, "base_url": base_url, "api_key": api_key, **extra})


def test_register_list_get_test_and_delete(service, alice, alice_user, bob_user):
    # Alice registers the service itself, with Bob's key (any valid key will do).
    key = bob_user.key
    created = register(alice, "self", f"{service.base_url}/v1/", key)
    assert created.status_code == 200, created.text
    connection = created.json()
    assert connection["object"] == "connection" and connection["id"].startswith("conn_")
    assert connection["base_url"] == f"{service.base_url}/v1" and connection["models"] is None
    assert register(alice, "self", f"{service.base_url}/v1", key).json()["error"]["code"] == "connection_exists"

    listed = alice.get("/v1/connections").json()
    assert [c["name"] for c in listed["data"]] == ["self"] and listed["object"] == "list"
    assert alice.get("/v1/connections/self").json() == connection

    tested = alice.post("/v1/connections/self/test").json()
    assert tested["object"] == "connection.test" and tested["ok"] is True and tested["error"] is None
    assert BASE in tested["models"] and tested["latency_ms"] >= 0

    models = alice.get("/v1/connections/self/models").json()
    assert {"id": f"conn:self/{BASE}", "object": "model", "owned_by": "self"}.items() <= models["data"][0].items()

    responses = [created, alice.get("/v1/connections"), alice.get("/v1/connections/self"),
                 alice.post("/v1/connections/self/test"), alice.get("/v1/connections/self/models")]
    assert all(key not in response.text and key[-6:] not in response.text for response in responses)

    deleted = alice.delete("/v1/connections/self").json()
    assert deleted == {"id": connection["id"], "object": "connection.deleted", "deleted": True}
    assert alice.get("/v1/connections/self").status_code == 404


def test_another_user_never_sees_a_connection(service, alice, bob, alice_user):
    assert register(alice, "mine", f"{service.base_url}/v1", alice_user.key).status_code == 200
    assert bob.get("/v1/connections").json()["data"] == []
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/test"), ("GET", "/models")):
        response = bob.request(method, f"/v1/connections/mine{path}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "connection_not_found"
    chat = bob.post("/v1/chat/completions", json={"model": f"conn:mine/{BASE}", "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"
    # Bob may use the same name for his own.
    assert register(bob, "mine", f"{service.base_url}/v1", "k").status_code == 200
    assert alice.get("/v1/connections/mine").status_code == 200


@pytest.mark.parametrize("body, param, code", [
    ({"name": "Has Caps", "base_url": "http://127.0.0.1:1/v1", "api_key": "k"}, "name", None),
    ({"name": "x", "base_url": "ftp://127.0.0.1/v1", "api_key": "k"}, "base_url", "invalid_base_url"),
    ({"name": "x", "base_url": "http://user:pw@127.0.0.1/v1", "api_key": "k"}, "base_url", "invalid_base_url"),
    ({"name": "x", "base_url": "http://127.0.0.1/v1?a=1", "api_key": "k"}, "base_url", "invalid_base_url"),
    ({"name": "x", "base_url": "http://127.0.0.1:99999/v1", "api_key": "k"}, "base_url", "invalid_base_url"),
    ({"name": "x", "base_url": "http://127.0.0.1/v1"}, "api_key", None),
    ({"name": "x", "base_url": "http://127.0.0.1/v1", "api_key": "k", "models": ["a b"]}, "models", "invalid_models"),
    ({"name": "x", "base_url": "http://127.0.0.1/v1", "api_key": "k", "secret": 1}, "secret", None),
    ({"name": "x", "base_url": "http://no-such-host.invalid/v1", "api_key": "k"}, "base_url", "invalid_base_url"),
])
def test_bad_input_is_a_400_that_changes_nothing(alice, body, param, code):
    response = alice.post("/v1/connections", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and (code is None or error["code"] == code)
    assert alice.get("/v1/connections").json()["data"] == []


@pytest.mark.parametrize("base_url", [
    "http://169.254.169.254/latest", "http://[fe80::1]/v1", "http://metadata.google.internal/computeMetadata/v1",
    "http://[::ffff:169.254.169.254]/v1", "http://100.100.100.200/v1", "http://[fd00:ec2::254]/v1",
    "http://169.254.1.1:8080/v1", "http://0.0.0.0:8000/v1",
])
def test_link_local_and_metadata_addresses_are_refused_at_registration(alice, base_url):
    response = register(alice, "meta", base_url, "k")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "refused_address"
    assert alice.get("/v1/connections").json()["data"] == []


def test_a_redirect_to_the_metadata_address_is_not_followed(alice):
    with redirecting_server(METADATA) as url:
        assert register(alice, "redirects", url, "k").status_code == 200
        tested = alice.post("/v1/connections/redirects/test").json()
    assert tested["ok"] is False and tested["error"]["code"] == "refused_address"
    assert "169.254.169.254" in tested["error"]["message"]


def test_an_endpoint_that_is_down(alice):
    key = "sk-down-0123456789abcdef"
    assert register(alice, "down", f"http://127.0.0.1:{free_port()}/v1", key, models=["m1", "m2"]).status_code == 200
    tested = alice.post("/v1/connections/down/test").json()
    assert tested["ok"] is False and tested["error"]["code"] == "connection_error" and key not in str(tested)
    # The models: the allow-list itself when the endpoint cannot list them.
    models = alice.get("/v1/connections/down/models").json()
    assert [m["id"] for m in models["data"]] == ["conn:down/m1", "conn:down/m2"]


def test_the_allow_list_filters_the_endpoints_models(service, alice, alice_user):
    assert register(alice, "some", f"{service.base_url}/v1", alice_user.key, models=[BASE, "absent"]).status_code == 200
    assert [m["id"] for m in alice.get("/v1/connections/some/models").json()["data"]] == [f"conn:some/{BASE}"]
    # Outside the allow-list a model does not exist for the caller.
    chat = alice.post("/v1/chat/completions", json={"model": "conn:some/other", "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"


def test_a_wrong_key_is_reported_without_echoing_it(service, alice):
    key = "sk-wrong-key-0123456789abcdef"
    assert register(alice, "wrong", f"{service.base_url}/v1", key).status_code == 200
    tested = alice.post("/v1/connections/wrong/test")
    assert tested.json()["ok"] is False and tested.json()["error"]["code"] == "upstream_error"
    assert "401" in tested.json()["error"]["message"] and key not in tested.text
    with httpx.Client(base_url=service.base_url, headers=alice.headers) as client:  # a 502 is the answer here
        models = client.get("/v1/connections/wrong/models")
    assert models.status_code == 502 and models.json()["error"]["code"] == "upstream_error" and key not in models.text


def test_the_list_pages(service, alice):
    names = ["p1", "p2", "p3"]
    for name in names:
        assert register(alice, name, f"http://127.0.0.1:{free_port()}/v1", "k").status_code == 200
    first = alice.get("/v1/connections", params={"limit": 2}).json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    rest = alice.get("/v1/connections", params={"limit": 2, "after": first["last_id"]}).json()
    assert len(rest["data"]) == 1 and rest["has_more"] is False
    assert sorted(c["name"] for c in first["data"] + rest["data"]) == names
    assert alice.get("/v1/connections", params={"after": "p1"}).json()["error"]["code"] == "invalid_cursor"


@contextmanager
def silent_endpoint() -> Iterator[tuple[str, list[socket.socket]]]:
    """An endpoint that accepts connections and never answers: (base URL, the
    connections it holds). Closing them ends the calls waiting on it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", held
    finally:
        listener.close()
        for connection in held:
            connection.close()


def test_a_stalled_endpoint_cannot_take_the_apis_threads(service, alice, alice_user, bob):
    """Each test action holds an API thread while the endpoint answers: beyond
    INTERACTIVE_CALLS at once they are answered `busy` at once, and other users'
    requests go on being served."""
    with silent_endpoint() as (base_url, held):
        assert register(alice, "stalled", base_url, "sk-stalled-0123456789").status_code == 200
        with ThreadPoolExecutor(INTERACTIVE_CALLS) as pool:
            stalled = [pool.submit(alice.post, "/v1/connections/stalled/test") for _ in range(INTERACTIVE_CALLS)]
            wait_for(lambda: len(held) >= INTERACTIVE_CALLS, 30, "the test actions to reach the endpoint")
            # A client of its own: the fixtures' fail on any 5xx, and this 503 is the answer sought.
            with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {alice_user.key}"},
                              timeout=5) as other:
                busy = [other.post("/v1/connections/stalled/test").json() for _ in range(10)]
                models = other.get("/v1/connections/stalled/models")
            assert {(answer["ok"], answer["error"]["code"]) for answer in busy} == {(False, "busy")}
            assert models.status_code == 503 and models.json()["error"]["code"] == "busy"
            assert models.headers["retry-after"] == "2"
            assert bob.get("/v1/files").status_code == 200
            assert not any(future.done() for future in stalled)  # all of this while the four still wait
            for connection in held:
                connection.close()
            ended = [future.result().json() for future in stalled]
    assert all(answer["ok"] is False and answer["error"]["code"] == "connection_error" for answer in ended), ended
