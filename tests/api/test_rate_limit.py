"""Abuse limits: failed authentications per client IP, requests per API key.

The HTTP tests run services of their own with low limits (the shared `service`
fixture has the brute-force limit out of the way). A second client address
comes from the loopback network: 127.0.0.2 reaches a server on 127.0.0.1.
"""

from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from domain.auth.service import revoke_keys
from api.rate_limit import TokenBuckets
from domain.settings import Settings
from tests.conftest import RunningService, running_service, service_settings

OTHER_IP = "127.0.0.2"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the buckets


def test_a_bucket_allows_a_burst_of_the_limit_then_refills_at_the_rate():
    clock = FakeClock()
    buckets = TokenBuckets(3, 60, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a") == pytest.approx(20)  # one token per 20 s
    assert buckets.retry_after("a") == pytest.approx(20)
    assert buckets.take("b") == 0  # another key has its own bucket
    clock.now += 15
    assert buckets.take("a") == pytest.approx(5)
    clock.now += 5
    assert buckets.retry_after("a") == 0
    assert buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(20)


def test_retry_after_takes_nothing():
    buckets = TokenBuckets(1, 60, clock=FakeClock())
    for _ in range(5):
        assert buckets.retry_after("a") == 0
    assert buckets.take("a") == 0
    assert buckets.take("a") > 0


def test_memory_is_bounded_full_buckets_are_forgotten_and_the_oldest_go_first():
    clock = FakeClock()
    buckets = TokenBuckets(2, 60, max_tracked=100, clock=clock)
    for i in range(50):
        buckets.take(f"old-{i}")
    assert len(buckets) == 50
    clock.now += 61  # every bucket is full again: the same as none
    buckets.take("new")
    assert len(buckets) == 1
    for i in range(1000):
        buckets.take(f"flood-{i}")
    assert len(buckets) == 100
    # The most recent clients are the ones kept.
    buckets.take("flood-999")
    assert buckets.take("flood-999") > 0


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        TokenBuckets(0)


# --------------------------------------------------------------------- settings


def test_settings_defaults_validation_and_environment(tmp_path, monkeypatch):
    for name in ("AUTH_FAILURES_PER_MINUTE", "RATE_LIMIT_PER_MINUTE"):
        monkeypatch.delenv(f"TUNEHOUSE_{name}", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert (settings.auth_failures_per_minute, settings.rate_limit_per_minute) == (30, 3000)
    custom = Settings(data_dir=tmp_path, auth_failures_per_minute=5, rate_limit_per_minute=0)
    env = custom.as_env()
    assert env["TUNEHOUSE_AUTH_FAILURES_PER_MINUTE"] == "5"
    assert env["TUNEHOUSE_RATE_LIMIT_PER_MINUTE"] == "0"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == custom
    for field in ("auth_failures_per_minute", "rate_limit_per_minute"):
        with pytest.raises(ValidationError):
            Settings(data_dir=tmp_path, **{field: -1})


# ------------------------------------------------------------------- over HTTP


@pytest.fixture
def limited(request, tmp_path) -> Iterator[RunningService]:
    """A service of its own: 3 failed authentications per IP and 3 requests
    per key per minute (one token every 20 s: far more than a test needs)."""
    settings = service_settings(
        "sqlite-local", tmp_path, request, auth_failures_per_minute=3, rate_limit_per_minute=3
    )
    with running_service("limited", settings) as service:
        yield service


def from_other_ip(service: RunningService, key: str | None = None) -> httpx.Client:
    return service.client(key, transport=httpx.HTTPTransport(local_address=OTHER_IP))


def assert_rate_limited(response: httpx.Response, *, max_wait: int) -> str:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= max_wait
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert f"Retry after {retry_after} second" in error["message"]
    return error["message"]


def test_failed_authentications_block_the_ip_even_for_a_valid_key(limited):
    user = limited.make_user("victim")
    revoked = limited.make_user("gone")
    with limited.state.sessionmaker() as session:
        revoke_keys(session, user_name=revoked.name)
        session.commit()

    with limited.client(None) as client:
        # Missing, wrong and revoked keys all count.
        attempts = [{}, {"Authorization": "Bearer th-wrong-guess"}, {"Authorization": f"Bearer {revoked.key}"}]
        for headers in attempts:
            response = client.get("/v1/files", headers=headers)
            assert response.status_code == 401, response.text

        blocked = client.get("/v1/files", headers={"Authorization": "Bearer th-another-guess"})
        message = assert_rate_limited(blocked, max_wait=20)
        assert "failed authentications from your IP address" in message
        assert "even with a valid API key" in message

        # The right key from the same address waits too: it is not even checked.
        right = client.get("/v1/files", headers={"Authorization": f"Bearer {user.key}"})
        assert "even with a valid API key" in assert_rate_limited(right, max_wait=20)

        # Health checks and metrics are never limited.
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200

    # Another address is not affected: the same key works from there.
    with from_other_ip(limited, user.key) as other:
        response = other.get("/v1/files")
        assert response.status_code == 200, response.text
        assert response.json()["data"] == []


def test_a_key_over_its_request_rate_gets_429_and_other_keys_do_not(limited):
    alice, bob = limited.make_user("alice"), limited.make_user("bob")
    with limited.client(alice.key) as client:
        for _ in range(3):
            assert client.get("/v1/files").status_code == 200
        message = assert_rate_limited(client.get("/v1/files"), max_wait=20)
        assert "Rate limit reached for this API key: 3 requests per minute" in message
        # A refused request is not an authentication failure: the IP is not blocked.
        for _ in range(3):
            assert client.get("/v1/models").status_code == 429
    with limited.client(bob.key) as client:
        response = client.get("/v1/files")
        assert response.status_code == 200, response.text
        for _ in range(10):
            assert client.get("/healthz").status_code == 200


def test_zero_turns_the_limits_off(request, tmp_path):
    settings = service_settings("sqlite-local", tmp_path, request, auth_failures_per_minute=0, rate_limit_per_minute=0)
    with running_service("unlimited", settings) as service:
        user = service.make_user()
        with service.client(None) as client:
            for _ in range(40):
                assert client.get("/v1/files", headers={"Authorization": "Bearer th-wrong"}).status_code == 401
            statuses = {client.get("/v1/files", headers={"Authorization": f"Bearer {user.key}"}).status_code for _ in range(40)}
        assert statuses == {200}
