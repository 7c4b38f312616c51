"""The embedded broker's transport: whole messages only, never half-written ones."""

from queue import Empty

import pytest
from kombu import Connection

from domain.queue import create_celery
from domain.settings import Settings


@pytest.fixture
def channel(tmp_path):
    settings = Settings(data_dir=tmp_path)
    app = create_celery(settings)
    with app.connection_for_write() as connection:
        yield connection.default_channel, settings.broker_dir / "queue"


def test_the_service_uses_the_atomic_transport(channel):
    chan, _ = channel
    assert type(chan).__module__ == "domain.filesystem_broker"


def test_a_message_is_renamed_into_place_whole(channel):
    chan, folder = channel
    chan._put("train", {"body": "job-1"})
    names = [path.name for path in folder.iterdir()]
    assert len(names) == 1 and names[0].endswith(".train.msg")
    assert chan._get("train") == {"body": "job-1"}


def test_a_message_being_written_is_invisible_to_consumers(channel):
    chan, folder = channel
    # What _put leaves while it writes: an empty file under its temporary name.
    (folder / ".123_abc.train.msg.tmp").write_bytes(b"")
    with pytest.raises(Empty):
        chan._get("train")
    assert (folder / ".123_abc.train.msg.tmp").exists()


def test_celery_round_trips_through_it(tmp_path):
    settings = Settings(data_dir=tmp_path)
    app = create_celery(settings)
    app.send_task("tunehouse.ping", args=["n1"], queue="default")
    with Connection(transport="domain.filesystem_broker:Transport",
                    transport_options=app.conf.broker_transport_options) as connection:
        message = connection.SimpleQueue("default", no_ack=True).get(timeout=5)
        assert message.headers["task"] == "tunehouse.ping"
