"""The rules of one line: one bad line among good ones, exact line and reason."""

import pytest

from domain.files.validation.result import LineError
from tests.domain.files.helpers import (
    ASSISTANT, TOOL_CALL, TOOL_DEF, USER, chat, good_examples, jsonl, message, only_error, request,
    validate, with_messages,
)


# ---------------------------------------------------------------------------
# Fine-tune line rules


BAD_FINE_TUNE_LINES = [
    # encoding and JSON
    (b'{"messages": "\xff\xfe"}', "not valid UTF-8"),
    (b'{"a": 1 "b": 2}', "invalid JSON: Expecting ',' delimiter at column 9"),
    (b'{"messages": [', "invalid JSON: Expecting value at column 15"),
    (b'{"messages": NaN}', "invalid JSON: NaN is not allowed"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'"text"', "expected a JSON object, got string"),
    (b"null", "expected a JSON object, got null"),
    # top level
    (chat(foo=1), "unknown key 'foo'"),
    ({"split": "TRAIN"}, "missing 'messages'"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": "hi"}, "'messages' must be a non-empty list"),
    (chat(split="train"), "'split' must be \"TRAIN\" or \"TEST\", got \"train\""),
    (chat(split=None), "'split' must be \"TRAIN\" or \"TEST\", got null"),
    (chat(tools={"a": 1}), "'tools' must be a list, got object"),
    (chat(tools=[{"type": "retrieval"}]), "tool 1 in 'tools': 'type' must be \"function\""),
    (chat(tools=[TOOL_DEF, {"type": "function"}]), "tool 2 in 'tools': 'function' must be an object"),
    (chat(tools=[{"type": "function", "function": {"description": "x"}}]),
     "tool 1 in 'tools': missing 'function.name'"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "description": 3}}]),
     "'function.description' must be a string"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
     "'function.parameters' must be an object"),
    (chat(parallel_tool_calls="yes"), "'parallel_tool_calls' must be true or false, got \"yes\""),
    # messages
    (with_messages("hi", ASSISTANT), "message 1: must be an object, got string"),
    (with_messages(USER, {"content": "x"}), "message 2: missing 'role'"),
    (with_messages(USER, {"role": "bot", "content": "x"}),
     "message 2: unknown role 'bot' (expected system, user, assistant or tool)"),
    (with_messages({"role": 5, "content": "x"}, ASSISTANT), "message 1: 'role' must be a string, got number"),
    (with_messages(USER, ASSISTANT, message(foo=1)), "message 3: unknown key 'foo'"),
    (with_messages({"role": "user"}, ASSISTANT), "message 1: missing 'content'"),
    (with_messages(USER, {"role": "assistant", "content": 42}),
     "message 2: 'content' must be a string, got number"),
    (with_messages({"role": "user", "content": None}, ASSISTANT),
     "message 1: 'content' must be a string, got null"),
    (with_messages(USER, {"role": "assistant", "content": ""}), "message 2: empty 'content'"),
    (with_messages({"role": "user", "content": [{"type": "text", "text": "hi"}]}, ASSISTANT),
     "message 1: 'content' as a list of parts is not supported"),
    (with_messages(USER, {"role": "assistant", "content": None}),
     "message 2: 'content' must be a string, got null"),
    (with_messages(message(name=7), ASSISTANT), "message 1: 'name' must be a string, got number"),
    (with_messages(message(tool_call_id="call_1"), ASSISTANT),
     "message 1: 'tool_call_id' is only allowed on tool messages"),
    (with_messages(USER, {"role": "assistant", "tool_calls": [TOOL_CALL]},
                   {"role": "tool", "content": "sunny", "tool_call_id": 1}, ASSISTANT),
     "message 3: 'tool_call_id' must be a string, got number"),
    (with_messages(USER, {"role": "assistant", "tool_calls": [TOOL_CALL]},
                   {"role": "tool", "tool_call_id": "call_1"}, ASSISTANT),
     "message 3: missing 'content'"),
    (with_messages(message(tool_calls=[TOOL_CALL]), ASSISTANT),
     "message 1: 'tool_calls' is only allowed on assistant messages"),
    (with_messages(USER, {"role": "assistant", "tool_calls": []}),
     "message 2: 'tool_calls' must be a non-empty list"),
    (with_messages(USER, {"role": "assistant", "tool_calls": [{**TOOL_CALL, "id": None}]}),
     "message 2: tool call 1: 'id' must be a string, got null"),
    (with_messages(USER, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": TOOL_CALL["function"]}]}),
     "message 2: tool call 1: missing 'id'"),
    (with_messages(USER, {"role": "assistant", "tool_calls": [TOOL_CALL, {**TOOL_CALL, "type": "func"}]}),
     "message 2: tool call 2: 'type' must be \"function\""),
    (with_messages(USER, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}),
     "message 2: tool call 1: 'function' must be an object"),
    (with_messages(USER, {"role": "assistant", "tool_calls": [
        {**TOOL_CALL, "function": {"arguments": "{}"}}]}),
     "message 2: tool call 1: missing 'function.name'"),
    (with_messages(USER, {"role": "assistant", "tool_calls": [
        {**TOOL_CALL, "function": {"name": "f", "arguments": {"city": "Paris"}}}]}),
     "message 2: tool call 1: 'function.arguments' must be a string, got object"),
    (with_messages(message(weight=1), ASSISTANT),
     "message 1: 'weight' is only allowed on assistant messages"),
    (with_messages(USER, {**ASSISTANT, "weight": 0.5}), "message 2: 'weight' must be 0 or 1, got 0.5"),
    (with_messages(USER, {**ASSISTANT, "weight": True}), "message 2: 'weight' must be 0 or 1, got true"),
    (with_messages(USER, {**ASSISTANT, "weight": False}), "message 2: 'weight' must be 0 or 1, got false"),
    (with_messages(USER, {**ASSISTANT, "weight": 2}), "message 2: 'weight' must be 0 or 1, got 2"),
    # whole example
    (with_messages(USER, {"role": "system", "content": "s"}), "no assistant message"),
    (with_messages(USER, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 0}),
     "every assistant message has weight 0, nothing to train on"),
]


@pytest.mark.parametrize("bad_line, reason", BAD_FINE_TUNE_LINES,
                         ids=[reason[:50] for _, reason in BAD_FINE_TUNE_LINES])
def test_bad_fine_tune_line_is_reported_with_line_and_reason(bad_line, reason):
    items = good_examples(12)
    items.insert(2, bad_line)  # physical line 3
    error = only_error(validate(jsonl(items)))
    assert error.line == 3
    assert reason in error.reason


def test_only_the_first_problem_of_a_line_is_reported():
    bad = with_messages({"role": "bot", "content": ""}, {"role": "user"}, bogus=1)
    error = only_error(validate(jsonl([*good_examples(10), bad])))
    assert error == LineError(11, "unknown key 'bogus'")


def test_long_keys_and_values_are_shortened_in_reasons():
    reason = only_error(validate(jsonl([*good_examples(10), chat(**{"k" * 500: 1})]))).reason
    assert reason.startswith("unknown key 'kkkk")
    assert len(reason) < 100


def test_a_trained_assistant_message_cannot_open_the_conversation():
    examples = good_examples(12)
    examples[2] = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}]}
    error = only_error(validate(jsonl(examples)))
    assert (error.line, error.reason) == (
        3, "message 1: a trained assistant message cannot come first; start with a user or system message"
    )
    examples[2] = {"messages": [
        {"role": "assistant", "content": "hi", "weight": 0},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]}
    assert validate(jsonl(examples)).ok


# ---------------------------------------------------------------------------
# Fine-tune good edge cases


def test_unicode_content_is_valid_and_counted_in_characters():
    items = [chat(f"你好 {i}", "👍🏽 ok") for i in range(10)]
    result = validate(jsonl(items))
    assert result.ok, result.message()
    # "你好 0" is 4 characters, "👍🏽 ok" is 5 (two code points for the emoji)
    assert result.report["characters"] == {"min": 9, "mean": 9.0, "max": 9, "p95": 9}


def test_weight_0_on_some_assistant_messages_is_valid():
    example = with_messages(USER, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 1})
    result = validate(jsonl([example, *good_examples(10)]))
    assert result.ok, result.message()
    assert result.report["assistant_messages_weight_0"] == 1
    assert any("weight 0" in w for w in result.report["warnings"])


def test_tools_and_tool_calls_are_valid():
    example = with_messages(
        {"role": "system", "content": "You can call tools.", "name": "sys"},
        USER,
        {"role": "assistant", "tool_calls": [TOOL_CALL]},  # no content at all
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},  # content null
        {"role": "tool", "content": "still sunny"},  # tool_call_id is optional
        {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},  # empty content
        {"role": "tool", "content": "sunny again", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is sunny.", "weight": 1},
        tools=[TOOL_DEF, {"type": "function", "function": {"name": "bare"}}],
        parallel_tool_calls=False,
    )
    result = validate(jsonl([example, *good_examples(10)]))
    assert result.ok, result.message()
    assert result.report["examples_with_tools"] == 1
    assert result.report["roles"] == {"system": 1, "user": 11, "assistant": 14, "tool": 3}


def test_empty_tools_list_is_valid_but_does_not_count_as_tools():
    result = validate(jsonl([chat(tools=[]), *good_examples(10)]))
    assert result.ok and result.report["examples_with_tools"] == 0


# ---------------------------------------------------------------------------
# Batch line rules


def test_duplicate_custom_id_names_both_lines():
    items = [request("a"), request("b"), request("a"), request("c")]
    error = only_error(validate(jsonl(items), purpose="batch"))
    assert error == LineError(3, "custom_id 'a' repeats line 1")


BAD_BATCH_LINES = [
    (request(method="GET"), "'method' must be \"POST\", got \"GET\""),
    (request(url="/v1/embeddings"), "'url' must be \"/v1/chat/completions\", got \"/v1/embeddings\""),
    (request(body={"messages": [USER]}), "missing 'body.model'"),
    (request(body={"model": 4, "messages": [USER]}), "'body.model' must be a string, got number"),
    (request(body={"model": "", "messages": [USER]}), "'body.model' must not be empty"),
    (request(body="hi"), "'body' must be an object, got string"),
    (request(body={"model": "m", "messages": []}), "'body.messages' must be a non-empty list"),
    (request(body={"model": "m"}), "'body.messages' must be a non-empty list"),
    (request(body={"model": "m", "messages": [{"role": "bot", "content": "x"}]}),
     "body message 1: unknown role 'bot'"),
    (request(body={"model": "m", "messages": [USER, {"role": "user", "content": 1}]}),
     "body message 2: 'content' must be a string, got number"),
    (request(body={"model": "m", "messages": [{"content": "x"}]}), "body message 1: missing 'role'"),
    (request(body={"model": "m", "messages": ["x"]}), "body message 1: must be an object, got string"),
    (request(extra=1), "unknown key 'extra'"),
    ({k: v for k, v in request().items() if k != "custom_id"}, "missing 'custom_id'"),
    ({k: v for k, v in request().items() if k != "body"}, "missing 'body'"),
    (request(custom_id=""), "'custom_id' must be a non-empty string"),
    (request(custom_id=7), "'custom_id' must be a non-empty string"),
    (b"[]", "expected a JSON object, got list"),
]


@pytest.mark.parametrize("bad_line, reason", BAD_BATCH_LINES,
                         ids=[reason[:50] for _, reason in BAD_BATCH_LINES])
def test_bad_batch_line(bad_line, reason):
    items = [request("first"), bad_line, request("last")]
    result = validate(jsonl(items), purpose="batch")
    error = only_error(result)
    assert error.line == 2
    assert reason in error.reason
    assert result.message().startswith("The file is not a valid batch file: 1 invalid line.")


def test_custom_id_of_a_bad_line_still_counts_as_used():
    items = [request("a", method="GET"), request("a")]
    result = validate(jsonl(items), purpose="batch")
    assert [e.line for e in result.errors] == [1, 2]
    assert result.errors[1].reason == "custom_id 'a' repeats line 1"
