"""Bearer keys on every /v1 route; other users' objects are invisible."""

import pytest

from domain.auth.service import KEY_PREFIX, authenticate, create_key, get_or_create_user, hash_key
from tests.api.files.test_endpoints import upload
from tests.chat_data import chat_jsonl

def v1_routes(app) -> list[tuple[str, str]]:
    """Every /v1 operation in the app's OpenAPI schema, path parameters filled with a dummy id."""
    import re

    routes = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            filled = re.sub(r"\{[^}]+\}", "x-0000", path)
            routes += [(method.upper(), filled) for method in operations]
    return routes


@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer th-wrong", "Basic dXNlcjpwYXNz", "th-raw-key-without-scheme"]
)
def test_every_v1_route_needs_a_valid_key(service, anonymous, authorization):
    routes = v1_routes(service.app)
    assert ("POST", "/v1/files") in routes and len(routes) >= 6
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in routes:
        response = anonymous.request(method, path, headers=headers)
        if (method, path) == ("GET", "/v1/downloads/x-0000"):
            # A signed download link is its own credential (api/links.py): no key, and a made-up one opens nothing.
            assert (response.status_code, response.json()["error"]["code"]) == (403, "invalid_link")
            continue
        assert response.status_code == 401, (method, path)
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert error["code"] in ("missing_api_key", "invalid_api_key")
        assert set(error) >= {"message", "type", "param", "code"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_another_users_file_is_404_everywhere(alice, bob):
    file_id = upload(alice, chat_jsonl(10)).json()["id"]
    for method, suffix in [("GET", ""), ("GET", "/content"), ("GET", "/report"), ("DELETE", "")]:
        response = bob.request(method, f"/v1/files/{file_id}{suffix}")
        assert response.status_code == 404, (method, suffix)
        assert response.json()["error"]["code"] == "file_not_found"
    assert bob.get("/v1/files").json()["data"] == []
    # A cursor pointing at Alice's file reveals nothing either.
    assert bob.get("/v1/files", params={"after": file_id}).json()["data"] == []
    assert alice.get(f"/v1/files/{file_id}").status_code == 200


def test_keys_are_stored_hashed(service):
    with service.state.sessionmaker() as session:
        user = get_or_create_user(session, "hash-check")
        key = create_key(session, user)
        session.commit()
        assert key.startswith(KEY_PREFIX) and len(key) > 40
        from domain.auth.models import ApiKey

        stored = [row.key_hash for row in session.query(ApiKey).filter_by(user_id=user.id)]
        assert stored == [hash_key(key)]
        assert key not in stored
        assert authenticate(session, key).id == user.id
        assert authenticate(session, key + "x") is None
        assert authenticate(session, "not-a-key") is None


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "../admin", "-lead"])
def test_invalid_user_names_are_refused(service, name):
    with service.state.sessionmaker() as session, pytest.raises(ValueError):
        get_or_create_user(session, name)


def test_healthz_needs_no_key(anonymous):
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_route_is_404_in_openai_shape(alice):
    response = alice.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Unknown request URL: GET /v1/nothing-here."
