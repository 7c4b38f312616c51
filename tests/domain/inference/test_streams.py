"""The channel an inference worker answers on: Redis lists and files."""

import threading

import pytest

from domain.inference.streams import FileStreams, RedisStreams, StreamTimeout
from tests.conftest import redis_db


@pytest.fixture(params=["file", "redis"])
def streams(request, tmp_path):
    if request.param == "file":
        yield FileStreams(tmp_path / "streams")
        return
    with redis_db("api") as url:
        streams = RedisStreams(url)
        yield streams
        streams.close()


def test_events_arrive_in_order_and_the_stream_ends_at_done(streams):
    for event in ({"type": "started"}, {"type": "delta", "index": 0, "text": "Hé"}, {"type": "done", "usage": {}}):
        streams.publish("chatcmpl-a", event)
    received = list(streams.read("chatcmpl-a", first_timeout=5, next_timeout=5))
    assert [event["type"] for event in received] == ["started", "delta", "done"]
    assert received[1]["text"] == "Hé"


def test_a_reader_waits_for_a_writer_in_another_thread(streams):
    ready = threading.Event()

    def write():
        ready.wait()
        streams.publish("chatcmpl-b", {"type": "delta", "index": 0, "text": "x"})
        streams.publish("chatcmpl-b", {"type": "error", "status": 400, "message": "no"})

    writer = threading.Thread(target=write)
    writer.start()
    events = streams.read("chatcmpl-b", first_timeout=10, next_timeout=10)
    ready.set()
    assert [event["type"] for event in events] == ["delta", "error"]
    writer.join()


def test_nobody_answering_times_out(streams):
    with pytest.raises(StreamTimeout):
        list(streams.read("chatcmpl-c", first_timeout=1, next_timeout=1))


def test_a_read_stream_is_cleaned_up(streams, tmp_path):
    streams.publish("chatcmpl-d", {"type": "done"})
    list(streams.read("chatcmpl-d", first_timeout=5, next_timeout=5))
    if isinstance(streams, FileStreams):
        assert list((tmp_path / "streams").iterdir()) == []
    else:
        assert streams._redis.exists(streams._key("chatcmpl-d")) == 0


def test_abandoned_stream_files_are_swept(tmp_path):
    import os

    streams = FileStreams(tmp_path / "streams")
    streams.publish("chatcmpl-old", {"type": "delta"})
    streams.publish("chatcmpl-new", {"type": "delta"})
    old = tmp_path / "streams" / "chatcmpl-old.jsonl"
    os.utime(old, (old.stat().st_atime - 3600, old.stat().st_mtime - 3600))
    assert streams.sweep() == 1
    assert sorted(p.name for p in (tmp_path / "streams").iterdir()) == ["chatcmpl-new.jsonl"]
