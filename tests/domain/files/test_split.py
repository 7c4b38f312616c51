"""The deterministic TEST split shared by the upload report, the trainer and evaluations."""

import random

import pytest

from domain.files.split import DEFAULT_SPLIT_SEED, TEST_FRACTION, TestDraw, jsonl_objects, split_lines
from domain.files.validation.lines import MAX_LINE_BYTES
from tests.domain.files.helpers import chat, good_examples, jsonl, to_line, validate


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


def test_jsonl_objects_reads_a_validated_file_with_its_line_numbers():
    items = [{"custom_id": "a"}, {"custom_id": "b"}]
    data = b"\xef\xbb\xbf" + jsonl(items[:1], newline=b"\r\n") + b"\n  \n" + jsonl(items[1:], trailing=False)
    assert list(jsonl_objects([data[i:i + 3] for i in range(0, len(data), 3)])) == [(1, items[0]), (4, items[1])]
    with pytest.raises(ValueError, match="^line 2: expected a JSON object, got list$"):
        list(jsonl_objects([jsonl([chat(), b"[]"])]))
    with pytest.raises(ValueError, match="^line 1: line is longer than 8 MiB$"):
        list(jsonl_objects([b"x" * (MAX_LINE_BYTES + 1)]))
