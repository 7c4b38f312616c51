"""Small chat JSONL files for tests."""

import json


def chat_example(i: int, *, split: str | None = None, system: bool = True) -> dict:
    messages = []
    if system:
        messages.append({"role": "system", "content": "You answer with the number spelled out."})
    messages += [
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": f"It is {i + 1}."},
    ]
    example: dict = {"messages": messages}
    if split:
        example["split"] = split
    return example


def chat_jsonl(n: int = 12, **kwargs) -> bytes:
    return "".join(json.dumps(chat_example(i, **kwargs)) + "\n" for i in range(n)).encode()


def batch_jsonl(n: int = 3, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct") -> bytes:
    lines = [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Say {i}"}]},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def preference_example(i: int, *, split: str | None = None) -> dict:
    """OpenAI's preference line: the preferred answer spells the number out."""
    example: dict = {
        "input": {"messages": [{"role": "user", "content": f"What is {i} + 1?"}]},
        "preferred_output": [{"role": "assistant", "content": f"It is {i + 1}."}],
        "non_preferred_output": [{"role": "assistant", "content": f"No idea about {i}."}],
    }
    if split:
        example["split"] = split
    return example


def preference_jsonl(n: int = 12, **kwargs) -> bytes:
    return "".join(json.dumps(preference_example(i, **kwargs)) + "\n" for i in range(n)).encode()
