import json
import random

import pytest

from domain.files import validation
from domain.files.validation import (
    DEFAULT_SPLIT_SEED,
    MAX_LINE_BYTES,
    MAX_REPORTED_ERRORS,
    MIN_EXAMPLES,
    TEST_FRACTION,
    BatchValidator,
    FineTuneValidator,
    LineError,
    TestDraw,
    ValidationResult,
    split_lines,
    validator_for,
)

# ---------------------------------------------------------------------------
# Helpers


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


# ---------------------------------------------------------------------------
# Fine-tune line rules: one bad line among good ones, exact line and reason


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


def test_every_bad_line_is_reported_in_order_and_validation_continues():
    items = good_examples(12)
    items[1] = b"not json"
    items[4] = {"messages": []}
    items[10] = with_messages(USER)
    result = validate(jsonl(items))
    assert not result.ok
    assert [e.line for e in result.errors] == [2, 5, 11]
    assert result.error_count == 3
    assert result.message().splitlines()[0] == "The file is not a valid fine-tune file: 3 invalid lines."
    assert result.message().splitlines()[3] == "line 11: no assistant message"


def test_line_numbers_count_blank_lines():
    items = good_examples(12)
    data = jsonl(items[:3]) + b"\n   \n\t\n" + b"oops\n" + jsonl(items[3:])
    assert only_error(validate(data)).line == 7


def test_long_keys_and_values_are_shortened_in_reasons():
    reason = only_error(validate(jsonl([*good_examples(10), chat(**{"k" * 500: 1})]))).reason
    assert reason.startswith("unknown key 'kkkk")
    assert len(reason) < 100


def test_bom_on_a_later_line_is_not_tolerated():
    data = jsonl(good_examples(10)) + b"\xef\xbb\xbf" + jsonl([chat()])
    error = only_error(validate(data))
    assert error.line == 11 and "invalid JSON" in error.reason


def test_deeply_nested_json_is_an_error_not_a_crash():
    data = jsonl(good_examples(10)) + b"[" * 100_000 + b"\n"
    error = only_error(validate(data))
    assert error.line == 11 and error.reason.startswith("invalid JSON")


# ---------------------------------------------------------------------------
# Fine-tune good edge cases


def test_unicode_content_is_valid_and_counted_in_characters():
    items = [chat(f"你好 {i}", "👍🏽 ok") for i in range(10)]
    result = validate(jsonl(items))
    assert result.ok, result.message()
    # "你好 0" is 4 characters, "👍🏽 ok" is 5 (two code points for the emoji)
    assert result.report["characters"] == {"min": 9, "mean": 9.0, "max": 9, "p95": 9}


def test_crlf_file_gives_the_same_report_as_lf():
    items = good_examples(15)
    lf = validate(jsonl(items))
    crlf = validate(jsonl(items, newline=b"\r\n"))
    assert crlf.ok and crlf == lf


def test_bom_blank_lines_and_missing_trailing_newline_are_tolerated():
    items = good_examples(12)
    data = b"\xef\xbb\xbf" + jsonl(items[:5]) + b"\n \r\n" + jsonl(items[5:], trailing=False)
    result = validate(data)
    assert result.ok, result.message()
    assert result.report["lines"] == 14
    assert result.report["blank_lines"] == 2
    assert result.report["examples"] == 12
    # The BOM and terminators are not part of the line bytes, so the split is unchanged.
    assert result.report["split"] == validate(jsonl(items)).report["split"]


def test_bom_line_alone_counts_as_blank():
    result = validate(b"\xef\xbb\xbf\n" + jsonl(good_examples(10)))
    assert result.ok and result.report["blank_lines"] == 1 and result.report["lines"] == 11


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
# Chunk boundaries


def mixed_file(valid: bool) -> bytes:
    items = [chat(f"émoji 😀 {i}", f"回答 {i} 🎉") for i in range(14)]
    items[3] = {**items[3], "split": "TEST"}
    if not valid:
        items[5] = b'{"messages": [}'
        items[9] = with_messages({"role": "user", "content": "ß"})
        items.append(b"\xc3\x28")  # invalid UTF-8
    return b"\xef\xbb\xbf" + jsonl(items[:7], newline=b"\r\n") + b"\r\n\n" + jsonl(items[7:], trailing=False)


@pytest.mark.parametrize("valid", [True, False])
def test_chunk_size_does_not_change_the_result(valid):
    data = mixed_file(valid)
    whole = validate(data)
    assert whole.ok is valid
    assert validate(data, chunk_size=1) == whole
    assert validate(data, chunk_size=7) == whole
    assert validate(data, chunk_size=4096) == whole


def test_multibyte_character_split_across_chunks():
    data = jsonl(good_examples(9) + [chat("snow ☃ man")])
    cut = data.index("☃".encode()) + 1  # inside the 3-byte character
    validator = FineTuneValidator()
    validator.feed(data[:cut])
    validator.feed(data[cut:])
    assert validator.finish() == validate(data)


def test_crlf_and_bom_split_across_chunks():
    data = b"\xef\xbb\xbf" + jsonl(good_examples(10), newline=b"\r\n")
    cuts = [1, 2, data.index(b"\r\n") + 1, len(data) - 1]
    validator = FineTuneValidator()
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        validator.feed(data[start:end])
    result = validator.finish()
    assert result.ok and result == validate(jsonl(good_examples(10)))


def test_bytearray_and_memoryview_chunks_are_accepted():
    data = jsonl(good_examples(10))
    validator = FineTuneValidator()
    validator.feed(bytearray(data[:100]))
    validator.feed(memoryview(data)[100:])
    assert validator.finish() == validate(data)


def test_finish_is_idempotent_and_feed_after_finish_fails():
    validator = FineTuneValidator()
    validator.feed(jsonl(good_examples(10)))
    first = validator.finish()
    assert validator.finish() is first
    with pytest.raises(RuntimeError):
        validator.feed(b"{}")


# ---------------------------------------------------------------------------
# Error cap and messages


def test_errors_are_capped_but_counted():
    items = good_examples(10) + [b"oops"] * 25
    result = validate(jsonl(items))
    assert result.error_count == 25
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert [e.line for e in result.errors] == list(range(11, 31))
    text = result.message().splitlines()
    assert text[0] == "The file is not a valid fine-tune file: 25 invalid lines."
    assert text[1] == "line 11: invalid JSON: Expecting value at column 1"
    assert len(text) == 1 + MAX_REPORTED_ERRORS + 1
    assert text[-1] == "... and 5 more"


def test_single_invalid_line_message():
    result = validate(jsonl([*good_examples(10), b"[]"]))
    assert result.message() == ("The file is not a valid fine-tune file: 1 invalid line.\n"
                                "line 11: expected a JSON object, got list")


@pytest.mark.parametrize("data", [b"", b"\n", b"  \r\n\n\t", b"\xef\xbb\xbf"])
def test_empty_file(data):
    result = validate(data)
    assert only_error(result) == LineError(0, "the file is empty")
    assert result.message() == ("The file is not a valid fine-tune file: 1 problem with the whole file.\n"
                                "the file is empty")


def test_too_few_examples():
    result = validate(jsonl(good_examples(MIN_EXAMPLES - 1)))
    assert only_error(result) == LineError(0, "the file has 9 examples; at least 10 are needed")
    assert "line 0" not in result.message()


def test_one_example_is_singular():
    assert only_error(validate(jsonl([chat()]))).reason == "the file has 1 example; at least 10 are needed"


def test_too_few_examples_is_not_reported_when_lines_are_bad():
    result = validate(jsonl([chat(), b"oops"]))
    assert result.errors == [LineError(2, "invalid JSON: Expecting value at column 1")]
    assert result.error_count == 1


def test_valid_message_has_summary_and_warnings():
    result = validate(jsonl(good_examples(10)))
    lines = result.message().splitlines()
    assert lines[0] == "The file is a valid fine-tune file: 10 examples (9 train, 1 test)."
    assert lines[1].startswith("warning: no example has a system prompt")


# ---------------------------------------------------------------------------
# Over-long lines


def long_line_file_in_chunks(validator, line_bytes: int, chunk: int = 1024 * 1024) -> list[int]:
    """Feeds: 1 good line, a `line_bytes` long line in chunks, then more lines.
    Returns the buffered size seen after every feed."""
    buffered = []
    validator.feed(jsonl([chat("first")]))
    head = b'{"messages": "'
    validator.feed(head)
    remaining = line_bytes - len(head)
    while remaining > 0:
        size = min(chunk, remaining)
        validator.feed(b"x" * size)
        remaining -= size
        buffered.append(validator.buffered_bytes)
    validator.feed(b"\n" + jsonl([*good_examples(10), b"bad"]))
    buffered.append(validator.buffered_bytes)
    return buffered


def test_over_long_line_streamed_is_an_error_and_not_kept_in_memory():
    validator = FineTuneValidator()
    buffered = long_line_file_in_chunks(validator, MAX_LINE_BYTES + 1024 * 1024)
    assert max(buffered) <= MAX_LINE_BYTES
    assert buffered[-2] == 0  # dropped once the limit was passed, before the newline came
    result = validator.finish()
    assert result.errors == [LineError(2, "line is longer than 8 MiB"),
                             LineError(13, "invalid JSON: Expecting value at column 1")]


def test_line_of_exactly_the_limit_is_parsed_and_one_more_byte_is_too_long():
    # At the limit the line is read (and is a bad example); one byte more is an over-long line.
    at_limit = FineTuneValidator()
    long_line_file_in_chunks(at_limit, MAX_LINE_BYTES, chunk=3 * 1024 * 1024)
    error = at_limit.finish().errors[0]
    assert error.line == 2 and "longer than" not in error.reason

    over = FineTuneValidator()
    long_line_file_in_chunks(over, MAX_LINE_BYTES + 1, chunk=3 * 1024 * 1024)
    assert over.finish().errors[0] == LineError(2, "line is longer than 8 MiB")


def test_over_long_line_inside_one_chunk():
    data = jsonl([chat()]) + b"x" * (MAX_LINE_BYTES + 1) + b"\n" + jsonl(good_examples(10))
    result = validate(data)
    assert only_error(result) == LineError(2, "line is longer than 8 MiB")


def test_over_long_last_line_without_newline():
    validator = FineTuneValidator()
    validator.feed(jsonl(good_examples(10)))
    validator.feed(b"x" * (MAX_LINE_BYTES // 2))
    validator.feed(b"x" * (MAX_LINE_BYTES // 2 + 1))
    assert validator.buffered_bytes == 0
    result = validator.finish()
    assert only_error(result) == LineError(11, "line is longer than 8 MiB")


# ---------------------------------------------------------------------------
# The TEST split


def test_test_size():
    assert TEST_FRACTION == 0.1
    assert [TestDraw.test_size(n) for n in (0, 1, 2, 10, 14, 15, 100)] == [0, 0, 1, 1, 1, 2, 10]


@pytest.mark.parametrize("count, expected", [(1, 0), (10, 1), (100, 10)])
def test_test_draw_picks_k_lines(count, expected):
    draw = TestDraw()
    for line_no, item in enumerate(good_examples(count), 1):
        draw.add(line_no, to_line(item))
    assert len(draw.test_lines()) == expected


def drawn_test_contents(items, seed=DEFAULT_SPLIT_SEED) -> set[bytes]:
    data = jsonl(items)
    return {to_line(example) for _, example, split in split_lines([data], seed) if split == "TEST"}


def test_split_does_not_depend_on_line_order():
    items = good_examples(100)
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != items
    original = drawn_test_contents(items)
    assert len(original) == 10
    assert drawn_test_contents(shuffled) == original
    # The same holds for TestDraw on its own.
    draws = []
    for order in (items, shuffled):
        draw = TestDraw(seed=3)
        lines = {n: to_line(item) for n, item in enumerate(order, 1)}
        for n, line in lines.items():
            draw.add(n, line)
        draws.append({lines[n] for n in draw.test_lines()})
    assert draws[0] == draws[1]


def test_split_depends_on_the_seed():
    items = good_examples(100)
    assert drawn_test_contents(items, seed=0) == drawn_test_contents(items, seed=0)
    assert drawn_test_contents(items, seed=0) != drawn_test_contents(items, seed=1)
    assert validate(jsonl(items), seed=5).report["split"]["seed"] == 5


def test_identical_lines_tie_break_by_line_number():
    draw = TestDraw()
    for line_no in (5, 3, 9):
        draw.add(line_no, b"same")
    draw.add(1, b"other")
    assert len(draw.test_lines()) == 1


def test_explicit_splits_are_counted():
    items = good_examples(23)
    for i in range(3):
        items[i] = {**items[i], "split": "TEST"}
    for i in range(3, 5):
        items[i] = {**items[i], "split": "TRAIN"}
    split = validate(jsonl(items)).report["split"]
    assert {k: v for k, v in split.items() if k != "description"} == {
        "method": "mixed", "seed": 0, "test_fraction": 0.1,
        "explicit_train": 2, "explicit_test": 3, "drawn_train": 16, "drawn_test": 2,
        "train": 18, "test": 5,
    }
    assert split["description"] == (
        "5 lines chose their split with the 'split' key (2 train, 3 test); the other 18 were "
        "split by a seeded hash draw (seed 0, 10% to test): 16 train, 2 test.")


def test_all_explicit_splits():
    items = [{**item, "split": "TEST" if i < 4 else "TRAIN"} for i, item in enumerate(good_examples(12))]
    report = validate(jsonl(items)).report
    assert report["split"]["method"] == "explicit"
    assert (report["split"]["train"], report["split"]["test"]) == (8, 4)
    assert report["split"]["description"] == (
        "All 12 lines chose their split with the 'split' key (8 train, 4 test).")


def test_all_train_warns_that_there_is_no_test_split():
    items = [{**item, "split": "TRAIN"} for item in good_examples(11)]
    items.append(chat("left to the draw"))  # one unsplit line: too few to draw from
    report = validate(jsonl(items)).report
    assert report["split"]["test"] == 0 and report["split"]["drawn_train"] == 1
    assert any(w.startswith("no TEST examples") and '"split": "TEST"' in w for w in report["warnings"])


def test_split_lines_agrees_with_the_report_and_test_draw():
    items = good_examples(40)
    items[0] = {**items[0], "split": "TEST"}
    items[7] = {**items[7], "split": "TRAIN"}
    data = b"\xef\xbb\xbf" + jsonl(items[:20], newline=b"\r\n") + b"\n" + jsonl(items[20:])
    report = validate(data).report

    rows = list(split_lines([data[i:i + 5] for i in range(0, len(data), 5)]))
    assert [n for n, _, _ in rows] == list(range(1, 21)) + list(range(22, 42))  # file order, blank skipped
    assert [example for _, example, _ in rows] == items
    splits = [split for _, _, split in rows]
    assert splits.count("TRAIN") == report["split"]["train"]
    assert splits.count("TEST") == report["split"]["test"]
    assert rows[0][2] == "TEST" and rows[7][2] == "TRAIN"

    draw = TestDraw()
    for line_no, example, _ in rows:
        if "split" not in example:
            draw.add(line_no, to_line(example))
    drawn_test = {n for n, example, split in rows if split == "TEST" and "split" not in example}
    assert drawn_test == draw.test_lines()
    assert len(drawn_test) == report["split"]["drawn_test"] == 4


def test_split_lines_rejects_an_invalid_file():
    with pytest.raises(ValueError, match="line 2"):
        list(split_lines([jsonl([chat(), b"nope"])]))


# ---------------------------------------------------------------------------
# Report numbers on a small hand-computed file


def test_report_numbers():
    simple = [chat(f"q{i:03d}", f"answer{i:02d}") for i in range(8)]  # 4 + 8 characters each
    with_weight_0 = with_messages(
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q900"},
        {"role": "assistant", "content": "xxxxxxxx", "weight": 0},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "yyyyyyyy"},
    )
    ends_with_user = with_messages({"role": "user", "content": "abcd"},
                                   {"role": "assistant", "content": "abcdefgh"},
                                   {"role": "user", "content": "tail"})
    data = jsonl(simple) + b"\n" + jsonl([with_weight_0, simple[0], ends_with_user])
    result = validate(data)
    assert result.ok, result.message()
    report = result.report
    json.dumps(report)  # serialisable

    # Per example: messages, characters, tokens = ceil(characters / 4) + 4 * messages
    #   lines 1-8: 2, 12, 11 | line 10: 5, 32, 28 | line 11 (copy of 1): 2, 12, 11 | line 12: 3, 16, 16
    assert {k: v for k, v in report.items() if k not in ("split", "warnings")} == {
        "purpose": "fine-tune",
        "lines": 12,
        "blank_lines": 1,
        "examples": 11,
        "messages_per_example": {"min": 2, "mean": 2.36, "max": 5, "p95": 5},
        "roles": {"system": 1, "user": 13, "assistant": 12, "tool": 0},
        "assistant_messages_weight_0": 1,
        "examples_with_system_prompt": 1,
        "distinct_system_prompts": 1,
        "characters": {"min": 12, "mean": 14.18, "max": 32, "p95": 32},
        "estimated_tokens": {"min": 11, "mean": 13.0, "max": 28, "p95": 28, "total": 143,
                             "method": "characters / 4, plus 4 per message",
                             # Doubling buckets: nine examples of 11 tokens, then 16 and 28.
                             "histogram": [{"min": 0, "max": 15, "count": 9}, {"min": 16, "max": 31, "count": 2}]},
        "examples_with_tools": 0,
        "duplicates": {"count": 1, "examples": [{"line": 11, "duplicate_of": 1}]},
    }
    assert report["split"]["method"] == "hash_draw"
    assert (report["split"]["drawn_train"], report["split"]["drawn_test"]) == (10, 1)
    assert report["split"]["description"] == (
        "All 11 examples were split by a seeded hash draw (seed 0, 10% to test): 10 train, 1 test.")
    warnings = report["warnings"]
    assert len(warnings) == 3
    assert warnings[0].startswith("1 line exactly repeats an earlier line")
    assert "line 11 repeats line 1" in warnings[0]
    assert warnings[1].startswith("1 example ends with a message that is not from the assistant")
    assert warnings[2].startswith("1 example has assistant messages with weight 0")


def test_p95_is_nearest_rank():
    # 20 examples with 1..20 messages worth of user/assistant pairs: p95 is the 19th value.
    items = []
    for i in range(1, 21):
        messages = [{"role": "user", "content": f"q{i}"}] + [ASSISTANT] * i
        items.append({"messages": messages})
    stats = validate(jsonl(items)).report["messages_per_example"]
    assert stats == {"min": 2, "mean": 11.5, "max": 21, "p95": 20}


def test_long_example_warning():
    items = [chat("x" * 20_000), *good_examples(10)]
    report = validate(jsonl(items)).report
    assert report["estimated_tokens"]["max"] == 5000 + 1 + 8
    histogram = report["estimated_tokens"]["histogram"]
    assert (histogram[-1]["min"], histogram[-1]["max"], histogram[-1]["count"]) == (4096, 8191, 1)
    assert sum(bucket["count"] for bucket in histogram) == 11
    assert "1 example is longer than 4096 estimated tokens and may be truncated" in report["warnings"]


def test_duplicates_examples_are_capped_at_10():
    items = [chat("same")] * 15 + good_examples(10)
    duplicates = validate(jsonl(items)).report["duplicates"]
    assert duplicates["count"] == 14
    assert duplicates["examples"] == [{"line": n, "duplicate_of": 1} for n in range(2, 12)]


def test_shared_system_prompt_warning():
    system = {"role": "system", "content": "You are terse."}
    items = [with_messages(system, USER, {**ASSISTANT, "content": f"a{i}"}) for i in range(10)]
    report = validate(jsonl(items)).report
    assert report["examples_with_system_prompt"] == 10
    assert report["distinct_system_prompts"] == 1
    assert any(w.startswith("all examples share one system prompt") for w in report["warnings"])


def test_varied_system_prompts_give_no_system_prompt_warning():
    items = [with_messages({"role": "system", "content": f"persona {i}"}, USER, ASSISTANT)
             for i in range(10)]
    report = validate(jsonl(items)).report
    assert report["distinct_system_prompts"] == 10
    assert not any("system prompt" in w for w in report["warnings"])


def test_distinct_system_prompts_tracking_is_capped(monkeypatch):
    monkeypatch.setattr(validation, "MAX_TRACKED_SYSTEM_PROMPTS", 3)
    items = [with_messages({"role": "system", "content": f"persona {i}"}, USER, ASSISTANT)
             for i in range(10)]
    report = validate(jsonl(items)).report
    assert report["distinct_system_prompts"] == 3
    assert any("more than 3 distinct system prompts" in w for w in report["warnings"])


def test_report_and_result_are_json_serialisable():
    result = validate(mixed_file(valid=True))
    assert json.loads(json.dumps(result.report)) == result.report


# ---------------------------------------------------------------------------
# Batch files


def request(custom_id="req-1", model="gpt-4o-mini", **overrides) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "Hello"}],
                     "max_tokens": 100}, **overrides}


def test_valid_batch_file():
    items = [request("a"), request("b", model="m2"), request("c")]
    data = jsonl(items[:2], newline=b"\r\n") + b"\n" + jsonl(items[2:], trailing=False)
    result = validate(data, purpose="batch")
    assert result.ok, result.message()
    assert result.report == {
        "purpose": "batch", "lines": 4, "blank_lines": 1, "requests": 3,
        "models": {"gpt-4o-mini": 2, "m2": 1},
        "warnings": ["the requests use 2 different models; some batch services "
                     "(OpenAI's among them) accept only one model per file"],
    }
    assert result.message().startswith("The file is a valid batch file: 3 requests.")
    assert validate(data, chunk_size=3, purpose="batch") == result


def test_single_model_batch_has_no_warnings():
    report = validate(jsonl([request("x")]), purpose="batch").report
    assert report["requests"] == 1 and report["warnings"] == []


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


def test_empty_batch_file():
    assert only_error(validate(b"\n\n", purpose="batch")) == LineError(0, "the file is empty")


def test_batch_models_tracking_is_capped(monkeypatch):
    monkeypatch.setattr(validation, "MAX_TRACKED_MODELS", 2)
    items = [request(f"r{i}", model=f"m{i % 3}") for i in range(6)]
    report = validate(jsonl(items), purpose="batch").report
    assert report["models"] == {"m0": 2, "m1": 2}
    assert any("more than 2 distinct models" in w for w in report["warnings"])


# ---------------------------------------------------------------------------
# validator_for


def test_validator_for():
    assert isinstance(validator_for("fine-tune"), FineTuneValidator)
    assert validator_for("fine-tune", split_seed=9).split_seed == 9
    assert isinstance(validator_for("batch"), BatchValidator)
    with pytest.raises(ValueError, match="unknown file purpose"):
        validator_for("assistants")


def test_duplicates_are_found_across_index_growth():
    index = validation._FirstLineIndex()
    for line_no in range(1, 5001):  # several doublings of the 1024-slot table
        assert index.first_line(hash(f"line {line_no}".encode()), line_no) == line_no
    for line_no in (1, 777, 5000):
        assert index.first_line(hash(f"line {line_no}".encode()), 9000 + line_no) == line_no


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
