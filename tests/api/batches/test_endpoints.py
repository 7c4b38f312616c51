"""The Batch API's checks and bookkeeping, with no worker running (the
answering side is tests/worker/inference/test_chat_and_batch_e2e.py)."""

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


# ------------------------------------------- what batches share with the other creators

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def creators(client, chat_file_id: str, batch_file_id: str) -> dict:
    """Each request that takes a file and metadata, as a function of overrides."""
    return {
        "job": lambda **o: client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": chat_file_id, **o}),
        "preview": lambda **o: client.post(
            "/v1/fine_tuning/jobs/preview", json={"model": BASE, "training_file": chat_file_id, **o}
        ),
        "evaluation": lambda **o: client.post("/v1/evaluations", json={"models": [BASE], "file_id": chat_file_id, **o}),
        "batch": lambda **o: create(client, batch_file_id, **o),
    }


def test_metadata_limits_are_one_rule_with_one_message(alice):
    requests = creators(alice, upload(alice, chat_jsonl(20)).json()["id"], batch_file(alice))
    for metadata in ({"k" * 65: "v"}, {"k": "v" * 513}, {str(i): "v" for i in range(17)}, {"k": 3},
                     {"k": "a\x00b"}, {"k\x00": "v"}):
        errors = {}
        for name, send in requests.items():
            response = send(metadata=metadata)
            assert response.status_code == 400, (name, response.text)
            errors[name] = response.json()["error"]
        assert len({(e["message"], e["param"], e["code"]) for e in errors.values()}) == 1, errors
        assert errors["job"]["param"] == "metadata" and errors["job"]["message"].startswith(
            "Metadata is at most 16 pairs of strings, keys of at most 64 characters and values of at most 512"
        )
    # PostgreSQL's JSON would keep it, escaped, and fail every later query
    # that reads metadata (the moves list) with a 500.
    assert errors["job"]["message"].endswith("without the NUL character (U+0000); the key 'k\\0' has one.")
    assert alice.get("/v1/moves").status_code == 200
    limit = {"k" * 64: "v" * 512, **{str(i): "v" for i in range(15)}}
    for name, send in requests.items():
        assert send(metadata=limit).status_code == 200, name


def test_files_are_checked_the_same_way_for_every_purpose(service, alice, alice_user, bob):
    chat_file_id, batch_file_id = upload(alice, chat_jsonl(20)).json()["id"], batch_file(alice)
    # Each keeps the status it always gave for a file that is not the caller's.
    missing = {"job": 400, "preview": 400, "evaluation": 404, "batch": 404}
    params = {"job": "training_file", "preview": "training_file", "evaluation": "file_id", "batch": "input_file_id"}
    for name, send in creators(bob, chat_file_id, batch_file_id).items():
        response = send()
        assert response.status_code == missing[name], (name, response.text)
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (params[name], "file_not_found"), name
    # Each file as the other's input: the wrong purpose, named.
    for name, send in creators(alice, batch_file_id, chat_file_id).items():
        response = send()
        assert response.status_code == 400, (name, response.text)
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (params[name], "invalid_file_purpose"), name
        assert f"{params[name]} must be a file uploaded with purpose" in error["message"]
    # A file whose content is gone from storage is refused before anything is made.
    from domain.files.models import File

    with service.state.sessionmaker() as session:
        for file_id in (chat_file_id, batch_file_id):
            service.state.storage.delete(session.get(File, file_id).storage_key)
    for name, send in creators(alice, chat_file_id, batch_file_id).items():
        response = send()
        assert response.status_code == 409, (name, response.text)
        assert response.json()["error"]["code"] == "file_missing", name
    assert alice.get("/v1/batches").json()["data"] == []


def test_batch_records_have_the_chat_shapes():
    from collections import namedtuple

    from domain.inference.schemas import ChatCompletion, ChatCompletionRequest
    from domain.inference.service import completion
    from worker.inference.batch import PendingLine, error_record, success_record

    Result = namedtuple("Result", "text finish_reason token_ids")
    request = ChatCompletionRequest.model_validate({"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "n": 2})
    line = PendingLine(1, "req-1", request, target=None, prompt_ids=[1, 2, 3])
    record = success_record(line, [Result("Hello", "stop", [5, 6]), Result("Hey", "length", [7])], created=123)
    assert record["custom_id"] == "req-1" and record["id"].startswith("batch_req_") and record["error"] is None
    assert record["response"]["status_code"] == 200
    body = record["response"]["body"]
    assert ChatCompletion.model_validate(body).model_dump(mode="json") == body
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert [c["message"]["content"] for c in body["choices"]] == ["Hello", "Hey"]
    # The chat endpoint's body for the same answer has the same keys at every level.
    chat = completion(
        {"id": "chatcmpl-x", "created": 123, "target": {"model": BASE}},
        {"choices": [{"index": 0, "text": "Hello", "finish_reason": "stop"}], "usage": body["usage"]},
    ).model_dump(mode="json")
    assert set(chat) == set(body) and set(chat["choices"][0]) == set(body["choices"][0])
    assert chat["choices"][0]["message"] == body["choices"][0]["message"]

    error = error_record("req-2", 404, "No.", param="model", code="model_not_found")["response"]
    assert error["status_code"] == 404
    assert error["body"] == {
        "error": {"message": "No.", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    }
