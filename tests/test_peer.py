"""tests/peer.py: the second instance answers the official OpenAI SDK."""

import openai
import pytest

from tests.peer import running_peer


@pytest.mark.slow
def test_the_openai_sdk_chats_with_a_peer(tmp_path, tiny_model_dir):
    with running_peer(tmp_path, tiny_model_dir) as peer:
        client = openai.OpenAI(base_url=peer.base_url, api_key=peer.api_key)
        assert peer.models[0] in [model.id for model in client.models.list()]
        completion = client.chat.completions.create(
            model=peer.models[0], messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0
        )
        assert completion.choices[0].finish_reason in ("stop", "length")
        assert completion.usage.completion_tokens >= 1
        chunks = list(client.chat.completions.create(
            model=peer.models[0], messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0, stream=True
        ))
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert streamed == completion.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=peer.base_url, api_key="wrong").models.list()
