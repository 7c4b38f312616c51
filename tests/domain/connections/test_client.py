"""ConnectionClient against a real OpenAI-compatible server: a second
tunehouse (tests/peer.py) behind a fault-injecting HTTP proxy that answers
429s and 5xx, stalls, resets and goes down. The SSRF guard is checked at
call time, through a redirect too. The key is in no error."""

import json
import threading
import time
import uuid

import pytest

from domain.connections.client import ConnectionClient, Endpoint, ExternalCallError
from domain.settings import Settings
from tests.peer import FaultyHttpProxy, QuietHandler, http_server, redirecting_server, running_peer

KEY_PROBE = "sk-never-shown"  # a key the endpoint refuses, to look for in errors
PROMPT = [{"role": "user", "content": "Say something"}]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def peer(tmp_path_factory, tiny_model_dir):
    with running_peer(tmp_path_factory.mktemp("client-peer"), tiny_model_dir) as peer:
        yield peer


@pytest.fixture
def proxy(peer):
    proxy = FaultyHttpProxy(int(peer.service.base_url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


def settings_for(tmp_path, **values) -> Settings:
    return Settings(data_dir=tmp_path, **{"connection_read_timeout": 20.0, **values})


def client_for(base_url: str, api_key: str, settings: Settings, **kwargs) -> ConnectionClient:
    # A new connection id per client: the concurrency limit is per connection.
    endpoint = Endpoint(connection_id=f"conn_{uuid.uuid4().hex}", name="peer", base_url=base_url, api_key=api_key)
    return ConnectionClient(endpoint, settings, **kwargs)


def chat(client: ConnectionClient):
    return client.chat("tiny-llama", PROMPT, max_tokens=4, temperature=0.0)


def test_chat_stream_and_models(peer, tmp_path):
    client = client_for(peer.base_url, peer.api_key, settings_for(tmp_path))
    assert client.list_models() == peer.models
    completion = chat(client)
    assert completion.attempts == 1 and completion.latency_ms > 0
    assert completion.completion_tokens >= 1 and completion.prompt_tokens > 0
    assert completion.finish_reason in ("stop", "length")
    chunks = list(client.stream_chat("tiny-llama", PROMPT, max_tokens=4, temperature=0.0))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == completion.text
    assert chunks[-1]["usage"]["completion_tokens"] == completion.completion_tokens
    assert "sk-" not in repr(client) and peer.api_key not in repr(client)


def test_a_429_is_retried_after_what_retry_after_asks(peer, proxy, tmp_path):
    client = client_for(f"{proxy.url}/v1", peer.api_key, settings_for(tmp_path))
    proxy.fail_next("429", retry_after=1.5)
    started = time.monotonic()
    completion = chat(client)
    assert completion.attempts == 2 and proxy.faulted == 1 and proxy.requests == 2
    assert time.monotonic() - started >= 1.5  # not the first backoff pause (0.5 s)


def test_5xx_and_resets_are_retried_until_the_attempts_run_out(peer, proxy, tmp_path):
    client = client_for(f"{proxy.url}/v1", peer.api_key, settings_for(tmp_path, connection_max_attempts=3))
    proxy.fail_next("500", "reset")
    assert chat(client).attempts == 3
    proxy.fail_next("503", "503", "503")
    with pytest.raises(ExternalCallError) as failed:
        chat(client)
    assert failed.value.code == "upstream_error" and failed.value.status == 503 and proxy.faulted == 5


def test_retry_after_is_capped(peer, proxy, tmp_path):
    client = client_for(f"{proxy.url}/v1", peer.api_key, settings_for(tmp_path, connection_retry_max_wait=0.2))
    proxy.fail_next("429", retry_after=3600)
    started = time.monotonic()
    assert chat(client).attempts == 2
    assert time.monotonic() - started < 30


def test_a_stalled_endpoint_is_a_timeout_not_retried(peer, proxy, tmp_path):
    client = client_for(f"{proxy.url}/v1", KEY_PROBE, settings_for(tmp_path, connection_read_timeout=1.0))
    proxy.fail_next("stall")
    started = time.monotonic()
    with pytest.raises(ExternalCallError) as failed:
        chat(client)
    assert failed.value.code == "timeout" and 1.0 <= time.monotonic() - started < 10
    assert proxy.requests == 1 and KEY_PROBE not in str(failed.value)


def test_an_endpoint_that_is_down(peer, proxy, tmp_path):
    client = client_for(f"{proxy.url}/v1", KEY_PROBE, settings_for(tmp_path, connection_max_attempts=2))
    proxy.cut()
    with pytest.raises(ExternalCallError) as failed:
        chat(client)
    assert failed.value.code == "connection_error" and "peer" in failed.value.message
    assert KEY_PROBE not in str(failed.value)
    proxy.restore()
    assert client_for(f"{proxy.url}/v1", peer.api_key, settings_for(tmp_path)).list_models() == peer.models


def test_a_refused_key_is_not_echoed(peer, tmp_path):
    with pytest.raises(ExternalCallError) as failed:
        client_for(peer.base_url, KEY_PROBE, settings_for(tmp_path)).list_models()
    assert failed.value.status == 401 and KEY_PROBE not in str(failed.value)


def test_calls_to_one_connection_wait_for_a_turn(peer, proxy, tmp_path):
    """With a limit of 1, a second call starts only when the first (stalled) ends."""
    client = client_for(f"{proxy.url}/v1", peer.api_key,
                        settings_for(tmp_path, connection_concurrency=1, connection_read_timeout=1.5))
    proxy.fail_next("stall")
    errors = []
    first = threading.Thread(target=lambda: errors.append(pytest.raises(ExternalCallError, chat, client)))
    first.start()
    from tests.conftest import wait_for

    wait_for(lambda: proxy.requests == 1, 10, "the first call to reach the proxy")
    started = time.monotonic()
    completion = chat(client)
    first.join()
    assert completion.attempts == 1 and time.monotonic() - started >= 1.0  # it waited for the first to time out
    assert errors[0].value.code == "timeout"


def test_the_address_is_checked_at_every_call(peer, tmp_path):
    refusing = settings_for(tmp_path, connection_allow_private=False)
    for base_url in ("http://169.254.169.254/latest", "http://[fd00:ec2::254]/v1", "http://metadata.google.internal/v1"):
        with pytest.raises(ExternalCallError) as failed:
            client_for(base_url, KEY_PROBE, settings_for(tmp_path)).list_models()
        assert failed.value.code == "refused_address"
    # Loopback: refused where the deployment refuses private addresses, unless listed.
    with pytest.raises(ExternalCallError) as failed:
        client_for(peer.base_url, peer.api_key, refusing).list_models()
    assert failed.value.code == "refused_address" and "TUNEHOUSE_CONNECTION_ALLOWED_HOSTS" in failed.value.message
    for listed in (["127.0.0.1"], ["127.0.0.0/8"]):
        allowed = settings_for(tmp_path, connection_allow_private=False, connection_allowed_hosts=listed)
        assert client_for(peer.base_url, peer.api_key, allowed).list_models() == peer.models


@pytest.mark.parametrize("location", ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]:80/x"])
def test_a_redirect_to_a_refused_address_is_not_followed(tmp_path, location):
    with redirecting_server(location) as url:
        with pytest.raises(ExternalCallError) as failed:
            client_for(url, KEY_PROBE, settings_for(tmp_path)).get_json("/files")
        assert failed.value.code == "refused_address"
        # A POST is not redirected at all.
        with pytest.raises(ExternalCallError) as failed:
            chat(client_for(url, KEY_PROBE, settings_for(tmp_path)))
        assert failed.value.code == "upstream_error" and failed.value.status == 302


def test_a_redirect_elsewhere_is_followed_without_the_key(peer, tmp_path):
    """The redirect reaches the peer (an allowed address), which refuses the
    call: the key is not sent to another origin."""
    with redirecting_server(f"{peer.base_url}/models") as url:
        with pytest.raises(ExternalCallError) as failed:
            client_for(url, peer.api_key, settings_for(tmp_path)).get_json("/models")
    assert failed.value.status == 401


class _ReasoningModelServer(QuietHandler):
    """Refuses max_tokens as OpenAI's reasoning models do; answers max_completion_tokens."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "max_tokens" in body:
            self.send_json(400, {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with "
                                           "this model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                                           "param": "max_tokens", "code": "unsupported_parameter"}})
            return
        self.send_json(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": body["max_completion_tokens"]}})


def test_max_completion_tokens_where_max_tokens_is_refused(tmp_path):
    with http_server(_ReasoningModelServer) as url:
        completion = chat(client_for(url, KEY_PROBE, settings_for(tmp_path)))
    assert completion.text == "ok" and completion.completion_tokens == 4
