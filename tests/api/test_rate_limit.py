"""Abuse limits: failed authentications per client IP, requests per API key.

Counted in Redis when the broker is Redis (shared by every API process, kept
over restarts), in memory in embedded mode. The HTTP tests run services of
their own with low limits (the shared `service` fixture has the brute-force
limit out of the way). A second client address comes from the loopback
network: 127.0.0.2 reaches a server on 127.0.0.1.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
import redis
from limits.storage import MemoryStorage, RedisStorage
from pydantic import ValidationError

from api.rate_limit import REDIS_KEY_PREFIX, RateLimits, MovingWindowLimit, storage_for
from domain.auth.service import revoke_keys
from domain.settings import Settings
from tests.conftest import RunningService, redis_db, running_service, service_settings

OTHER_IP = "127.0.0.2"
# Nothing listens there: every Redis command fails at once.
DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis db number of these tests' own, emptied before and after each."""
    with redis_db("rate_limits") as url:
        yield url


# ------------------------------------------------------------------- the limits


@pytest.fixture(params=["memory", "redis"])
def storage(request):
    if request.param == "memory":
        yield MemoryStorage(wrap_exceptions=True)
    else:
        url = request.getfixturevalue("redis_url")
        yield storage_for(Settings(data_dir=request.getfixturevalue("tmp_path"), broker_url=url))


def test_a_limit_allows_a_burst_then_one_more_when_the_oldest_is_a_window_old(storage):
    limit = MovingWindowLimit("test", 3, storage, window=2)
    assert limit.take("a") == 0
    time.sleep(1)
    assert [limit.take("a") for _ in range(2)] == [0, 0]
    # Full: the next one when the first is a window (2 s) old, about 1 s from now.
    wait = limit.take("a")
    assert 0 < wait <= 1
    assert 0 < limit.retry_after("a") <= wait
    assert limit.take("b") == 0  # another key has its own count
    time.sleep(wait + 0.05)
    assert limit.retry_after("a") == 0
    assert limit.take("a") == 0
    # Full again until the two taken together are a window old.
    assert 0 < limit.take("a") <= 1


def test_retry_after_takes_nothing(storage):
    limit = MovingWindowLimit("test", 1, storage)
    for _ in range(5):
        assert limit.retry_after("a") == 0
    assert limit.take("a") == 0
    assert 59 < limit.take("a") <= 60


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        MovingWindowLimit("test", 0, MemoryStorage())


def test_the_storage_follows_the_broker(tmp_path, redis_url):
    assert isinstance(storage_for(Settings(data_dir=tmp_path)), MemoryStorage)
    assert isinstance(storage_for(Settings(data_dir=tmp_path, broker_url=redis_url)), RedisStorage)
    off = RateLimits.from_settings(Settings(data_dir=tmp_path, auth_failures_per_minute=0, rate_limit_per_minute=0))
    assert (off.auth_failures, off.requests) == (None, None)


def test_redis_keeps_one_expiring_list_per_client(redis_url, tmp_path):
    limits = RateLimits.from_settings(
        Settings(data_dir=tmp_path, broker_url=redis_url, rate_limit_per_minute=5, auth_failures_per_minute=2)
    )
    for _ in range(8):
        limits.record_auth_failure("10.0.0.1")
    limits.check_key("key-hash")
    client = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(key.decode() for key in client.keys("*"))
        assert keys == [
            f"{REDIS_KEY_PREFIX}:rate-limit/auth-failures/10.0.0.1/2/60/second",
            f"{REDIS_KEY_PREFIX}:rate-limit/requests/key-hash/5/60/second",
        ]
        # Never more entries than the limit, and gone a window after the last one.
        assert client.llen(keys[0]) == 2
        assert all(0 < client.ttl(key) <= 60 for key in keys)
    finally:
        client.close()


def test_an_unreachable_redis_lets_requests_through_and_says_so_once(tmp_path, caplog):
    limits = RateLimits.from_settings(
        Settings(data_dir=tmp_path, broker_url=DEAD_REDIS, rate_limit_per_minute=1, auth_failures_per_minute=1)
    )
    with caplog.at_level(logging.WARNING, logger="tunehouse.rate_limit"):
        started = time.monotonic()
        for _ in range(5):
            limits.check_client("10.0.0.1")
            limits.record_auth_failure("10.0.0.1")
            limits.check_key("key-hash")
        assert time.monotonic() - started < 2
    warnings = [r for r in caplog.records if r.name == "tunehouse.rate_limit"]
    assert len(warnings) == 1
    assert "let through unlimited" in warnings[0].getMessage()


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


def limited_settings(request, tmp_path, counts_in: str, **overrides) -> Settings:
    """3 failed authentications per IP and 3 requests per key per minute,
    counted in memory (embedded mode) or in the tests' Redis db."""
    if counts_in == "redis":
        overrides["broker_url"] = request.getfixturevalue("redis_url")
    return service_settings(
        "sqlite-local", tmp_path, request, auth_failures_per_minute=3, rate_limit_per_minute=3, **overrides
    )


@pytest.fixture(params=["memory", "redis"])
def limited(request, tmp_path) -> Iterator[RunningService]:
    with running_service("limited", limited_settings(request, tmp_path, request.param)) as service:
        yield service


def from_other_ip(service: RunningService, key: str | None = None) -> httpx.Client:
    return service.client(key, transport=httpx.HTTPTransport(local_address=OTHER_IP))


def assert_rate_limited(response: httpx.Response, *, max_wait: int = 60) -> str:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= max_wait
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert f"Retry after {retry_after} second" in error["message"]
    return error["message"]


def fail_authentication(client: httpx.Client) -> None:
    response = client.get("/v1/files", headers={"Authorization": "Bearer th-wrong-guess"})
    assert response.status_code == 401, response.text


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
        message = assert_rate_limited(blocked)
        assert "failed authentications from your IP address" in message
        assert "even with a valid API key" in message

        # The right key from the same address waits too: it is not even checked.
        right = client.get("/v1/files", headers={"Authorization": f"Bearer {user.key}"})
        assert "even with a valid API key" in assert_rate_limited(right)

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
        message = assert_rate_limited(client.get("/v1/files"))
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


def test_api_servers_sharing_a_redis_share_the_limits(request, tmp_path):
    # Two API processes' worth: two apps on two ports, one database, one Redis db.
    settings = limited_settings(request, tmp_path, "redis")
    with ExitStack() as stack:
        servers = [stack.enter_context(running_service(f"api-{i}", settings)) for i in range(2)]
        user = servers[0].make_user()
        clients = [stack.enter_context(server.client(user.key)) for server in servers]

        # Requests split across both hit the limit at the same total as one server.
        for client in (clients[0], clients[1], clients[0]):
            assert client.get("/v1/files").status_code == 200
        for client in clients:
            assert "Rate limit reached for this API key" in assert_rate_limited(client.get("/v1/files"))

        # So do failed authentications: 3 split across both block the IP on both.
        anonymous = [stack.enter_context(server.client(None)) for server in servers]
        for client in (anonymous[1], anonymous[0], anonymous[1]):
            fail_authentication(client)
        for client in anonymous:
            assert "failed authentications" in assert_rate_limited(client.get("/v1/files"))


def test_a_restarted_api_keeps_the_counts_in_redis(request, tmp_path):
    settings = limited_settings(request, tmp_path, "redis")
    with running_service("before", settings) as before:
        user = before.make_user()
        with before.client(user.key) as client:
            for _ in range(2):
                assert client.get("/v1/files").status_code == 200
        with before.client(None) as client:
            for _ in range(2):
                fail_authentication(client)

    with running_service("after", settings) as after:
        with after.client(user.key) as client:
            assert client.get("/v1/files").status_code == 200
            assert_rate_limited(client.get("/v1/files"))
        with after.client(None) as client:
            fail_authentication(client)
            assert "failed authentications" in assert_rate_limited(client.get("/v1/files"))


def test_embedded_mode_counts_in_each_process_memory(request, tmp_path):
    # No Redis: each API process counts on its own, and a restart starts afresh.
    settings = limited_settings(request, tmp_path, "memory")
    with running_service("first", settings) as first:
        user = first.make_user()
        with first.client(user.key) as client:
            for _ in range(3):
                assert client.get("/v1/files").status_code == 200
            assert_rate_limited(client.get("/v1/files"))
        with running_service("second", settings) as second, second.client(user.key) as client:
            for _ in range(3):
                assert client.get("/v1/files").status_code == 200
            assert_rate_limited(client.get("/v1/files"))
    with running_service("restarted", settings) as restarted, restarted.client(user.key) as client:
        assert client.get("/v1/files").status_code == 200


def test_an_api_whose_redis_is_down_answers_unlimited_not_500(request, tmp_path, caplog):
    # Fail open: the limits go, the API stays (no 500, no 429, a warning logged).
    settings = service_settings(
        "sqlite-local", tmp_path, request, broker_url=DEAD_REDIS, auth_failures_per_minute=1, rate_limit_per_minute=1
    )
    with caplog.at_level(logging.WARNING, logger="tunehouse.rate_limit"):
        with running_service("redis-down", settings) as service:
            user = service.make_user()
            with service.client(None) as client:
                for _ in range(3):
                    fail_authentication(client)
            with service.client(user.key) as client:
                for _ in range(3):
                    assert client.get("/v1/files").status_code == 200
    assert any("let through unlimited" in r.getMessage() for r in caplog.records if r.name == "tunehouse.rate_limit")
