"""Reading JSONL lines: line numbers, terminators, BOM, chunk boundaries, the line size limit."""

import pytest

from domain.files.validation.lines import MAX_LINE_BYTES
from domain.files.validation.result import LineError
from domain.files.validation.validators import FineTuneValidator
from tests.domain.files.helpers import chat, good_examples, jsonl, mixed_file, only_error, validate


def test_line_numbers_count_blank_lines():
    items = good_examples(12)
    data = jsonl(items[:3]) + b"\n   \n\t\n" + b"oops\n" + jsonl(items[3:])
    assert only_error(validate(data)).line == 7


def test_bom_on_a_later_line_is_not_tolerated():
    data = jsonl(good_examples(10)) + b"\xef\xbb\xbf" + jsonl([chat()])
    error = only_error(validate(data))
    assert error.line == 11 and "invalid JSON" in error.reason


def test_deeply_nested_json_is_an_error_not_a_crash():
    data = jsonl(good_examples(10)) + b"[" * 100_000 + b"\n"
    error = only_error(validate(data))
    assert error.line == 11 and error.reason.startswith("invalid JSON")


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


# ---------------------------------------------------------------------------
# Chunk boundaries


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
