"""The rules one line must follow: a fine-tune example in one of the four
formats (domain/files/validation/formats.py: OpenAI chat, OpenAI preference
pairs, prompt/completion, text), or an OpenAI Batch API request (chat
completions). Each rule gives the first problem of a line as the reason shown
to the user, or None."""

from __future__ import annotations

import json

from domain.files.validation.lines import json_type
from domain.files.validation.result import plural

_MISSING = object()  # marks an absent key where null is a value of its own

_ROLES = frozenset(("system", "user", "assistant", "tool"))
_ROLE_NAMES = "system, user, assistant or tool"
_EXAMPLE_KEYS = frozenset(("messages", "tools", "parallel_tool_calls", "split"))
_TEXT_KEYS = frozenset(("text", "split"))
_PROMPT_COMPLETION_KEYS = frozenset(("prompt", "completion", "split"))
_PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
_PREFERENCE_KEY_SET = frozenset((*_PREFERENCE_KEYS, "split"))
_PREFERENCE_INPUT_KEYS = frozenset(("messages", "tools", "parallel_tool_calls"))
_MESSAGE_KEYS = frozenset(("role", "content", "name", "weight", "tool_calls", "tool_call_id"))
_BATCH_KEYS = ("custom_id", "method", "url", "body")
_BATCH_KEY_SET = frozenset(_BATCH_KEYS)
_BATCH_METHOD = "POST"
_BATCH_URL = "/v1/chat/completions"


# --------------------------------------------------------------------------
# Small helpers


def _quote(text: str, limit: int = 60) -> str:
    """repr() of a user-supplied string, shortened so messages stay readable."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _show(value, limit: int = 60) -> str:
    """A JSON value as the user wrote it, shortened."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _unknown_key(obj: dict, allowed: frozenset) -> str:
    key = next(key for key in obj if key not in allowed)
    return f"unknown key {_quote(key)}"


def _string_problem(obj: dict, key: str, label: str | None = None) -> str | None:
    """Problem with a required string field ``obj[key]``, or None."""
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return None
    label = label or key
    if value is _MISSING:
        return f"missing '{label}'"
    return f"'{label}' must be a string, got {json_type(value)}"


# --------------------------------------------------------------------------
# Fine-tune line rules (OpenAI chat fine-tuning format)


def fine_tune_problem(example: dict) -> str | None:
    """The first problem with one fine-tune example, or None if it is valid."""
    if not _EXAMPLE_KEYS.issuperset(example):
        return _unknown_key(example, _EXAMPLE_KEYS)
    messages = example.get("messages", _MISSING)
    if messages is _MISSING:
        return "missing 'messages'"
    if type(messages) is not list or not messages:
        return "'messages' must be a non-empty list"
    return _split_problem(example) or _tools_keys_problem(example) or _messages_problem(messages)


def _split_problem(example: dict) -> str | None:
    split = example.get("split", _MISSING)
    if split is not _MISSING and split != "TRAIN" and split != "TEST":
        return f"'split' must be \"TRAIN\" or \"TEST\", got {_show(split)}"
    return None


def _tools_keys_problem(obj: dict) -> str | None:
    """'tools' and 'parallel_tool_calls' of a chat example or a preference input."""
    if "tools" in obj:
        problem = tools_problem(obj["tools"])
        if problem:
            return problem
    if "parallel_tool_calls" in obj and type(obj["parallel_tool_calls"]) is not bool:
        return f"'parallel_tool_calls' must be true or false, got {_show(obj['parallel_tool_calls'])}"
    return None


def _messages_problem(messages: list) -> str | None:
    has_assistant = has_trained_assistant = False
    for index, message in enumerate(messages, 1):
        problem = _message_problem(message)
        if problem:
            return f"message {index}: {problem}"
        if message["role"] == "assistant":
            has_assistant = True
            if message.get("weight", 1):
                if index == 1:
                    # Nothing before it to answer: the trainer has no prompt to condition on.
                    return "message 1: a trained assistant message cannot come first; start with a user or system message"
                has_trained_assistant = True
    if not has_assistant:
        return "no assistant message"
    if not has_trained_assistant:
        return "every assistant message has weight 0, nothing to train on"
    return None


def _message_problem(message) -> str | None:
    if type(message) is not dict:
        return f"must be an object, got {json_type(message)}"
    role = message.get("role", _MISSING)
    if role is _MISSING:
        return "missing 'role'"
    if type(role) is not str:
        return f"'role' must be a string, got {json_type(role)}"
    if role not in _ROLES:
        return f"unknown role {_quote(role)} (expected {_ROLE_NAMES})"
    if not _MESSAGE_KEYS.issuperset(message):
        return _unknown_key(message, _MESSAGE_KEYS)
    has_tool_calls = "tool_calls" in message
    if has_tool_calls:
        if role != "assistant":
            return "'tool_calls' is only allowed on assistant messages"
        problem = tool_calls_problem(message["tool_calls"])
        if problem:
            return problem
    # An assistant message that calls tools needs no text.
    problem = _content_problem(message.get("content", _MISSING), optional=has_tool_calls)
    if problem:
        return problem
    if len(message) > 2:  # role and content are the common case; check the rarer keys
        return _optional_message_keys_problem(message, role)
    return None


def _content_problem(content, optional: bool) -> str | None:
    if type(content) is str:
        return None if content or optional else "empty 'content'"
    if content is _MISSING:
        return None if optional else "missing 'content'"
    if content is None and optional:
        return None
    if type(content) is list:
        return "'content' as a list of parts is not supported; use a string"
    return f"'content' must be a string, got {json_type(content)}"


def _optional_message_keys_problem(message: dict, role: str) -> str | None:
    if "name" in message and type(message["name"]) is not str:
        return f"'name' must be a string, got {json_type(message['name'])}"
    if "tool_call_id" in message:
        if role != "tool":
            return "'tool_call_id' is only allowed on tool messages"
        if type(message["tool_call_id"]) is not str:
            return f"'tool_call_id' must be a string, got {json_type(message['tool_call_id'])}"
    if "weight" in message:
        if role != "assistant":
            return "'weight' is only allowed on assistant messages"
        weight = message["weight"]
        if type(weight) is not int or weight not in (0, 1):  # type() check rejects true/false
            return f"'weight' must be 0 or 1, got {_show(weight)}"
    return None


def tool_calls_problem(tool_calls) -> str | None:
    if type(tool_calls) is not list or not tool_calls:
        return "'tool_calls' must be a non-empty list"
    for index, call in enumerate(tool_calls, 1):
        problem = _tool_call_problem(call)
        if problem:
            return f"tool call {index}: {problem}"
    return None


def _tool_call_problem(call) -> str | None:
    if type(call) is not dict:
        return f"must be an object, got {json_type(call)}"
    problem = _string_problem(call, "id")
    if problem:
        return problem
    if call.get("type") != "function":
        return "'type' must be \"function\""
    function = call.get("function")
    if type(function) is not dict:
        return "'function' must be an object"
    return (_string_problem(function, "name", "function.name")
            or _string_problem(function, "arguments", "function.arguments"))


def tools_problem(tools) -> str | None:
    if type(tools) is not list:
        return f"'tools' must be a list, got {json_type(tools)}"
    for index, tool in enumerate(tools, 1):
        problem = _tool_problem(tool)
        if problem:
            return f"tool {index} in 'tools': {problem}"
    return None


def _tool_problem(tool) -> str | None:
    if type(tool) is not dict:
        return f"must be an object, got {json_type(tool)}"
    if tool.get("type") != "function":
        return "'type' must be \"function\""
    function = tool.get("function")
    if type(function) is not dict:
        return "'function' must be an object"
    problem = _string_problem(function, "name", "function.name")
    if problem:
        return problem
    if "description" in function and type(function["description"]) is not str:
        return "'function.description' must be a string"
    if "parameters" in function and type(function["parameters"]) is not dict:
        return "'function.parameters' must be an object"
    return None


# --------------------------------------------------------------------------
# The other fine-tune formats: text, prompt/completion, preference pairs


def text_problem(example: dict) -> str | None:
    """The first problem with one ``{"text": ...}`` line, or None."""
    if not _TEXT_KEYS.issuperset(example):
        return _unknown_key(example, _TEXT_KEYS)
    problem = _string_problem(example, "text")
    if problem:
        return problem
    if not example["text"].strip():
        return "empty 'text'"
    return _split_problem(example)


def prompt_completion_problem(example: dict) -> str | None:
    """The first problem with one ``{"prompt": ..., "completion": ...}`` line,
    or None. The prompt may be empty (the completion is then trained as it
    stands); the completion may not, it is all that is trained."""
    if not _PROMPT_COMPLETION_KEYS.issuperset(example):
        return _unknown_key(example, _PROMPT_COMPLETION_KEYS)
    problem = _string_problem(example, "prompt") or _string_problem(example, "completion")
    if problem:
        return problem
    if not example["completion"].strip():
        return "empty 'completion': it is what the model is trained on"
    return _split_problem(example)


def preference_problem(example: dict) -> str | None:
    """The first problem with one OpenAI preference line (``input``,
    ``preferred_output``, ``non_preferred_output``), or None."""
    if not _PREFERENCE_KEY_SET.issuperset(example):
        return _unknown_key(example, _PREFERENCE_KEY_SET)
    for key in _PREFERENCE_KEYS:
        if key not in example:
            return f"missing '{key}'"
    problem = _split_problem(example) or _preference_input_problem(example["input"])
    if problem:
        return problem
    for key in _PREFERENCE_KEYS[1:]:
        problem = _preference_output_problem(example[key])
        if problem:
            return f"'{key}': {problem}"
    if example["preferred_output"] == example["non_preferred_output"]:
        return "'preferred_output' and 'non_preferred_output' are identical; a pair needs two different answers"
    return None


def _preference_input_problem(value) -> str | None:
    if type(value) is not dict:
        return f"'input' must be an object, got {json_type(value)}"
    if not _PREFERENCE_INPUT_KEYS.issuperset(value):
        return f"'input': {_unknown_key(value, _PREFERENCE_INPUT_KEYS)}"
    messages = value.get("messages", _MISSING)
    if messages is _MISSING:
        return "missing 'input.messages'"
    if type(messages) is not list or not messages:
        return "'input.messages' must be a non-empty list"
    problem = _tools_keys_problem(value)
    if problem:
        return f"input: {problem}"
    for index, message in enumerate(messages, 1):
        problem = _message_problem(message)
        if problem is None and "weight" in message:
            problem = "'weight' is not used in preference files"
        if problem:
            return f"input message {index}: {problem}"
    if messages[-1]["role"] == "assistant":
        return ("input message {0}: the last input message is from the assistant; the outputs are "
                "the answer to the input, so it must end with a user, system or tool message").format(len(messages))
    return None


def _preference_output_problem(output) -> str | None:
    if type(output) is not list:
        return f"must be a list holding one assistant message, got {json_type(output)}"
    if len(output) != 1:
        return f"must hold exactly one assistant message, got {plural(len(output), 'message')}"
    message = output[0]
    problem = _message_problem(message)
    if problem is None and message["role"] != "assistant":
        problem = f"role must be 'assistant', got {_quote(message['role'])}"
    if problem is None and "weight" in message:
        problem = "'weight' is not used in preference files"
    return f"message 1: {problem}" if problem else None


# --------------------------------------------------------------------------
# Batch line rules (OpenAI Batch API, chat completions)


def batch_request_problem(line_no: int, request: dict,
                          first_line_by_custom_id: dict[str, int]) -> str | None:
    """The first problem with one batch request, or None if it is valid.
    ``first_line_by_custom_id`` holds the file's custom_ids so far; this line's is added."""
    if not _BATCH_KEY_SET.issuperset(request):
        return _unknown_key(request, _BATCH_KEY_SET)
    for key in _BATCH_KEYS:
        if key not in request:
            return f"missing '{key}'"
    problem = _custom_id_problem(line_no, request["custom_id"], first_line_by_custom_id)
    if problem:
        return problem
    if request["method"] != _BATCH_METHOD:
        return f"'method' must be \"{_BATCH_METHOD}\", got {_show(request['method'])}"
    if request["url"] != _BATCH_URL:
        return f"'url' must be \"{_BATCH_URL}\", got {_show(request['url'])}"
    return batch_body_problem(request["body"])


def _custom_id_problem(line_no: int, custom_id, first_line_by_custom_id: dict[str, int]) -> str | None:
    if type(custom_id) is not str or not custom_id:
        return "'custom_id' must be a non-empty string"
    # Claimed even if the rest of the line is bad: a later repeat is still a repeat.
    first_line = first_line_by_custom_id.setdefault(custom_id, line_no)
    if first_line != line_no:
        return f"custom_id {_quote(custom_id)} repeats line {first_line}"
    return None


def batch_body_problem(body) -> str | None:
    if type(body) is not dict:
        return f"'body' must be an object, got {json_type(body)}"
    problem = _string_problem(body, "model", "body.model")
    if problem:
        return problem
    if not body["model"]:
        return "'body.model' must not be empty"
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        return "'body.messages' must be a non-empty list"
    for index, message in enumerate(messages, 1):
        problem = _batch_message_problem(message)
        if problem:
            return f"body message {index}: {problem}"
    return None


def _batch_message_problem(message) -> str | None:
    if type(message) is not dict:
        return f"must be an object, got {json_type(message)}"
    problem = _string_problem(message, "role")
    if problem:
        return problem
    if message["role"] not in _ROLES:
        return f"unknown role {_quote(message['role'])} (expected {_ROLE_NAMES})"
    return _string_problem(message, "content")
