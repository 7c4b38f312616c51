"""A second tunehouse instance for tests of external endpoints: embedded mode
(its own data dir, SQLite, filesystem broker) serving a tiny Llama, with an
inference worker (and a training worker if asked) and a user with an API key.
It speaks the OpenAI API, so it plays any OpenAI-compatible endpoint: a
connection's target, a hosted provider to move from.

    with running_peer(tmp_path) as peer:               # or running_peer(tmp_path, tiny_model_dir)
        openai.OpenAI(base_url=peer.base_url, api_key=peer.api_key).chat.completions.create(
            model=peer.models[0], messages=[...], max_tokens=8)

The services, workers and tiny model are the suite's own (tests/conftest.py,
tests/e2e.py, tests/tiny_model.py)."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from domain.settings import Settings
from tests.api.files.test_endpoints import upload
from tests.conftest import RunningService, ServiceUser, running_service
from tests.e2e import HEARTBEAT_TIMEOUT, TINY, Workers, start_job, tiny_chat_jsonl

# Long enough for a judge's or a comparison's short answers, small enough to stay fast.
PEER_MAX_TOKENS = 64
# The first request waits for the worker to start and load the tiny model.
WARM_UP_TIMEOUT = 120


@dataclass
class Peer:
    service: RunningService
    user: ServiceUser
    workers: Workers
    models: list[str]  # the model ids it serves (its base models)

    @property
    def base_url(self) -> str:
        """Ends in /v1, as an OpenAI client's base_url does."""
        return f"{self.service.base_url}/v1"

    @property
    def api_key(self) -> str:
        return self.user.key

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def client(self) -> httpx.Client:
        """httpx on the peer's root URL (paths start with /v1), as its user."""
        return self.service.client(self.api_key)

    def upload(self, data: bytes, *, purpose: str = "fine-tune", filename: str = "train.jsonl") -> dict:
        """A file on the peer, as its user; returns the file object."""
        with self.client() as client:
            response = upload(client, data, purpose=purpose, filename=filename)
            assert response.status_code == 200, response.text
            return response.json()

    def create_job(self, data: bytes | None = None, **hyperparameters) -> dict:
        """A fine-tuning job of the tiny model on the peer (uploads `data`,
        default tests.e2e.tiny_chat_jsonl()); it runs only with training=True."""
        with self.client() as client:
            return start_job(client, data if data is not None else tiny_chat_jsonl(), **hyperparameters)


@contextmanager
def running_peer(tmp_path: Path, tiny_model_dir: Path | None = None, *, training: bool = False,
                 **settings_values) -> Iterator[Peer]:
    """A peer on a free loopback port, its worker warmed up (it has answered
    one chat) when the block starts. `tiny_model_dir`: the suite's
    `tiny_model_dir` fixture, else one is built under tmp_path. `training`:
    also a training worker (for jobs on the peer)."""
    root = tmp_path / f"peer-{id(tmp_path):x}"
    if tiny_model_dir is None:
        from tests.tiny_model import build_tiny_llama, save_smollm2_tokenizer

        tiny_model_dir = build_tiny_llama(root / "tiny-llama", save_smollm2_tokenizer(root / "tokenizer"))
    settings = Settings(
        data_dir=root / "data",
        base_models={TINY: f"path:{tiny_model_dir}"},
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        max_completion_tokens=PEER_MAX_TOKENS,
        inference_queue_timeout=WARM_UP_TIMEOUT,
        **settings_values,
    )
    with running_service("peer", settings) as service:
        workers = Workers(settings)
        try:
            workers.start("inference")
            if training:
                workers.start("default,train")
            peer = Peer(service=service, user=service.make_user("peer"), workers=workers, models=[TINY])
            _warm_up(peer)
            yield peer
        finally:
            workers.stop_all()


def _warm_up(peer: Peer) -> None:
    with httpx.Client(timeout=WARM_UP_TIMEOUT + 10) as client:
        response = client.post(
            f"{peer.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {peer.api_key}"},
            json={"model": peer.models[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        )
    assert response.status_code == 200, f"the peer did not answer a chat: {response.status_code} {response.text}"
