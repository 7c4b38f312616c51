"""The Files API over real HTTP, on SQLite + local disk and PostgreSQL + S3."""

import hashlib
import json
import socket

import pytest

from tests.chat_data import batch_jsonl, chat_example, chat_jsonl
from tests.conftest import TEST_UPLOAD_LIMIT, wait_for


def upload(client, content: bytes, *, purpose: str | None = "fine-tune", filename: str = "train.jsonl"):
    data = {"purpose": purpose} if purpose is not None else {}
    return client.post("/v1/files", data=data, files={"file": (filename, content, "application/jsonl")})


def stored_keys(service, user_id: int) -> list[str]:
    return service.state.storage.list_keys(f"files/{user_id}")


def multipart_body(fields: list[tuple[str, str | None, bytes]], boundary: str = "tunehouse-test-boundary") -> bytes:
    """A multipart body built by hand, to control part order and chunking."""
    out = b""
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = "multipart/form-data; boundary=tunehouse-test-boundary"


# ------------------------------------------------------------------ happy paths


def test_upload_returns_an_openai_file_object_with_report(service, alice, alice_user):
    content = chat_jsonl(12)
    response = upload(alice, content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(content)
    assert body["filename"] == "train.jsonl"
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert isinstance(body["created_at"], int)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    report = body["report"]
    assert report["examples"] == 12
    assert report["split"]["train"] + report["split"]["test"] == 12
    assert report["split"]["test"] >= 1
    assert stored_keys(service, alice_user.id) == [f"files/{alice_user.id}/{body['id']}"]


def test_retrieve_content_and_report(alice):
    content = "\r\n".join(json.dumps(chat_example(i)) for i in range(10)).encode() + b"\r\n"
    file_id = upload(alice, content).json()["id"]

    retrieved = alice.get(f"/v1/files/{file_id}")
    assert retrieved.status_code == 200
    assert retrieved.json()["id"] == file_id

    downloaded = alice.get(f"/v1/files/{file_id}/content")
    assert downloaded.status_code == 200
    assert downloaded.content == content
    assert "attachment" in downloaded.headers["content-disposition"]

    report = alice.get(f"/v1/files/{file_id}/report")
    assert report.status_code == 200
    assert report.json()["object"] == "file.report"
    assert report.json()["report"]["examples"] == 10


def test_unicode_weights_and_explicit_splits_are_accepted(alice):
    examples = [chat_example(i, split="TRAIN") for i in range(9)]
    examples.append(
        {
            "messages": [
                {"role": "user", "content": "Übersetze: 猫 🐈"},
                {"role": "assistant", "content": "draft", "weight": 0},
                {"role": "user", "content": "Noch einmal"},
                {"role": "assistant", "content": "Katze 🐈", "weight": 1},
            ],
            "split": "TEST",
        }
    )
    content = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode()
    response = upload(alice, content)
    assert response.status_code == 200, response.text
    split = response.json()["report"]["split"]
    assert (split["train"], split["test"], split["method"]) == (9, 1, "explicit")
    assert alice.get(f"/v1/files/{response.json()['id']}/content").content == content


def test_batch_file_upload(alice):
    response = upload(alice, batch_jsonl(3), purpose="batch", filename="requests.jsonl")
    assert response.status_code == 200, response.text
    assert response.json()["purpose"] == "batch"
    assert response.json()["report"]["requests"] == 3


def test_file_part_before_purpose_is_validated_by_the_later_purpose(alice):
    body = multipart_body([("file", "train.jsonl", chat_jsonl(10)), ("purpose", None, b"fine-tune")])
    response = alice.post("/v1/files", content=body, headers={"Content-Type": MULTIPART})
    assert response.status_code == 200, response.text
    assert response.json()["report"]["examples"] == 10

    bad = multipart_body([("file", "train.jsonl", batch_jsonl(3)), ("purpose", None, b"fine-tune")])
    response = alice.post("/v1/files", content=bad, headers={"Content-Type": MULTIPART})
    assert response.status_code == 400
    assert "line 1:" in response.json()["error"]["message"]


def test_chunked_upload_without_content_length(alice):
    body = multipart_body([("purpose", None, b"fine-tune"), ("file", "train.jsonl", chat_jsonl(50))])
    chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
    response = alice.post("/v1/files", content=chunks, headers={"Content-Type": MULTIPART})
    assert response.status_code == 200, response.text
    assert response.json()["report"]["examples"] == 50


# ------------------------------------------------------------------- listing


def test_list_paginates_with_cursor_and_filters_by_purpose(alice):
    ids = [upload(alice, chat_jsonl(10)).json()["id"] for _ in range(3)]
    batch_id = upload(alice, batch_jsonl(2), purpose="batch").json()["id"]
    newest_first = [batch_id, *reversed(ids)]

    page = alice.get("/v1/files", params={"limit": 2}).json()
    assert page["object"] == "list"
    assert [f["id"] for f in page["data"]] == newest_first[:2]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (newest_first[0], newest_first[1])

    rest = alice.get("/v1/files", params={"limit": 2, "after": page["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == newest_first[2:]
    assert rest["has_more"] is False

    oldest_first = alice.get("/v1/files", params={"order": "asc"}).json()
    assert [f["id"] for f in oldest_first["data"]] == list(reversed(newest_first))

    fine_tune = alice.get("/v1/files", params={"purpose": "fine-tune"}).json()
    assert {f["id"] for f in fine_tune["data"]} == set(ids)


def test_empty_list(alice):
    page = alice.get("/v1/files").json()
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(
    ("params", "param"),
    [({"limit": 0}, "limit"), ({"limit": 10001}, "limit"), ({"limit": "x"}, "limit"),
     ({"after": "../etc"}, "after"), ({"order": "sideways"}, "order")],
)
def test_bad_list_parameters_are_400_naming_the_parameter(alice, params, param):
    response = alice.get("/v1/files", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# ------------------------------------------------------------------ deletion


def test_delete_removes_row_and_object(service, alice, alice_user):
    file_id = upload(alice, chat_jsonl(10)).json()["id"]
    response = alice.delete(f"/v1/files/{file_id}")
    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert alice.get(f"/v1/files/{file_id}").status_code == 404
    assert alice.delete(f"/v1/files/{file_id}").status_code == 404
    assert stored_keys(service, alice_user.id) == []


# -------------------------------------------------------------- bad uploads


def test_invalid_file_is_refused_with_line_numbers_and_nothing_is_kept(service, alice, alice_user):
    lines = [json.dumps(chat_example(i)) for i in range(12)]
    lines[1] = "{not json"
    lines[6] = json.dumps({"messages": [{"role": "bot", "content": "hi"}]})
    response = upload(alice, ("\n".join(lines) + "\n").encode())
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"
    assert error["code"] == "invalid_file"
    assert "line 2:" in error["message"] and "line 7:" in error["message"]
    assert [e["line"] for e in error["details"]["errors"]] == [2, 7]
    assert alice.get("/v1/files").json()["data"] == []
    assert stored_keys(service, alice_user.id) == []


def test_too_few_examples_is_refused(alice):
    response = upload(alice, chat_jsonl(3))
    assert response.status_code == 400
    assert "at least 10" in response.json()["error"]["message"]


def test_empty_file_is_refused(alice):
    response = upload(alice, b"")
    assert response.status_code == 400
    assert "empty" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("data", "param", "fragment"),
    [({}, "purpose", "purpose"), ({"purpose": "assistants"}, "purpose", "fine-tune")],
)
def test_missing_or_unsupported_purpose(alice, data, param, fragment):
    response = alice.post("/v1/files", data=data, files={"file": ("t.jsonl", chat_jsonl(10))})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert fragment in response.json()["error"]["message"]


def test_missing_file_part(alice):
    response = alice.post("/v1/files", data={"purpose": "fine-tune"}, files={"other": ("x", b"1")})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_not_multipart(alice):
    response = alice.post("/v1/files", json={"purpose": "fine-tune"})
    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["error"]["message"]


def test_malformed_multipart(alice):
    response = alice.post("/v1/files", content=b"--nope\r\ngarbage", headers={"Content-Type": MULTIPART})
    assert response.status_code == 400


def oversized_content() -> bytes:
    line = json.dumps(chat_example(1)).encode() + b"\n"
    return line * (TEST_UPLOAD_LIMIT // len(line) + 2)


def test_upload_over_the_limit_is_413_and_nothing_is_kept(service, alice, alice_user):
    response = upload(alice, oversized_content())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert stored_keys(service, alice_user.id) == []
    assert alice.get("/v1/files").json()["data"] == []


def test_chunked_upload_over_the_limit_is_413(service, alice, alice_user):
    body = multipart_body([("purpose", None, b"fine-tune"), ("file", "big.jsonl", oversized_content())])
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    response = alice.post("/v1/files", content=chunks, headers={"Content-Type": MULTIPART})
    assert response.status_code == 413
    assert stored_keys(service, alice_user.id) == []


def test_path_like_file_names_are_only_metadata(service, alice, alice_user):
    for client_name, shown in [("../../../etc/passwd", "passwd"), ("..\\..\\boot.ini", "boot.ini"), ("/abs/x.jsonl", "x.jsonl"), ("..", "..")]:
        response = upload(alice, chat_jsonl(10), filename=client_name)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["filename"] == shown
        assert stored_keys(service, alice_user.id)[-1] == f"files/{alice_user.id}/{body['id']}"
    if service.name == "sqlite-local":
        data_dir = service.settings.data_dir
        assert not (data_dir.parent / "etc").exists()
        assert not list(data_dir.parent.glob("boot.ini"))


# Watches the local temporary file; the S3 writer's abort is covered in tests/api/test_storage.py.
@pytest.mark.parametrize("service", ["sqlite-local"], indirect=True)
def test_interrupted_upload_leaves_nothing_behind(service, alice_user):
    line = json.dumps(chat_example(1)).encode() + b"\n"
    body = multipart_body([("purpose", None, b"fine-tune"), ("file", "t.jsonl", line * 10_000)])
    user_dir = service.state.storage.local_path(f"files/{alice_user.id}/x").parent

    def partial_temp_files():
        return [p for p in user_dir.glob(".tmp-*") if p.stat().st_size > 0] if user_dir.exists() else []

    port = int(service.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: test\r\n"
            + f"Authorization: Bearer {alice_user.key}\r\nContent-Type: {MULTIPART}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) * 3 // 4]
        )
        # The server has streamed part of the file to storage...
        wait_for(partial_temp_files, 10, "the partial upload to reach storage")
    # ...and the connection is gone before the body completes: nothing may stay.
    wait_for(lambda: not list(user_dir.glob("*")), 10, "the partial upload to be removed")
    assert stored_keys(service, alice_user.id) == []
