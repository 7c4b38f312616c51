"""The report of a valid fine-tune file, its split counts and warnings."""

import json

from domain.files.validation import fine_tune_report
from tests.domain.files.helpers import (
    ASSISTANT, USER, chat, good_examples, jsonl, mixed_file, validate, with_messages,
)


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
        "format": "chat",
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
    monkeypatch.setattr(fine_tune_report, "MAX_TRACKED_SYSTEM_PROMPTS", 3)
    items = [with_messages({"role": "system", "content": f"persona {i}"}, USER, ASSISTANT)
             for i in range(10)]
    report = validate(jsonl(items)).report
    assert report["distinct_system_prompts"] == 3
    assert any("more than 3 distinct system prompts" in w for w in report["warnings"])


def test_report_and_result_are_json_serialisable():
    result = validate(mixed_file(valid=True))
    assert json.loads(json.dumps(result.report)) == result.report


def test_duplicates_are_found_across_index_growth():
    index = fine_tune_report.FirstLineIndex()
    for line_no in range(1, 5001):  # several doublings of the 1024-slot table
        assert index.first_line(hash(f"line {line_no}".encode()), line_no) == line_no
    for line_no in (1, 777, 5000):
        assert index.first_line(hash(f"line {line_no}".encode()), 9000 + line_no) == line_no


# ---------------------------------------------------------------------------
# The split in the report


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
