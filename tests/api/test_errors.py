"""Errors: documented in the OpenAPI schema in OpenAI's shape, 405s that name
every method a URL takes, NUL characters refused instead of crashing PostgreSQL."""

import pytest

from api.errors import ErrorResponse


def v1_operations(schema: dict):
    for path, operations in schema["paths"].items():
        if path.startswith("/v1"):
            for method, operation in operations.items():
                yield method.upper(), path, operation


def test_every_operation_documents_its_errors_in_openai_shape(anonymous):
    schema = anonymous.get("/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    operations = list(v1_operations(schema))
    assert len(operations) >= 30
    for method, path, operation in operations:
        responses = operation["responses"]
        # Validation errors are answered as 400s in the error shape, never FastAPI's 422;
        # a 422 documented is one of ours (the GGUF export of an architecture it cannot write).
        for status in ("400", "401", "429", "503") + (("422",) if "422" in responses else ()):
            assert responses[status]["content"]["application/json"]["schema"] == error_ref, (method, path, status)
        if "{" in path:
            assert "404" in responses, (method, path)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert set(schema["components"]["schemas"]["ErrorObject"]["required"]) == {"message", "type", "param", "code"}


def test_an_error_body_matches_the_documented_model(alice):
    response = alice.get("/v1/files/file-nothing")
    assert response.status_code == 404
    error = ErrorResponse.model_validate(response.json()).error
    assert error.code == "file_not_found" and error.param == "file_id"


def test_downloads_and_streams_declare_their_media_types(anonymous):
    paths = anonymous.get("/openapi.json").json()["paths"]

    def media_types(path: str, method: str = "get") -> set[str]:
        return set(paths[path][method]["responses"]["200"]["content"])

    assert media_types("/v1/files/{file_id}/content") == {"application/octet-stream"}
    assert media_types("/v1/fine_tuning/jobs/{job_id}/adapter") == {"application/octet-stream"}
    assert media_types("/v1/fine_tuning/jobs/{job_id}/merged") == {"application/octet-stream"}
    assert media_types("/v1/evaluations/{evaluation_id}/predictions") == {"application/jsonl", "text/csv"}
    assert media_types("/v1/fine_tuning/jobs/{job_id}/metrics") == {"application/json", "text/csv"}
    assert media_types("/v1/fine_tuning/jobs/{job_id}/recipe") == {"application/json", "application/yaml"}
    assert media_types("/v1/chat/completions", "post") == {"application/json", "text/event-stream"}
    upload = paths["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(upload["required"]) == {"file", "purpose"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/batches", "GET, POST"),  # Starlette alone would say only "POST"
        ("PUT", "/v1/files/file-x", "DELETE, GET"),
        # A GET on a POST-only route would otherwise reach the web UI's catch-all: a 404.
        ("GET", "/v1/chat/completions", "POST"),
        ("GET", "/v1/batches/batch_x/cancel", "POST"),
    ],
)
def test_a_wrong_method_is_a_405_naming_every_method_the_url_takes(alice, method, path, allow):
    response = alice.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed" and error["type"] == "invalid_request_error"
    assert allow in error["message"]


def test_an_unknown_url_is_still_a_404(alice):
    response = alice.get("/v1/files/file-x/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "allow" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/v1/files", {"params": {"purpose": "\x00"}}),
        ("GET", "/v1/files/file-%00", {}),
        ("GET", "/v1/models/ft:x%00", {}),
        ("GET", "/v1/evaluations", {"params": {"fine_tuning_job_id": "ftjob-\x00"}}),
        ("GET", "/v1/fine_tuning/jobs", {"params": {"metadata[team]": "\x00"}}),
        ("POST", "/v1/chat/completions", {"json": {"model": "ft:m\x00", "messages": [{"role": "user", "content": "x"}]}}),
        (
            "POST",
            "/v1/batches",
            {"json": {"input_file_id": "file-\x00", "endpoint": "/v1/chat/completions", "completion_window": "24h"}},
        ),
    ],
)
def test_a_nul_character_is_refused_not_a_crash(service, alice, method, path, kwargs):
    # PostgreSQL text cannot hold U+0000 (it raised, and the API answered 500).
    # SQLite stores it: there such an id is just one that does not exist.
    response = alice.request(method, path, **kwargs)
    if service.name == "postgres-s3":
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_value"
    else:
        assert response.status_code in (200, 400, 404), response.text
