"""A connection's model (`conn:peer/tiny-llama`) through the service, end to
end: the API in this process, a real inference worker that calls the
endpoint, and the endpoint a second tunehouse (tests/peer.py) behind a
fault-injecting proxy. Chat through the official SDK, streamed and not; a
batch mixing a local model, a connection's model and an unknown one; 429s
retried, a stall and an endpoint that is down answered with clear errors;
the key in no response, log line or stored file."""

import json
import logging
from pathlib import Path

import openai
import pytest

from domain.settings import Settings
from tests.conftest import running_service
from tests.e2e import TINY, Workers
from tests.peer import FaultyHttpProxy, running_peer
from tests.worker.inference.test_chat_and_batch_e2e import read_jsonl, run_batch, wait_for_batch

MODEL = f"conn:peer/{TINY}"
PROMPT = [{"role": "user", "content": "What sound does a cat make?"}]

pytestmark = pytest.mark.slow


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    """(service, workers, user, peer, proxy, captured log lines); the user has
    the connection "peer" to the peer through the proxy."""
    records = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    tmp = tmp_path_factory.mktemp("external")
    try:
        with running_peer(tmp, tiny_model_dir) as peer:
            proxy = FaultyHttpProxy(int(peer.service.base_url.rsplit(":", 1)[1]))
            settings = Settings(
                data_dir=tmp / "data", base_models={TINY: f"path:{tiny_model_dir}"}, inference_dtype="float32",
                connection_read_timeout=3.0, connection_max_attempts=2, connection_retry_max_wait=1.0,
            )
            with running_service("external", settings) as service:
                workers = Workers(settings)
                workers.start("inference")
                try:
                    user = service.make_user("external")
                    with service.client(user.key) as client:
                        created = client.post("/v1/connections", json={
                            "name": "peer", "base_url": f"{proxy.url}/v1", "api_key": peer.api_key})
                        assert created.status_code == 200, created.text
                    yield service, workers, user, peer, proxy, records.lines
                finally:
                    workers.stop_all()
                    proxy.close()
    finally:
        root.removeHandler(records)
        root.setLevel(level)


@pytest.fixture
def sdk(stack):
    service, _, user, _, _, _ = stack
    return openai.OpenAI(api_key=user.key, base_url=f"{service.base_url}/v1", max_retries=0, timeout=120)


def test_chat_streamed_and_not_gives_the_endpoints_answer(stack, sdk):
    _, _, _, peer, _, _ = stack
    direct = openai.OpenAI(api_key=peer.api_key, base_url=peer.base_url, max_retries=0).chat.completions.create(
        model=TINY, messages=PROMPT, max_tokens=5, temperature=0)
    completion = sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, temperature=0)
    assert completion.model == MODEL and completion.choices[0].message.content == direct.choices[0].message.content
    assert completion.usage.completion_tokens == direct.usage.completion_tokens
    assert completion.usage.prompt_tokens == direct.usage.prompt_tokens

    chunks = list(sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert all(chunk.model == MODEL for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [direct.choices[0].finish_reason]


def test_faults_of_the_endpoint(stack, sdk):
    _, _, _, _, proxy, _ = stack
    proxy.fail_next("429", retry_after=0.2)
    assert sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=3).choices[0].message.content is not None
    assert proxy.faulted == 1

    proxy.fail_next("stall")
    with pytest.raises(openai.APIStatusError) as stalled:
        sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=3)
    assert stalled.value.status_code == 502 and stalled.value.body["code"] == "timeout"

    proxy.cut()
    try:
        with pytest.raises(openai.APIStatusError) as down:
            list(sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=3, stream=True))
        assert down.value.status_code == 502 and down.value.body["code"] == "connection_error"
        assert "'peer' cannot be reached" in down.value.body["message"]
    finally:
        proxy.restore()
    # Nothing else failed: the next call is answered.
    assert sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=3).usage.completion_tokens >= 1


def test_a_batch_with_a_connections_model(stack, sdk):
    _, _, _, _, proxy, _ = stack

    def line(custom_id: str, model: str) -> dict:
        body = {"model": model, "messages": PROMPT, "max_tokens": 4, "temperature": 0}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    lines = [line(f"ext-{i}", MODEL) for i in range(3)] + [line("local", TINY), line("unknown", "conn:nope/x")]
    faulted = proxy.faulted
    proxy.fail_next("429", retry_after=0.2)  # one line's call is retried, and succeeds
    batch = wait_for_batch(sdk, run_batch(sdk, lines).id)
    assert batch.status == "completed" and batch.request_counts.completed == 4 and batch.request_counts.failed == 1
    assert proxy.faulted == faulted + 1
    output, errors = read_jsonl(sdk, batch.output_file_id), read_jsonl(sdk, batch.error_file_id)
    texts = {output[f"ext-{i}"]["response"]["body"]["choices"][0]["message"]["content"] for i in range(3)}
    assert len(texts) == 1  # greedy: the same answer for the same prompt
    assert output["ext-0"]["response"]["body"]["model"] == MODEL and output["ext-0"]["response"]["body"]["usage"]["completion_tokens"] >= 1
    assert output["local"]["response"]["body"]["model"] == TINY
    assert errors["unknown"]["response"]["status_code"] == 404


def test_the_key_appears_in_no_response_log_or_file(stack, sdk):
    service, workers, user, peer, _, log_lines = stack
    key = peer.api_key
    with service.client(user.key) as client:
        for path in ("/v1/connections", "/v1/connections/peer", "/v1/connections/peer/models"):
            assert key not in client.get(path).text
        assert key not in client.post("/v1/connections/peer/test").text
    assert log_lines and not [line for line in log_lines if key in line]
    for process in workers.processes:
        assert key not in Path(process.log_path).read_text(errors="replace")
    stored = [path for path in service.settings.data_dir.rglob("*") if path.is_file()]
    assert stored and not [path for path in stored if key.encode() in path.read_bytes()]
