"""Request limits: failed authentications per client IP, requests per API key.

Each limit is a token bucket per client: it holds up to N tokens (N = the
per-minute limit) and refills at N per minute, so a client may burst N at once
and then goes on at N per minute on average. Unlike fixed windows there is no
boundary at which a client gets 2N in a short time, and a bucket costs two
numbers of memory whatever N is.

The counts live in this process's memory. With several API processes (uvicorn
--workers, or several `api` containers behind a load balancer) each process
counts on its own: a client may get up to N per minute from *each* process.
They are also lost on restart. That is enough to stop password-guessing style
key brute force and runaway scripts; a shared limit would need Redis.

The client IP is the connection's peer address (`request.client.host`): behind
a reverse proxy run uvicorn with --proxy-headers and --forwarded-allow-ips so
it is the real client's address, not the proxy's for everyone.
"""

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from api.errors import APIError
from domain.settings import Settings

WINDOW_SECONDS = 60.0
# The most clients tracked per limit. Beyond it the least recently seen are
# forgotten first (which only ever lets a forgotten client start afresh).
MAX_TRACKED = 100_000


class TokenBuckets:
    """A thread-safe token bucket per key; `limit` per `window` seconds."""

    def __init__(
        self,
        limit: int,
        window: float = WINDOW_SECONDS,
        *,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ):
        if limit < 1 or window <= 0 or max_tracked < 1:
            raise ValueError("limit, window and max_tracked must be positive")
        self.limit = limit
        self.rate = limit / window  # tokens per second
        self.full_after = window  # an untouched bucket is full again after this
        self.max_tracked = max_tracked
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens, when they were counted); least recently touched first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.limit)
        tokens, counted_at = entry
        return min(float(self.limit), tokens + (now - counted_at) * self.rate)

    def _evict(self, now: float) -> None:
        # Buckets full again are the same as no bucket: drop them, oldest first
        # (touch order = time order, so the scan stops at the first recent one).
        while self._buckets:
            key, (_tokens, counted_at) = next(iter(self._buckets.items()))
            if now - counted_at < self.full_after and len(self._buckets) <= self.max_tracked:
                break
            del self._buckets[key]

    def retry_after(self, key: str) -> float:
        """Seconds until `key` has a whole token; 0 when it has one now. Takes nothing."""
        with self._lock:
            tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, key: str) -> float:
        """Take a token for `key`. Returns 0 if it had one, else the seconds
        until it will (nothing taken then)."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens(key, now)
            if tokens < 1:
                return (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1, now)
            self._buckets.move_to_end(key)
            self._evict(now)
            return 0.0


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
    """The limits of one API process. A limit of 0 (or None) is off."""

    auth_failures: TokenBuckets | None
    requests: TokenBuckets | None

    @classmethod
    def from_settings(cls, settings: Settings) -> "RateLimits":
        return cls(
            auth_failures=TokenBuckets(settings.auth_failures_per_minute) if settings.auth_failures_per_minute else None,
            requests=TokenBuckets(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None,
        )

    def check_client(self, client_ip: str) -> None:
        """Before any key is looked at: refuse a client IP with too many failed
        authentications, whatever key it sends now (a right guess included)."""
        if self.auth_failures is None:
            return
        wait = self.auth_failures.retry_after(client_ip)
        if wait > 0:
            raise _too_many(
                f"Too many failed authentications from your IP address ({self.auth_failures.limit} per minute); "
                "requests from it are refused for now, even with a valid API key.",
                wait,
            )

    def record_auth_failure(self, client_ip: str) -> None:
        if self.auth_failures is not None:
            self.auth_failures.take(client_ip)

    def check_key(self, key_id: str) -> None:
        """Count one request of an authenticated key."""
        if self.requests is None:
            return
        wait = self.requests.take(key_id)
        if wait > 0:
            raise _too_many(
                f"Rate limit reached for this API key: {self.requests.limit} requests per minute.", wait
            )


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def rate_limits(request: Request) -> RateLimits | None:
    return getattr(request.app.state, "rate_limits", None)
