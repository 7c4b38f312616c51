"""POST /v1/chat/completions checks, with no inference worker running (the
answering side is tests/worker/test_inference_e2e.py)."""

import httpx
import pytest

from tests.chat_data import chat_jsonl
from tests.api.files.test_endpoints import upload

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"model": BASE, "messages": [{"role": "user", "content": "Hi"}], **body})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 5}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages.0.content"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
        ({"no_such_parameter": 1}, "no_such_parameter"),
    ],
)
def test_bad_parameters_are_named(alice, body, param):
    response = chat(alice, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_unknown_models_are_404(alice):
    response = chat(alice, model="no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.json()["error"]["param"] == "model"


def test_a_file_id_or_job_name_is_not_a_model(alice):
    file_id = upload(alice, chat_jsonl()).json()["id"]
    assert chat(alice, model=file_id).status_code == 404


def test_authentication_is_required(anonymous):
    assert chat(anonymous).status_code == 401


def test_no_inference_worker_gives_a_clear_503(service, alice_user):
    # A client without the suite's "no 5xx" hook: this 503 is the point.
    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {alice_user.key}"}) as client:
        response = chat(client, max_tokens=3)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_inference_worker"
    assert "Retry-After" in response.headers
