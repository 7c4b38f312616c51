"""Request limits: failed authentications per client IP, requests per API key.

Each limit is a moving window (the `limits` library's): a client gets at most
N (the per-minute limit) in any 60 seconds, all at once if it likes, and the
next one when its oldest in the window is a minute old. There is no boundary
at which a client gets 2N in a short time, as fixed windows would allow.

Where the counts live follows the broker (`TUNEHOUSE_BROKER_URL`):
- Redis (production): in that Redis, so every API process (uvicorn --workers,
  several `api` containers behind a load balancer) counts against the same
  limit, and a restart of the API forgets nothing. The timestamps are the API
  processes' clocks: keep them in sync (NTP) across machines.
- filesystem:// (embedded mode, no Redis): in this process's memory.

When Redis cannot be reached the limits fail open: the request goes through
unlimited rather than getting a 500 or waiting, a warning is logged once per
outage, and Redis is tried again after STORAGE_RETRY_SECONDS. Going down
costs abuse protection for that time, never availability.

The client IP is the connection's peer address (`request.client.host`): behind
a reverse proxy run uvicorn with --proxy-headers and --forwarded-allow-ips so
it is the real client's address, not the proxy's for everyone.
"""

import logging
import math
import time
from dataclasses import dataclass, field

from fastapi import Request
from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.errors import APIError
from domain.settings import Settings

log = logging.getLogger("tunehouse.rate_limit")

WINDOW_SECONDS = 60
# Redis keys: "tunehouse:rate-limit/<limit name>/<client>/<N>/<window>/second".
REDIS_KEY_PREFIX = "tunehouse"
NAMESPACE = "rate-limit"
# A request never waits long for Redis: one try, short timeouts.
REDIS_TIMEOUT_SECONDS = 0.5
# After Redis failed, requests go through uncounted this long before it is tried again.
STORAGE_RETRY_SECONDS = 5.0


def storage_for(settings: Settings) -> Storage:
    """Redis when the broker is Redis (shared by all API processes), else memory."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        return RedisStorage(
            url,
            key_prefix=REDIS_KEY_PREFIX,
            wrap_exceptions=True,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
    return MemoryStorage(wrap_exceptions=True)


class MovingWindowLimit:
    """At most `limit` events per `window` seconds per key, in `storage`."""

    def __init__(self, name: str, limit: int, storage: Storage, window: int = WINDOW_SECONDS):
        if limit < 1 or window < 1:
            raise ValueError("limit and window must be positive")
        self.name = name
        self.limit = limit
        self.item = RateLimitItemPerSecond(limit, window, namespace=NAMESPACE)
        self.limiter = MovingWindowRateLimiter(storage)

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may have one more; 0 when it may now. Takes nothing."""
        reset_at, remaining = self.limiter.get_window_stats(self.item, self.name, key)
        if remaining > 0:
            return 0.0
        return max(reset_at - time.time(), 0.001)

    def take(self, key: str) -> float:
        """Count one event of `key`. Returns 0 if it was within the limit, else
        the seconds until it will be (nothing counted then)."""
        if self.limiter.hit(self.item, self.name, key):
            return 0.0
        return self.retry_after(key) or 0.001  # the oldest expired in between: just retry


def _too_many(message: str, wait: float) -> APIError:
    seconds = max(1, math.ceil(wait))
    return APIError(
        429,
        f"{message} Retry after {seconds} second{'s' if seconds != 1 else ''}.",
        type="requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(seconds)},
    )


@dataclass
class RateLimits:
    """The limits of the API. A limit of None is off."""

    auth_failures: MovingWindowLimit | None
    requests: MovingWindowLimit | None
    # Monotonic time before which the storage is not tried (it failed); None: it works.
    _paused_until: float | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "RateLimits":
        if not (settings.auth_failures_per_minute or settings.rate_limit_per_minute):
            return cls(auth_failures=None, requests=None)
        storage = storage_for(settings)
        return cls(
            auth_failures=MovingWindowLimit("auth-failures", settings.auth_failures_per_minute, storage)
            if settings.auth_failures_per_minute
            else None,
            requests=MovingWindowLimit("requests", settings.rate_limit_per_minute, storage)
            if settings.rate_limit_per_minute
            else None,
        )

    def _counted(self, count, key: str) -> float:
        """count(key), or 0 (let it through) while the storage is unreachable."""
        if self._paused_until is not None and time.monotonic() < self._paused_until:
            return 0.0
        try:
            wait = count(key)
        except StorageError as exc:
            if self._paused_until is None:
                log.warning(
                    "rate limits: storage unreachable (%s: %s); requests are let through "
                    "unlimited until it answers again (tried every %g s)",
                    type(exc.storage_error).__name__,
                    exc.storage_error,
                    STORAGE_RETRY_SECONDS,
                )
            self._paused_until = time.monotonic() + STORAGE_RETRY_SECONDS
            return 0.0
        if self._paused_until is not None:
            self._paused_until = None
            log.info("rate limits: storage reachable again; requests are counted again")
        return wait

    def check_client(self, client_ip: str) -> None:
        """Before any key is looked at: refuse a client IP with too many failed
        authentications, whatever key it sends now (a right guess included)."""
        if self.auth_failures is None:
            return
        wait = self._counted(self.auth_failures.retry_after, client_ip)
        if wait > 0:
            raise _too_many(
                f"Too many failed authentications from your IP address ({self.auth_failures.limit} per minute); "
                "requests from it are refused for now, even with a valid API key.",
                wait,
            )

    def record_auth_failure(self, client_ip: str) -> None:
        if self.auth_failures is not None:
            self._counted(self.auth_failures.take, client_ip)

    def check_key(self, key_id: str) -> None:
        """Count one request of an authenticated key."""
        if self.requests is None:
            return
        wait = self._counted(self.requests.take, key_id)
        if wait > 0:
            raise _too_many(
                f"Rate limit reached for this API key: {self.requests.limit} requests per minute.", wait
            )


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def rate_limits(request: Request) -> RateLimits | None:
    return getattr(request.app.state, "rate_limits", None)
