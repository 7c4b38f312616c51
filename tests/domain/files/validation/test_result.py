"""The verdict: errors by line, the error cap, whole-file problems, the message."""

import pytest

from domain.files.validation.result import MAX_REPORTED_ERRORS, LineError
from domain.files.validation.validators import MIN_EXAMPLES
from tests.domain.files.helpers import USER, chat, good_examples, jsonl, only_error, validate, with_messages


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


def test_empty_batch_file():
    assert only_error(validate(b"\n\n", purpose="batch")) == LineError(0, "the file is empty")
