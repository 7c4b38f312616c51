"""The Batch API's checks and bookkeeping, with no worker running (the
answering side is tests/worker/test_inference_e2e.py)."""

import pytest

from tests.api.files.test_endpoints import upload
from tests.chat_data import batch_jsonl, chat_jsonl


def batch_file(client, n: int = 3) -> str:
    response = upload(client, batch_jsonl(n), purpose="batch", filename="batch.jsonl")
    assert response.status_code == 200, response.text
    return response.json()["id"]


def create(client, file_id: str, **overrides):
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **overrides}
    return client.post("/v1/batches", json=body)


def test_a_batch_is_created_in_openai_shape(alice):
    file_id = batch_file(alice, 3)
    response = create(alice, file_id, metadata={"project": "x"})
    assert response.status_code == 200, response.text
    batch = response.json()
    assert batch["object"] == "batch" and batch["id"].startswith("batch_")
    assert batch["status"] == "validating"
    assert batch["input_file_id"] == file_id
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    assert batch["metadata"] == {"project": "x"}
    assert alice.get(f"/v1/batches/{batch['id']}").json() == batch


@pytest.mark.parametrize(
    ("overrides", "param", "status"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint", 400),
        ({"completion_window": "1h"}, "completion_window", 400),
        ({"input_file_id": "file-000000000000000000000000"}, "input_file_id", 404),
        ({"metadata": {"k": "v" * 600}}, "metadata", 400),
        ({"colour": "blue"}, "colour", 400),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_made(alice, overrides, param, status):
    file_id = batch_file(alice)
    response = create(alice, file_id, **overrides)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert alice.get("/v1/batches").json()["data"] == []


def test_a_fine_tune_file_is_not_a_batch_input(alice):
    file_id = upload(alice, chat_jsonl()).json()["id"]
    response = create(alice, file_id)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_file_purpose"


def test_batches_are_private(alice, bob):
    batch = create(alice, batch_file(alice)).json()
    assert bob.get(f"/v1/batches/{batch['id']}").status_code == 404
    assert bob.post(f"/v1/batches/{batch['id']}/cancel").status_code == 404
    assert bob.get("/v1/batches").json()["data"] == []
    # Nor can bob start a batch on alice's file.
    assert create(bob, batch["input_file_id"]).status_code == 404


def test_the_list_pages_newest_first(alice):
    file_id = batch_file(alice)
    ids = [create(alice, file_id).json()["id"] for _ in range(3)]
    first = alice.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = alice.get("/v1/batches", params={"limit": 2, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[:1] and not rest["has_more"]
    assert alice.get("/v1/batches", params={"after": "nope"}).status_code == 400


def test_a_batch_no_worker_started_is_cancelled_at_once(alice):
    batch = create(alice, batch_file(alice)).json()
    cancelled = alice.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_at"] is not None
    again = alice.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 409
