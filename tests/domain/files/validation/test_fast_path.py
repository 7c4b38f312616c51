"""The fast path (typed.py) against the Python rules, on many generated lines.

Property-style with fixed seeds: good lines, lines broken in their structure
(a key gone, a value of another type, an unknown key, a key given twice) and
lines broken as bytes (cut short, a stray byte, invalid UTF-8, NaN, a number
too long for Python, nesting near the parsers' limits). For each line the fast
path must either decline it or agree with the Python rules that it is valid,
with the same numbers for the report; and whole files validated with the fast
path on and off must give identical results, errors, messages and reports.
"""

from __future__ import annotations

import heapq
import json
import random
from array import array
from collections import Counter

import pytest

from domain.files.validation import fine_tune_report, lines as lines_module, validators
from domain.files.validation.fine_tune_report import FineTuneStats, FirstLineIndex, summarize
from domain.files.validation.lines import LineProblem, LineReader, parse_object
from domain.files.validation.rules import batch_request_problem, fine_tune_problem
from domain.files.validation.typed import MAX_FAST_BRACKETS, batch_request, fine_tune_summary
from tests.domain.files.helpers import validate

# --------------------------------------------------------------------------
# Generating values


TEXTS = ["hi", "", " ", "What is 2+2?", "4", "é", "ß", "你好", "😀", "👍🏽", 'a"b', "back\\slash",
         "tab\there", "new\nline", "\x00", "\x7f", "\u2028", "/"]
LONE_SURROGATES = ["\ud800", "\udc00", "\udbff"]  # valid for Python's json, refused by msgspec
WORDS = ["system", "user", "assistant", "tool", "bot", "function", "TRAIN", "TEST", "train",
         "POST", "GET", "/v1/chat/completions", "/v1/embeddings", "call_1", "m"]


def text(rng: random.Random, nonempty: bool = True) -> str:
    value = "".join(rng.choice(TEXTS) for _ in range(rng.randint(0, 4)))
    if rng.random() < 0.01:
        value += rng.choice(LONE_SURROGATES)
    return value or ("x" if nonempty else "")


def scalar(rng: random.Random):
    return rng.choice([
        None, True, False, 0, 1, 2, -1, 0.0, 0.5, 1.0, -0.0, 1e300, 10**20, 2**64, "", "x",
        rng.choice(WORDS), text(rng),
    ])


def any_value(rng: random.Random, depth: int = 0):
    kind = rng.random()
    if depth > 3 or kind < 0.6:
        return scalar(rng)
    if kind < 0.8:
        return [any_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(WORDS + ["k", "content", "role", "weight"]): any_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def tool_call(rng: random.Random) -> dict:
    call = {"id": f"call_{rng.randint(0, 9)}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": text(rng)})}}
    if rng.random() < 0.2:
        call["extra"] = any_value(rng)  # the rules allow unknown keys in a tool call
    if rng.random() < 0.2:
        call["function"]["extra"] = any_value(rng)
    return call


def tool_definition(rng: random.Random) -> dict:
    function = {"name": rng.choice(["get_weather", "f", "bare"])}
    if rng.random() < 0.5:
        function["description"] = text(rng)
    if rng.random() < 0.5:
        function["parameters"] = {"type": "object", "properties": {"city": {"type": "string"}},
                                  "extra": any_value(rng)}
    tool = {"type": "function", "function": function}
    if rng.random() < 0.2:
        tool["extra"] = any_value(rng)
    return tool


def good_example(rng: random.Random) -> dict:
    """A valid fine-tune example, in many shapes."""
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(["You are terse.", text(rng)])})
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": text(rng)})
        if rng.random() < 0.2:
            messages.append({"role": "assistant", "tool_calls": [tool_call(rng)],
                             **rng.choice([{}, {"content": None}, {"content": ""}, {"content": "ok"}])})
            messages.append({"role": "tool", "content": text(rng),
                             **rng.choice([{}, {"tool_call_id": "call_1"}])})
        answer = {"role": "assistant", "content": text(rng)}
        if rng.random() < 0.15:
            answer["weight"] = rng.choice([0, 1])
        messages.append(answer)
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant"):
        messages[-1]["weight"] = 1
    if rng.random() < 0.1:
        messages.append({"role": "user", "content": "tail"})
    if rng.random() < 0.05:  # valid only with weight 0: nothing before it to answer
        messages.insert(0, {"role": "assistant", "content": text(rng),
                            **rng.choice([{}, {"weight": 0}, {"weight": 1}])})
    for message in messages:
        if rng.random() < 0.05:
            message["name"] = text(rng)
    example = {"messages": messages}
    if rng.random() < 0.3:
        example["split"] = rng.choice(["TRAIN", "TEST"])
    if rng.random() < 0.1:
        example["tools"] = [tool_definition(rng) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.05:
        example["parallel_tool_calls"] = rng.choice([True, False])
    return example


def good_request(rng: random.Random) -> dict:
    body = {"model": rng.choice(["gpt-4o-mini", "m", "ft:x"]),
            "messages": [{"role": rng.choice(["system", "user", "assistant", "tool"]),
                          "content": text(rng, nonempty=False)} for _ in range(rng.randint(1, 3))]}
    if rng.random() < 0.5:
        body["max_tokens"] = rng.choice([1, 100, 10**30])
    if rng.random() < 0.3:
        body["extra"] = any_value(rng)
    if rng.random() < 0.2:
        body["messages"][0]["name"] = any_value(rng)  # the rules allow other keys in a body message
    return {"custom_id": f"req-{rng.randint(0, 50)}", "method": "POST",
            "url": "/v1/chat/completions", "body": body}


def containers(value, path=()):
    """(path, container) for every dict and list inside value."""
    if isinstance(value, dict):
        yield path, value
        for key, item in value.items():
            yield from containers(item, (*path, key))
    elif isinstance(value, list):
        yield path, value
        for index, item in enumerate(value):
            yield from containers(item, (*path, index))


def mutate(value, rng: random.Random) -> None:
    """Break (or not) one thing inside value, in place."""
    _, target = rng.choice(list(containers(value)))
    if isinstance(target, dict):
        action = rng.random()
        if target and action < 0.3:
            del target[rng.choice(list(target))]
        elif target and action < 0.8:
            target[rng.choice(list(target))] = any_value(rng)
        else:
            target[rng.choice(WORDS + ["content", "role", "weight", "name", "tool_calls",
                                       "tool_call_id", "split", "tools", "messages"])] = any_value(rng)
    elif target and rng.random() < 0.7:
        target[rng.randrange(len(target))] = any_value(rng)
    elif rng.random() < 0.5:
        target.clear()
    else:
        target.append(any_value(rng))


# --------------------------------------------------------------------------
# Writing JSON the many ways a file may spell it


def write_json(value, rng: random.Random, ascii_only: bool, duplicates: float) -> str:
    space = rng.choice(["", " "])
    if isinstance(value, dict):
        items = list(value.items())
        if rng.random() < 0.3:
            rng.shuffle(items)
        if items and rng.random() < duplicates:  # a key twice: the last one counts
            key, item = rng.choice(items)
            twin = (key, any_value(rng) if rng.random() < 0.5 else item)
            items.insert(rng.randrange(len(items) + 1), twin)
        parts = [f"{write_key(key, rng, ascii_only)}:{space}{write_json(item, rng, ascii_only, duplicates)}"
                 for key, item in items]
        return "{" + f",{space}".join(parts) + "}"
    if isinstance(value, list):
        return "[" + f",{space}".join(write_json(item, rng, ascii_only, duplicates) for item in value) + "]"
    if isinstance(value, str):
        written = json.dumps(value, ensure_ascii=ascii_only)
        return written.replace("/", "\\/") if rng.random() < 0.2 else written
    return json.dumps(value)


def write_key(key: str, rng: random.Random, ascii_only: bool) -> str:
    if key and rng.random() < 0.05:  # one letter as a \\u escape: the same key
        return '"\\u%04x' % ord(key[0]) + json.dumps(key)[2:]
    return json.dumps(key, ensure_ascii=ascii_only)


STRAY_BYTES = [b"\x00", b"\xff", b"\x80", b'"', b"\\", b",", b"}", b"]", b"{", b"[", b" ", b"\t",
               b"\r", b"\x0b", b"\x0c", b"\x1f", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"\xef\xbb\xbf"]
NUMBER_SPELLINGS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" * 4300, b"1" * 4301,
                    b"-" + b"1" * 4300, b"-0", b"1E0", b"01", b"1.", b".5", b"0.0", b"1e-400"]


def corrupt(line: bytes, rng: random.Random) -> bytes:
    """Break (or not) the line as bytes."""
    action = rng.randrange(9)
    position = rng.randrange(len(line) + 1)
    if action == 0:
        return line[:position]
    if action == 1:
        return line[:position] + rng.choice(STRAY_BYTES) + line[position:]
    if action == 2:
        return line[:position] + line[position + 1:]
    if action == 3 and b": 1" in line or b":1" in line:
        return line.replace(b":1", b":" + rng.choice(NUMBER_SPELLINGS), 1).replace(
            b": 1", b": " + rng.choice(NUMBER_SPELLINGS), 1)
    if action == 4:
        return rng.choice([b" ", b"\t", b"\r", b"\x0c", b"\xef\xbb\xbf"]) + line
    if action == 5:
        return line + rng.choice([b" ", b"\t", b"\r", b" x", b"{}", b"\x00"])
    if action == 6:
        return rng.choice([b"[]", b"null", b"1", b'"x"', b"{}", b"true", b"", b"  "])
    if action == 7:
        return line.replace(b'"', b"'", 1)
    return line


def nested(depth: int, rng: random.Random) -> bytes:
    opening = b"".join(rng.choice([b"[", b'{"a":']) for _ in range(depth))
    closing = b"".join(b"]" if byte == ord("[") else b"}" for byte in reversed(opening.replace(b'{"a":', b"{")))
    return opening + b"1" + closing


def deep_line(rng: random.Random, batch: bool = False) -> bytes:
    """A line with a free-form object nested near a limit: the fast path's
    bracket count, or the parsers' recursion limits."""
    depth = rng.choice([MAX_FAST_BRACKETS - 10, MAX_FAST_BRACKETS - 1, MAX_FAST_BRACKETS,
                        MAX_FAST_BRACKETS + 1, rng.randint(900, 1100)])
    deep = nested(depth, rng)
    if batch:
        return (b'{"custom_id": "deep-%d", "method": "POST", "url": "/v1/chat/completions", "body": '
                b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "extra": %s}}'
                % (rng.randint(0, 10**6), deep))
    where = rng.random()
    if where < 0.5:
        return (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
                b'"tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": %s}}}]}' % deep)
    return (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": '
            b'[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}, '
            b'"extra": %s}]}]}' % deep)


def random_line(rng: random.Random, batch: bool = False) -> bytes:
    if rng.random() < 0.02:
        return deep_line(rng, batch)
    value = good_request(rng) if batch else good_example(rng)
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        mutate(value, rng)
    written = write_json(value, rng, ascii_only=rng.random() < 0.5,
                         duplicates=rng.choice([0.0, 0.0, 0.05]))
    line = written.encode("utf-8", "surrogatepass")  # a lone surrogate: invalid UTF-8
    if rng.random() < 0.15:
        line = corrupt(line, rng)
    return line


# --------------------------------------------------------------------------
# One line: the fast path never accepts what the rules refuse


def python_verdict(line: bytes, batch: bool = False):
    """(problem, object) by today's Python path: parse_object and the rules."""
    try:
        obj = parse_object(line)
    except LineProblem as problem:
        return str(problem), None
    if batch:
        return batch_request_problem(1, obj, {}), obj
    return fine_tune_problem(obj), obj


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_agrees_with_the_rules_on_fine_tune_lines(seed):
    rng = random.Random(seed)
    accepted = valid = 0
    for _ in range(4000):
        line = random_line(rng)
        summary = fine_tune_summary(line)
        problem, example = python_verdict(line)
        valid += problem is None
        if summary is not None:
            accepted += 1
            assert problem is None, (line, problem)
            assert summary == summarize(example), line
    # The fast path takes most valid lines (it declines lone surrogates, 1e400, ...).
    assert valid > 1000 and accepted > 0.8 * valid, (accepted, valid)


@pytest.mark.parametrize("seed", range(2))
def test_fast_path_agrees_with_the_rules_on_batch_lines(seed):
    rng = random.Random(100 + seed)
    accepted = valid = 0
    for _ in range(4000):
        line = random_line(rng, batch=True)
        fast = batch_request(line)
        problem, request = python_verdict(line, batch=True)
        valid += problem is None
        if fast is not None:
            accepted += 1
            assert problem is None, (line, problem)
            assert fast == (request["custom_id"], request["body"]["model"]), line
    assert valid > 1000 and accepted > 0.8 * valid, (accepted, valid)


def test_fast_path_declines_what_python_parses_differently():
    good = b'{"messages": [{"role": "user", "content": "%s"}, {"role": "assistant", "content": "a"}]}'
    assert fine_tune_summary(good % b"q") is not None
    for content in [b"\\ud800", b"\xed\xa0\x80", b"\xff", b"\x01"]:
        assert fine_tune_summary(good % content) is None
    assert fine_tune_summary(None) is None and batch_request(None) is None
    # A role given twice: Python keeps the last one.
    twice = (b'{"messages": [{"role": "system", "content": "q", "role": "user"}, '
             b'{"role": "assistant", "content": "a"}]}')
    assert fine_tune_summary(twice) is None and fine_tune_problem(parse_object(twice)) is None


def test_a_number_too_long_for_python_is_an_error_not_a_crash():
    line = b'{"messages": [], "x": ' + b"1" * 4301 + b"}"
    assert fine_tune_summary(line) is None
    with pytest.raises(LineProblem, match="invalid JSON: a number has more than 4300 digits"):
        parse_object(line)


# --------------------------------------------------------------------------
# Whole files: fast path on and off give the same result


def random_file(rng: random.Random, batch: bool) -> bytes:
    pool = [random_line(rng, batch) for _ in range(rng.randint(0, 120))]
    lines = []
    for line in pool:
        lines.append(line)
        if rng.random() < 0.1 and lines:
            lines.append(rng.choice(lines))  # an exact repeat
        if rng.random() < 0.05:
            lines.append(rng.choice([b"", b" ", b"\t", b"\r"]))
    data = b"".join(line + rng.choice([b"\n", b"\n", b"\r\n"]) for line in lines)
    if rng.random() < 0.2:
        data = b"\xef\xbb\xbf" + data
    if data and rng.random() < 0.2:
        data = data.rstrip(b"\r\n")
    return data


def validate_in_pieces(data: bytes, purpose: str, rng: random.Random):
    validator = validators.validator_for(purpose)
    position = 0
    while position < len(data):
        size = rng.choice([1, 7, 100, 1000, 4096, 70_000])
        validator.feed(data[position:position + size])
        position += size
    return validator.finish()


@pytest.mark.parametrize("purpose", ["fine-tune", "batch"])
@pytest.mark.parametrize("seed", range(3))
def test_files_give_the_same_result_with_and_without_the_fast_path(monkeypatch, purpose, seed):
    rng = random.Random(seed)
    batch = purpose == "batch"
    # Small limits, so that files here reach them: line length, tracked system prompts.
    monkeypatch.setattr(lines_module, "MAX_LINE_BYTES", 2000)
    monkeypatch.setattr(fine_tune_report, "MAX_TRACKED_SYSTEM_PROMPTS", 5)
    for _ in range(60):
        data = random_file(rng, batch)
        fast = validate(data, purpose=purpose)
        assert validate_in_pieces(data, purpose, random.Random(rng.random())) == fast
        with monkeypatch.context() as python_only:
            python_only.setattr(validators, "fine_tune_summary", lambda line: None)
            python_only.setattr(validators, "batch_request", lambda line: None)
            slow = validate(data, purpose=purpose)
        assert fast == slow
        assert fast.message() == slow.message()


# --------------------------------------------------------------------------
# The pieces the report is built from, against simple versions of them


def test_line_reader_feed_lines_matches_reading_line_by_line(monkeypatch):
    monkeypatch.setattr(lines_module, "MAX_LINE_BYTES", 50)
    rng = random.Random(5)
    alphabet = [b"a", b"b", b"\n", b"\r", b"\r\n", b"\xef\xbb\xbf", b" ", b"x" * 30]
    for _ in range(500):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        expected_reader = LineReader()
        expected = list(expected_reader._feed_each(data)) + list(expected_reader.finish())
        reader = LineReader()
        got = []
        position = 0
        while position < len(data):
            size = rng.choice([1, 2, 5, 20, 49, 50, 51, 200])
            first = reader.line_count + 1
            got += list(enumerate(reader.feed_lines(data[position:position + size]), first))
            assert reader.buffered_bytes <= 50
            position += size
        got += list(reader.finish())
        assert got == expected, data
        assert reader.line_count == expected_reader.line_count


def old_p95(values) -> int:
    rank = (95 * len(values) + 99) // 100
    return heapq.nlargest(len(values) - rank + 1, values)[-1]


def old_histogram(values) -> list[dict]:
    counts = Counter(max(value.bit_length(), 4) for value in values)
    if not counts:
        return []
    return [{"min": 0 if bits == 4 else 1 << (bits - 1), "max": (1 << bits) - 1,
             "count": counts.get(bits, 0)} for bits in range(min(counts), max(counts) + 1)]


def test_summaries_p95_and_histogram_match_the_simple_versions():
    rng = random.Random(3)
    for _ in range(1000):
        top = rng.choice([1, 15, 16, 300, 70_000, 2**20, 2**32 - 1])
        count = rng.randint(1, 200)
        if rng.random() < 0.5:
            values = array("I", (rng.randint(0, top) for _ in range(count)))
        else:
            values = array("I", (rng.choice([0, 1, top // 2, top - 1, top]) for _ in range(count)))
        counts = fine_tune_report._value_counts(values)  # None unless every value is below 2^16
        for given in (None, counts):
            assert fine_tune_report._p95(values, given) == old_p95(values)
            assert fine_tune_report._length_histogram(values, given) == old_histogram(values)
        assert fine_tune_report._number_summary(values, counts) == {
            "min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values),
            "p95": old_p95(values)}
    assert fine_tune_report._length_histogram(array("I")) == []


def test_first_line_index_matches_a_dict():
    rng = random.Random(4)
    index, expected = FirstLineIndex(), {}
    line_no = 0
    for _ in range(40):
        batch = [rng.getrandbits(64) - 2**63 if rng.random() < 0.7 else rng.choice(list(expected) or [0])
                 for _ in range(rng.randint(0, 700))]
        numbers = range(line_no + 1, line_no + 1 + len(batch))
        line_no += len(batch)
        want = []
        for line_hash, number in zip(batch, numbers):
            first = expected.setdefault(line_hash, number)
            if first != number:
                want.append((number, first))
        assert index.add_many(batch, numbers) == want


def test_counting_examples_together_or_one_by_one_gives_the_same_report(monkeypatch):
    monkeypatch.setattr(fine_tune_report, "MAX_TRACKED_SYSTEM_PROMPTS", 7)
    rng = random.Random(6)
    rows = []
    for line_no in range(1, 400):
        line = random_line(rng)
        summary = fine_tune_summary(line)
        if summary is not None:
            rows.append((line_no, line, summary))
            if rng.random() < 0.1:
                rows.append((line_no + 1000, line, summary))  # repeated later
    rows.sort()
    one_by_one, together = FineTuneStats(), FineTuneStats()
    for line_no, line, summary in rows:
        one_by_one.add(line_no, line, summary)
    for start in range(0, len(rows), 37):
        part = rows[start:start + 37]
        together.add_many([r[0] for r in part], [r[1] for r in part], [r[2] for r in part])
    assert together.report(lines=1400, blank_lines=0, seed=0) == one_by_one.report(lines=1400, blank_lines=0, seed=0)
    assert one_by_one.system_prompts_capped and one_by_one.duplicate_count
