"""The fast path: typed decoders (msgspec) that parse and check a line in C.

Each line is first offered to a typed decoder built from the line rules
(rules.py): it parses the JSON and checks keys, types, roles and the allowed
values in one C pass, far faster than ``json.loads`` plus the Python rules.
The few rules a type cannot say (an assistant message needs content unless it
calls tools; the first trained assistant message; the tool definitions) are
checked here on the decoded objects.

Text and prompt/completion lines (formats.py) have typed decoders too, used
once a file's format is known to be theirs; preference lines always go
through the Python rules.

The fast path only ever says "valid" or "ask the Python rules": a line it
does not accept goes to ``lines.parse_object`` and ``rules`` as before, which
give the verdict and today's exact error message. So it must never accept a
line the Python rules reject (tests/domain/files/validation/test_fast_path.py
checks that on many generated lines), and it may decline a valid one (that
line is then only slower). Where the two parsers differ, the fast path
declines:

- strings with lone surrogate escapes (``"\\ud800"``), floats out of range
  (``1e400``), integers of 4300+ digits: msgspec refuses them, the Python
  path decides;
- duplicate keys: both keep the last value; a role given twice with two
  different values is refused by msgspec;
- unknown keys are refused everywhere the rules refuse them; where the rules
  allow them (tool calls, tool definitions, batch bodies) the object is
  decoded whole as a dict, never skipped, because msgspec does not check the
  UTF-8 of skipped strings;
- nesting: Python's parser gives up ~1000 levels deep (less the caller's
  stack), msgspec a few levels later; a line where free-form objects may
  nest (tools, tool calls, batch bodies) and that holds more than
  MAX_FAST_BRACKETS brackets is left to the Python path.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from domain.files.validation.rules import batch_body_problem, tool_calls_problem, tools_problem

# More '[' and '{' bytes than this (an upper bound on the nesting depth) in a
# line with free-form objects: the Python parser decides. Far below the depth
# at which it gives up, whatever the caller's stack.
MAX_FAST_BRACKETS = 400

# What a typed decode raises for a line it does not accept.
DECLINED = (msgspec.DecodeError, RecursionError)

_NonEmpty = Annotated[str, Meta(min_length=1)]


# --------------------------------------------------------------------------
# Fine-tune examples: a tagged union on "role", one struct per role, each
# with exactly the keys the rules allow for that role.


class SystemMessage(Struct, tag_field="role", tag="system", forbid_unknown_fields=True, gc=False):
    content: _NonEmpty
    name: str | UnsetType = UNSET


class UserMessage(Struct, tag_field="role", tag="user", forbid_unknown_fields=True, gc=False):
    content: _NonEmpty
    name: str | UnsetType = UNSET


class ToolMessage(Struct, tag_field="role", tag="tool", forbid_unknown_fields=True, gc=False):
    content: _NonEmpty
    name: str | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET


class AssistantMessage(Struct, tag_field="role", tag="assistant", forbid_unknown_fields=True, gc=False):
    # Needs non-empty content unless it calls tools: checked after decoding.
    content: str | None | UnsetType = UNSET
    name: str | UnsetType = UNSET
    weight: Literal[0, 1] = 1  # a JSON integer: true, false and 1.0 are refused
    # Tool calls allow keys the rules do not name: decoded whole, checked by the rules.
    tool_calls: Annotated[list[dict], Meta(min_length=1)] | UnsetType = UNSET


Message = Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage]


class Example(Struct, forbid_unknown_fields=True, gc=False):
    messages: Annotated[list[Message], Meta(min_length=1)]
    tools: list[dict] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    split: Literal["TRAIN", "TEST"] | UnsetType = UNSET


_decode_example = msgspec.json.Decoder(Example).decode


def fine_tune_summary(line: bytes | None) -> tuple | None:
    """What the report counts of a valid example (the tuple that
    ``fine_tune_report.summarize`` gives for the example as a dict), or None
    when the fast path declines the line (None: a line too long to read)."""
    if line is None:
        return None
    try:
        example = _decode_example(line)
    except DECLINED:
        return None
    messages = example.messages
    first = messages[0]
    if type(first) is AssistantMessage and first.weight:
        return None  # a trained assistant message cannot come first
    characters = system = user = assistant = tool = weight_0 = 0
    system_prompt = None
    tools = example.tools
    uses_tools = free_form = bool(tools)
    for message in messages:
        kind = type(message)
        if kind is UserMessage:
            user += 1
            characters += len(message.content)
        elif kind is AssistantMessage:
            assistant += 1
            content = message.content
            if message.tool_calls is UNSET:
                if not content:
                    return None  # missing, null or empty content, and no tool calls
            elif tool_calls_problem(message.tool_calls) is None:
                uses_tools = free_form = True
            else:
                return None
            if content:
                characters += len(content)
            if not message.weight:
                weight_0 += 1
        elif kind is SystemMessage:
            system += 1
            content = message.content
            characters += len(content)
            if system_prompt is None:
                system_prompt = content
        else:
            tool += 1
            characters += len(message.content)
    if weight_0 == assistant:
        return None  # no assistant message, or none trained
    if free_form and (line.count(b"[") + line.count(b"{") > MAX_FAST_BRACKETS
                      or (tools and tools_problem(tools) is not None)):
        return None
    count = len(messages)
    tokens = -(-characters // 4) + 4 * count  # fine_tune_report.estimate_tokens, inlined
    return (count, characters, tokens, system, user, assistant, tool, weight_0, system_prompt,
            uses_tools, type(messages[-1]) is AssistantMessage, example.split or None)


# --------------------------------------------------------------------------
# Text and prompt/completion lines (rules.text_problem,
# rules.prompt_completion_problem); the tuples are format_reports.summarize_*'s.


class TextExample(Struct, forbid_unknown_fields=True, gc=False):
    text: _NonEmpty
    split: Literal["TRAIN", "TEST"] | UnsetType = UNSET


class PromptCompletionExample(Struct, forbid_unknown_fields=True, gc=False):
    prompt: str
    completion: _NonEmpty
    split: Literal["TRAIN", "TEST"] | UnsetType = UNSET


_decode_text = msgspec.json.Decoder(TextExample).decode
_decode_prompt_completion = msgspec.json.Decoder(PromptCompletionExample).decode


def _decoded(decode, line: bytes | None):
    """The typed object of a line, or None when the decoder declines it."""
    if line is None:
        return None
    try:
        return decode(line)
    except DECLINED:
        return None


def text_summary(line: bytes | None) -> tuple | None:
    """``format_reports.summarize_text`` of a valid text line, or None (declined)."""
    example = _decoded(_decode_text, line)
    if example is None:
        return None
    text = example.text
    if text.isspace():
        return None
    characters = len(text)
    return characters, -(-characters // 4) + 1, example.split or None


def prompt_completion_summary(line: bytes | None) -> tuple | None:
    """``format_reports.summarize_prompt_completion`` of a valid line, or None (declined)."""
    example = _decoded(_decode_prompt_completion, line)
    if example is None:
        return None
    completion = example.completion
    if completion.isspace():
        return None
    prompt, completion = len(example.prompt), len(completion)
    prompt_tokens, completion_tokens = -(-prompt // 4), -(-completion // 4) + 1
    return (prompt + completion, prompt_tokens + completion_tokens, example.split or None,
            prompt_tokens, completion_tokens)


# --------------------------------------------------------------------------
# Batch requests


class BatchRequest(Struct, forbid_unknown_fields=True, gc=False):
    custom_id: _NonEmpty
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: dict  # free-form (model, messages and any request parameter): decoded whole


_decode_request = msgspec.json.Decoder(BatchRequest).decode


def batch_request(line: bytes | None) -> tuple[str, str] | None:
    """(custom_id, model) of a valid batch request, or None when the fast
    path declines the line. Whether the custom_id repeats an earlier line is
    the caller's to check."""
    if line is None:
        return None
    try:
        request = _decode_request(line)
    except DECLINED:
        return None
    if (line.count(b"[") + line.count(b"{") > MAX_FAST_BRACKETS
            or batch_body_problem(request.body) is not None):
        return None
    return request.custom_id, request.body["model"]
