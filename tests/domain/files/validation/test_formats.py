"""Fine-tune files in the formats other than chat (text, prompt/completion,
preference pairs): detection, one format a file, every bad line named, and
each format's report."""

import json

import pytest

from domain.files.split import split_lines
from domain.files.validation.formats import detect_format
from tests.domain.files.helpers import (
    chat, good_examples, jsonl, only_error, preference, prompt_completion, text_line, to_line, validate,
)

MAKERS = {"text": text_line, "prompt_completion": prompt_completion, "preference": preference}


@pytest.mark.parametrize("format_", ["text", "prompt_completion", "preference"])
def test_a_valid_file_of_each_format_is_detected_and_reported(format_):
    make = MAKERS[format_]
    result = validate(jsonl([make(i) for i in range(12)]), chunk_size=50)
    assert result.ok, result.message()
    report = result.report
    json.dumps(report)
    assert report["format"] == format_
    assert report["examples"] == 12
    assert (report["split"]["train"], report["split"]["test"]) == (11, 1)
    assert report["estimated_tokens"]["total"] > 0
    assert result.message().startswith("The file is a valid fine-tune file: 12 examples (11 train, 1 test)")


def test_chat_files_report_their_format():
    result = validate(jsonl(good_examples(10)))
    assert result.report["format"] == "chat"


def test_text_report_numbers():
    lines = [{"text": "x" * 8}] * 9 + [{"text": "y" * 41, "split": "TEST"}]
    report = validate(jsonl(lines)).report
    # tokens: ceil(8 / 4) + 1 = 3 (nine lines, eight of them repeats), ceil(41 / 4) + 1 = 12
    assert report["characters"] == {"min": 8, "mean": 11.3, "max": 41, "p95": 41, "total": 113}
    assert {k: report["estimated_tokens"][k] for k in ("min", "max", "total", "method")} == {
        "min": 3, "max": 12, "total": 39, "method": "characters / 4, plus 1 for the end of text"}
    assert report["duplicates"]["count"] == 8
    assert report["split"]["method"] == "mixed"
    assert report["split"]["explicit_test"] == 1
    assert report["warnings"][0].startswith("8 lines exactly repeat an earlier line")


def test_prompt_completion_report_numbers():
    lines = [{"prompt": "abcd" * i, "completion": "efgh" * (i + 1)} for i in range(10)]
    report = validate(jsonl(lines)).report
    assert report["format"] == "prompt_completion"
    # prompt tokens: ceil(4i / 4) = i; completion tokens: i + 1, plus 1 for the end of text
    assert report["prompt_tokens"] == {"min": 0, "mean": 4.5, "max": 9, "p95": 9, "total": 45}
    assert report["completion_tokens"] == {"min": 2, "mean": 6.5, "max": 11, "p95": 11, "total": 65}
    assert report["empty_prompts"] == 1
    assert report["estimated_tokens"]["total"] == 110


def test_preference_report_numbers():
    lines = [preference(i) for i in range(10)]
    lines[0] = {"input": {"messages": [{"role": "system", "content": "s" * 8}, {"role": "user", "content": "u" * 8}],
                          "tools": [{"type": "function", "function": {"name": "f"}}]},
                "preferred_output": [{"role": "assistant", "content": "p" * 40}],
                "non_preferred_output": [{"role": "assistant", "content": "n" * 4}], "split": "TEST"}
    report = validate(jsonl(lines)).report
    assert report["format"] == "preference"
    assert report["pairs"] == 10
    assert report["messages_per_prompt"]["max"] == 2
    # line 1: prompt 16 characters in 2 messages -> 4 + 8 = 12; preferred 40 -> 14; non-preferred 4 -> 5
    assert report["prompt_tokens"]["max"] == 12
    assert report["preferred_tokens"]["max"] == 14
    assert report["non_preferred_tokens"]["min"] == 5
    assert report["estimated_tokens"]["max"] == 12 + 14  # the prompt and the longer output
    assert report["examples_with_tools"] == 1
    assert report["split"]["explicit_test"] == 1


@pytest.mark.parametrize(("first", "later", "first_name", "later_name"), [
    (text_line(0), chat(), "text", "chat"),
    (chat(), text_line(0), "chat", "text"),
    (prompt_completion(0), preference(0), "prompt/completion", "preference"),
    (preference(0), {"prompt": "a"}, "preference", "prompt/completion"),
])
def test_a_file_that_mixes_formats_is_refused_naming_the_lines(first, later, first_name, later_name):
    make = {"text": text_line, "chat": lambda i: chat(f"q{i}", f"a{i}"),
            "prompt/completion": prompt_completion, "preference": preference}[first_name]
    lines = [first] + [make(i) for i in range(1, 12)]
    lines[6] = later
    lines[9] = later
    result = validate(jsonl(lines), chunk_size=97)
    assert not result.ok
    assert result.report is None
    assert [(e.line, e.reason) for e in result.errors] == [
        (line, f"a {later_name} line, but the file's first example (line 1) is {first_name}; a file holds one format")
        for line in (7, 10)]
    assert "line 7: a " in result.message()


def test_the_format_comes_from_the_first_line_that_names_one():
    lines = [b"not json", {"foo": 1}] + [text_line(i) for i in range(10)] + [chat()]
    result = validate(jsonl(lines))
    reasons = {e.line: e.reason for e in result.errors}
    assert reasons[1].startswith("invalid JSON")
    assert reasons[2].startswith("cannot tell the line's format: expected 'messages' (chat)")
    assert reasons[13] == ("a chat line, but the file's first example (line 3) is text; a file holds one format")


def test_a_line_naming_no_format_in_a_file_whose_format_is_known_gets_its_rule():
    result = validate(jsonl([text_line(i) for i in range(10)] + [{"split": "TEST"}]))
    assert only_error(result).reason == "missing 'text'"


BAD_LINES = [
    # text
    ({"text": ""}, "empty 'text'"),
    ({"text": " \n"}, "empty 'text'"),
    ({"text": 3}, "'text' must be a string, got number"),
    ({"text": "a", "title": "b"}, "unknown key 'title'"),
    ({"text": "a", "split": "VALID"}, "'split' must be \"TRAIN\" or \"TEST\", got \"VALID\""),
    # prompt/completion
    ({"prompt": "a"}, "missing 'completion'"),
    ({"completion": "a"}, "missing 'prompt'"),
    ({"prompt": "a", "completion": ""}, "empty 'completion': it is what the model is trained on"),
    ({"prompt": None, "completion": "b"}, "'prompt' must be a string, got null"),
    ({"prompt": "a", "completion": ["b"]}, "'completion' must be a string, got list"),
    ({"prompt": "a", "completion": "b", "text": "c"}, "unknown key 'text'"),
    # preference
    ({**preference(), "input": {"messages": []}}, "'input.messages' must be a non-empty list"),
    ({**preference(), "input": {}}, "missing 'input.messages'"),
    ({**preference(), "input": []}, "'input' must be an object, got list"),
    ({**preference(), "input": {"messages": [{"role": "user", "content": "q"}], "model": "x"}},
     "'input': unknown key 'model'"),
    ({**preference(), "input": {"messages": [{"role": "user", "content": "q"}], "tools": {}}},
     "input: 'tools' must be a list, got object"),
    ({**preference(), "input": {"messages": [{"role": "robot", "content": "q"}]}},
     "input message 1: unknown role 'robot' (expected system, user, assistant or tool)"),
    ({**preference(), "input": {"messages": [{"role": "user", "content": ""}]}}, "input message 1: empty 'content'"),
    ({**preference(), "input": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}},
     "input message 2: the last input message is from the assistant; the outputs are the answer to the input, "
     "so it must end with a user, system or tool message"),
    ({**preference(), "input": {"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a", "weight": 0},
                                             {"role": "user", "content": "q"}]}},
     "input message 2: 'weight' is not used in preference files"),
    ({k: v for k, v in preference().items() if k != "non_preferred_output"}, "missing 'non_preferred_output'"),
    ({k: v for k, v in preference().items() if k != "input"}, "missing 'input'"),
    ({**preference(), "preferred_output": []},
     "'preferred_output': must hold exactly one assistant message, got 0 messages"),
    ({**preference(), "preferred_output": [{"role": "assistant", "content": "a"}] * 2},
     "'preferred_output': must hold exactly one assistant message, got 2 messages"),
    ({**preference(), "preferred_output": {"role": "assistant", "content": "a"}},
     "'preferred_output': must be a list holding one assistant message, got object"),
    ({**preference(), "non_preferred_output": [{"role": "user", "content": "a"}]},
     "'non_preferred_output': message 1: role must be 'assistant', got 'user'"),
    ({**preference(), "non_preferred_output": [{"role": "assistant"}]},
     "'non_preferred_output': message 1: missing 'content'"),
    ({**preference(), "non_preferred_output": [{"role": "assistant", "content": "a", "weight": 1}]},
     "'non_preferred_output': message 1: 'weight' is not used in preference files"),
    ({**preference(), "non_preferred_output": preference()["preferred_output"]},
     "'preferred_output' and 'non_preferred_output' are identical; a pair needs two different answers"),
    ({**preference(), "chosen": "x"}, "unknown key 'chosen'"),
    ({**preference(), "split": "test"}, "'split' must be \"TRAIN\" or \"TEST\", got \"test\""),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_LINES)
def test_every_bad_line_is_named_with_its_reason(bad, reason):
    format_ = detect_format(bad)
    make = MAKERS[format_]
    lines = [make(i) for i in range(12)]
    lines[4] = bad
    error = only_error(validate(jsonl(lines)))
    assert (error.line, error.reason) == (5, reason)


def test_every_bad_line_of_a_file_is_reported():
    lines = [prompt_completion(i) for i in range(30)]
    for index in (2, 11, 25):
        lines[index] = {"prompt": "x", "completion": ""}
    result = validate(jsonl(lines))
    assert result.error_count == 3
    assert [e.line for e in result.errors] == [3, 12, 26]
    assert result.message().startswith("The file is not a valid fine-tune file: 3 invalid lines.")


def test_too_few_examples_of_another_format():
    result = validate(jsonl([text_line(i) for i in range(9)]))
    assert only_error(result).reason == "the file has 9 examples; at least 10 are needed"


def test_a_tool_calling_preferred_output_is_valid():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    lines = [preference(i) for i in range(10)]
    lines[3] = {**lines[3], "preferred_output": [{"role": "assistant", "tool_calls": [call]}]}
    result = validate(jsonl(lines))
    assert result.ok, result.message()
    assert result.report["examples_with_tools"] == 1


@pytest.mark.parametrize("format_", ["text", "prompt_completion", "preference"])
def test_the_split_of_every_format_matches_its_report(format_):
    make = MAKERS[format_]
    lines = [make(i) for i in range(40)]
    lines[5] = make(5, split="TEST")
    lines[6] = make(6, split="TRAIN")
    data = jsonl(lines)
    report = validate(data).report
    splits = [split for _line, _example, split in split_lines([data])]
    assert splits.count("TEST") == report["split"]["test"] == 1 + 4  # the explicit one and 10% of 38
    assert splits[5] == "TEST" and splits[6] == "TRAIN"
    # The same lines in another order give the same split.
    reordered = [split for _line, example, split in split_lines([jsonl(list(reversed(lines)))])]
    assert list(reversed(reordered)) == splits


# --------------------------------------------------------------------------
# The fast path of text and prompt/completion lines against the Python rules

STRINGS = ["", " ", "\n", "x", "hello world", "é", "你好", "😀", 'a"b', "\\", "\x00", "\u2028"]
VALUES = [None, True, 0, 1.5, [], {}, ["x"], "TRAIN", "TEST", "train"]


def random_flat_line(rng, format_: str) -> bytes:
    if format_ == "text":
        value = {"text": rng.choice(STRINGS) * rng.randint(1, 3)}
    else:
        value = {"prompt": rng.choice(STRINGS) * rng.randint(0, 2), "completion": rng.choice(STRINGS) * rng.randint(1, 3)}
    if rng.random() < 0.3:
        value["split"] = rng.choice(["TRAIN", "TEST", "VALID", None, 1])
    for _ in range(rng.choice([0, 0, 1, 2])):
        kind = rng.random()
        if kind < 0.3 and value:
            del value[rng.choice(sorted(value))]
        elif kind < 0.6:
            value[rng.choice(sorted(value) or ["text"])] = rng.choice(VALUES + STRINGS)
        else:
            value[rng.choice(["title", "messages", "prompt", "text", "meta"])] = rng.choice(VALUES + STRINGS)
    line = json.dumps(value, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.05:
        line = line.replace('"', '"\\ud800', 1) if rng.random() < 0.5 else line[:-1]
    return line.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("format_", ["text", "prompt_completion"])
def test_the_fast_path_never_accepts_what_the_rules_refuse(format_):
    import random

    from domain.files.validation.format_reports import summarize_prompt_completion, summarize_text
    from domain.files.validation.lines import LineProblem, parse_object
    from domain.files.validation.rules import prompt_completion_problem, text_problem
    from domain.files.validation.typed import prompt_completion_summary, text_summary

    fast, rule, summarize = {"text": (text_summary, text_problem, summarize_text),
                             "prompt_completion": (prompt_completion_summary, prompt_completion_problem,
                                                   summarize_prompt_completion)}[format_]
    rng = random.Random(7)
    accepted = valid = 0
    for _ in range(3000):
        line = random_flat_line(rng, format_)
        try:
            example = parse_object(line)
            problem = rule(example)
        except LineProblem as error:
            example, problem = None, str(error)
        valid += problem is None
        summary = fast(line)
        if summary is not None:
            accepted += 1
            assert problem is None, (line, problem)
            assert summary == summarize(example), line
    assert valid > 300 and accepted > 0.8 * valid, (accepted, valid)


@pytest.mark.parametrize("format_", ["text", "prompt_completion", "preference"])
def test_files_give_the_same_result_with_and_without_the_fast_path(monkeypatch, format_):
    import random

    from domain.files.validation import validators

    rng = random.Random(3)
    for _ in range(20):
        if format_ == "preference":
            lines = [to_line(preference(i)) for i in range(rng.randint(8, 30))]
            lines[rng.randrange(len(lines))] = to_line({**preference(), "non_preferred_output": []})
        else:
            lines = [to_line(MAKERS[format_](i)) for i in range(rng.randint(8, 30))]
            lines += [random_flat_line(rng, format_) for _ in range(rng.randint(0, 10))]
            rng.shuffle(lines)
        data = b"\n".join(lines) + b"\n"
        fast = validate(data, chunk_size=rng.choice([50, 300, 10_000]))
        with monkeypatch.context() as python_only:
            python_only.setattr(validators, "text_summary", lambda line: None)
            python_only.setattr(validators, "prompt_completion_summary", lambda line: None)
            python_only.setattr(validators, "fine_tune_summary", lambda line: None)
            slow = validate(data)
        assert fast == slow
        assert fast.message() == slow.message()
