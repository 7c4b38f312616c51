"""The official openai SDK, unmodified, against the Files API."""

import openai
import pytest

from tests.chat_data import chat_jsonl


@pytest.fixture
def sdk(service, alice_user) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=alice_user.key, max_retries=0)


def test_files_round_trip_with_the_sdk(sdk):
    content = chat_jsonl(20)
    created = sdk.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert created.bytes == len(content)
    assert created.purpose == "fine-tune"
    assert created.status == "processed"

    second = sdk.files.create(file=("more.jsonl", chat_jsonl(10)), purpose="fine-tune")
    # The SDK's auto-pagination follows `after` cursors to the end.
    listed = [f.id for f in sdk.files.list(limit=1)]
    assert listed == [second.id, created.id]

    retrieved = sdk.files.retrieve(created.id)
    assert (retrieved.id, retrieved.filename) == (created.id, "train.jsonl")
    assert sdk.files.content(created.id).read() == content

    deleted = sdk.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)


def test_sdk_sees_openai_errors(service, sdk):
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("bad.jsonl", b'{"messages": []}\n' * 12), purpose="fine-tune")
    assert "line 1:" in bad.value.message
    assert bad.value.code == "invalid_file"

    stranger = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key="th-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.files.list()
