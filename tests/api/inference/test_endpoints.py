"""POST /v1/chat/completions checks, with no inference worker running (the
answering side is tests/worker/inference/test_chat_and_batch_e2e.py)."""

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


# ------------------------------------------- one contract: chat and batch lines

MESSAGES = [{"role": "user", "content": "Hi"}]
# The same bodies go to POST /v1/chat/completions and into batch lines.
CONTRACT_BODIES = {
    "plain": {},
    "every_sampling_parameter": {"max_tokens": 3, "temperature": 0, "top_p": 0.5, "n": 2, "stop": ["x"], "seed": 1},
    "max_completion_tokens": {"max_completion_tokens": 3, "metadata": {"k": "v"}},
    "both_max_tokens": {"max_tokens": 5, "max_completion_tokens": 5},
    "max_tokens_over_the_cap": {"max_tokens": 10**6},
    "max_completion_tokens_over_the_cap": {"max_completion_tokens": 10**6},
    "max_tokens_zero": {"max_tokens": 0},
    "unknown_parameter": {"no_such_parameter": 1},
    "tools": {"tools": [{"type": "function"}]},
    "bad_role": {"messages": [{"role": "wizard", "content": "x"}]},
    "no_messages": {"messages": []},
    "image_part": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    "n_too_big": {"n": 9},
    "too_many_stops": {"stop": ["a", "b", "c", "d", "e"]},
    "empty_stop": {"stop": [""]},
    "temperature_too_high": {"temperature": 2.5},
    "temperature_not_a_number": {"temperature": "hot"},
    "top_p_zero": {"top_p": 0},
    "logprobs": {"logprobs": True},
    "json_mode": {"response_format": {"type": "json_object"}},
    "metadata_too_long": {"metadata": {"k": "v" * 513}},
    "unknown_model": {"model": "no-such-model"},
}


def batch_line_outcome(service, user, body: dict) -> dict | None:
    """What the batch runner decides for a line with this body: the
    `response` of its error record, or None (accepted: it would run). The
    runner parses each line with worker.inference.batch.parse_request, which is the
    chat endpoint's check (test below), then resolves the model."""
    from domain.errors import model_not_found
    from domain.inference.targets import resolve_target
    from worker.inference.batch import error_record, parse_request, request_error
    from worker.inference.requests import RequestError

    try:
        request = parse_request(body, service.settings)
        with service.state.sessionmaker() as session:
            if resolve_target(session, user.id, service.settings, request.model) is None:
                raise request_error(model_not_found(request.model))
    except RequestError as error:
        record = error_record("line-1", error.status, error.message, param=error.param, code=error.code)
        return record["response"]
    return None


@pytest.mark.parametrize("name", list(CONTRACT_BODIES))
def test_chat_and_batch_lines_accept_and_refuse_the_same_bodies(service, alice_user, name):
    body = {"model": BASE, "messages": MESSAGES, **CONTRACT_BODIES[name]}
    # A client without the suite's "no 5xx" hook: an accepted request gets the
    # documented 503 (no inference worker runs here).
    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {alice_user.key}"}) as client:
        response = client.post("/v1/chat/completions", json=body)
    line = batch_line_outcome(service, alice_user, body)
    if response.status_code == 503:
        assert response.json()["error"]["code"] == "no_inference_worker"
        assert line is None, line
        return
    assert 400 <= response.status_code < 500, response.text
    assert line is not None, f"the chat endpoint refused it, a batch line would run: {response.text}"
    assert line["status_code"] == response.status_code
    assert line["body"] == response.json()  # same message, type, param and code


def test_only_batch_lines_refuse_streaming(service, alice_user):
    body = {"model": BASE, "messages": MESSAGES, "stream": True}
    line = batch_line_outcome(service, alice_user, body)
    assert line["status_code"] == 400
    assert (line["body"]["error"]["param"], line["body"]["error"]["code"]) == ("stream", "unsupported_parameter")
    # With a refusal both share, that one comes first.
    line = batch_line_outcome(service, alice_user, {**body, "n": 9})
    assert line["body"]["error"]["param"] == "n"


def test_the_batch_runner_parses_lines_with_the_chat_check(service, monkeypatch):
    import inspect

    import worker.inference.batch
    from domain.inference import service as inference

    assert "parse_request(" in inspect.getsource(worker.inference.batch.BatchRun)
    calls = []

    def spy(body, settings, **kwargs):
        calls.append(kwargs)
        return inference.chat_request(body, settings, **kwargs)

    monkeypatch.setattr(worker.inference.batch, "chat_request", spy)
    worker.inference.batch.parse_request({"model": BASE, "messages": MESSAGES}, service.settings)
    assert calls == [{"in_batch": True}]
