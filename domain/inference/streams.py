"""How an inference worker's answer gets back to the API request waiting for it.

The request goes to a worker through the broker (queue `inference`); the
answer comes back as a stream of small JSON events on a per-request channel:
`started`, then `delta`s (streamed text), then one `done` (the response) or
`error`. With a Redis broker the channel is a Redis list (RPUSH / BLPOP, with
an expiry so an abandoned stream cleans itself up); with the embedded
filesystem broker it is an append-only file in the broker folder, which the
API tails. Either way a worker and the API need nothing but the broker's
configuration to find each other.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from domain.settings import Settings

TERMINAL_EVENTS = ("done", "error")
# A Redis stream no one reads any more disappears after this long.
STREAM_TTL_SECONDS = 600
# How often the file channel looks for new lines: short, since it is per token.
FILE_POLL_SECONDS = 0.01
BLOCKING_POP_SECONDS = 2.0


class StreamTimeout(Exception):
    pass


class RedisStreams:
    def __init__(self, url: str):
        import redis

        self._redis = redis.Redis.from_url(url)

    @staticmethod
    def _key(request_id: str) -> str:
        return f"tunehouse:inference:{request_id}"

    def publish(self, request_id: str, event: dict) -> None:
        key = self._key(request_id)
        with self._redis.pipeline() as pipe:
            pipe.rpush(key, json.dumps(event))
            pipe.expire(key, STREAM_TTL_SECONDS)
            pipe.execute()

    def read(self, request_id: str, first_timeout: float, next_timeout: float) -> Iterator[dict]:
        key = self._key(request_id)
        deadline = time.monotonic() + first_timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StreamTimeout(request_id)
                # Short blocking pops: a client's socket timeout must not end a long wait.
                item = self._redis.blpop([key], timeout=min(remaining, BLOCKING_POP_SECONDS))
                if item is None:
                    continue
                event = json.loads(item[1])
                yield event
                if event["type"] in TERMINAL_EVENTS:
                    return
                deadline = time.monotonic() + next_timeout
        finally:
            self._redis.delete(key)

    def close(self) -> None:
        self._redis.close()


class FileStreams:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, request_id: str) -> Path:
        # Request ids are made by the server ("chatcmpl-" + time-sortable hex).
        return self.folder / f"{request_id}.jsonl"

    def publish(self, request_id: str, event: dict) -> None:
        # One write of one whole line per event, from one writer: the reader
        # never sees half a line it would not wait for.
        line = (json.dumps(event) + "\n").encode()
        fd = os.open(self._path(request_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read(self, request_id: str, first_timeout: float, next_timeout: float) -> Iterator[dict]:
        path = self._path(request_id)
        deadline = time.monotonic() + first_timeout
        pending = b""
        offset = 0
        try:
            while True:
                chunk = b""
                if path.exists():
                    with path.open("rb") as handle:
                        handle.seek(offset)
                        chunk = handle.read()
                if not chunk:
                    if time.monotonic() > deadline:
                        raise StreamTimeout(request_id)
                    time.sleep(FILE_POLL_SECONDS)
                    continue
                offset += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    yield event
                    if event["type"] in TERMINAL_EVENTS:
                        return
                deadline = time.monotonic() + next_timeout
        finally:
            path.unlink(missing_ok=True)

    def sweep(self) -> int:
        """Removes streams nobody reads any more (a worker that answered after
        the API stopped waiting); returns how many."""
        cutoff = time.time() - STREAM_TTL_SECONDS
        removed = 0
        for path in self.folder.glob("*.jsonl"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # read and removed meanwhile
                continue
        return removed

    def close(self) -> None:
        pass


def streams_for(settings: Settings) -> RedisStreams | FileStreams:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisStreams(settings.broker_url)
    if settings.broker_url.startswith("filesystem://"):
        return FileStreams(settings.broker_dir / "streams")
    raise ValueError(f"inference needs a Redis or filesystem broker, not {settings.broker_url.split(':')[0]}")


def sweep_streams(settings: Settings) -> int:
    """Run by the API's recovery loop. Redis streams expire by themselves."""
    if not settings.broker_url.startswith("filesystem://"):
        return 0
    return FileStreams(settings.broker_dir / "streams").sweep()
