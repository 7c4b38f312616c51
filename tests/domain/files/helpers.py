"""JSONL files for the validation and split tests, and how the tests validate them."""

import json

from domain.files.split import DEFAULT_SPLIT_SEED
from domain.files.validation.result import LineError, ValidationResult
from domain.files.validation.validators import validator_for


def chat(question="What is 2+2?", answer="4", **extra) -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}], **extra}


def good_examples(count: int, prefix: str = "q") -> list[dict]:
    return [chat(f"{prefix} {i}", f"answer {i}") for i in range(count)]


def to_line(item) -> bytes:
    return item if isinstance(item, bytes) else json.dumps(item, ensure_ascii=False).encode()


def jsonl(items, newline: bytes = b"\n", trailing: bool = True) -> bytes:
    data = newline.join(to_line(item) for item in items)
    return data + newline if trailing else data


def validate(data: bytes, chunk_size: int | None = None, purpose: str = "fine-tune",
             seed: int = DEFAULT_SPLIT_SEED) -> ValidationResult:
    validator = validator_for(purpose, seed)
    step = chunk_size or max(len(data), 1)
    for start in range(0, len(data), step):
        validator.feed(data[start:start + step])
    return validator.finish()


def only_error(result: ValidationResult) -> LineError:
    assert not result.ok
    assert result.report is None
    assert result.error_count == 1, result.errors
    return result.errors[0]


def message(**fields) -> dict:
    return {"role": "user", "content": "hi", **fields}


def with_messages(*messages, **extra) -> dict:
    return {"messages": list(messages), **extra}


ASSISTANT = {"role": "assistant", "content": "ok"}


USER = {"role": "user", "content": "hi"}


TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}


TOOL_DEF = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                             "parameters": {"type": "object", "properties": {}}}}


def mixed_file(valid: bool) -> bytes:
    items = [chat(f"émoji 😀 {i}", f"回答 {i} 🎉") for i in range(14)]
    items[3] = {**items[3], "split": "TEST"}
    if not valid:
        items[5] = b'{"messages": [}'
        items[9] = with_messages({"role": "user", "content": "ß"})
        items.append(b"\xc3\x28")  # invalid UTF-8
    return b"\xef\xbb\xbf" + jsonl(items[:7], newline=b"\r\n") + b"\r\n\n" + jsonl(items[7:], trailing=False)


def request(custom_id="req-1", model="gpt-4o-mini", **overrides) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "Hello"}],
                     "max_tokens": 100}, **overrides}


def text_line(i: int = 0, **extra) -> dict:
    return {"text": f"Document {i}: the quick brown fox jumps over the lazy dog.", **extra}


def prompt_completion(i: int = 0, **extra) -> dict:
    return {"prompt": f"Question {i}:", "completion": f" answer {i}", **extra}


def preference(i: int = 0, **extra) -> dict:
    return {"input": {"messages": [{"role": "user", "content": f"question {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"good answer {i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"bad answer {i}"}], **extra}
