"""Reading a JSONL byte stream: lines and their JSON objects.

``LineReader`` cuts a stream, fed in arbitrary chunks, into lines and never
holds more than MAX_LINE_BYTES of one; ``parse_object`` reads a line as one
strict JSON object. The validators, the TEST split (domain/files/split.py)
and the workers that read validated files all read lines this way, so they
agree on line numbers. Standard library only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from itertools import count

MAX_LINE_BYTES = 8 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
TOO_LONG = "line is longer than 8 MiB"


# --------------------------------------------------------------------------
# Cutting a byte stream into lines


class LineReader:
    """Cuts a byte stream, fed in arbitrary chunks, into lines.

    Yields ``(line_no, line)`` with the terminator (LF or CRLF) and a leading
    UTF-8 BOM removed. ``line`` is None for a line longer than MAX_LINE_BYTES:
    its bytes are dropped as they arrive instead of being buffered.
    """

    def __init__(self) -> None:
        self.line_count = 0
        self._partial = bytearray()  # start of a line whose newline has not arrived yet
        self._discarding = False  # inside an over-long line: drop bytes up to the next newline

    @property
    def buffered_bytes(self) -> int:
        return len(self._partial)

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        """``(line_no, line)`` for each line that ``chunk`` completes."""
        first = self.line_count + 1
        return zip(count(first), self.feed_lines(chunk))

    def feed_lines(self, chunk: bytes) -> list[bytes | None]:
        """The lines that ``chunk`` completes, in order, numbered from the
        ``line_count`` before the call plus one (each line counts once)."""
        if len(chunk) > MAX_LINE_BYTES:  # may hold an over-long line: one line at a time
            return [line for _, line in self._feed_each(chunk)]
        newline = chunk.find(b"\n")
        if newline < 0:  # no line ends here
            if self._discarding:
                return []
            too_long = self._keep_partial(chunk, 0)
            return [] if too_long is None else [None]
        # Cut in C. The first piece ends the line begun in an earlier chunk (if
        # any), the last one begins a line that a later chunk ends.
        pieces = chunk.split(b"\n")
        rest = pieces.pop()
        if self._discarding:  # the first piece ends an over-long line, already counted
            self._discarding = False
            del pieces[0]
            lines = []
        elif self._partial:
            lines = [self._complete_partial(chunk, 0, newline)[1]]
            del pieces[0]
        else:
            lines = []
        if pieces:
            if b"\r" in chunk:  # CRLF: drop one CR before each LF
                pieces = [piece[:-1] if piece[-1:] == b"\r" else piece for piece in pieces]
            if self.line_count == 0 and pieces[0].startswith(_BOM):
                pieces[0] = pieces[0][len(_BOM):]
            self.line_count += len(pieces)
            if lines:
                lines += pieces
            else:
                lines = pieces
        if rest:
            self._partial += rest  # fits: the chunk is at most MAX_LINE_BYTES
        return lines

    def _feed_each(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        """``feed()`` one line at a time, for a chunk that may hold an over-long line."""
        start = self._skip_long_line_rest(chunk) if self._discarding else 0
        find = chunk.find
        newline = find(b"\n", start)
        if self._partial and newline >= 0:
            yield self._complete_partial(chunk, start, newline)
            start = newline + 1
            newline = find(b"\n", start)
        while newline >= 0:
            yield self._line(chunk[start:newline])
            start = newline + 1
            newline = find(b"\n", start)
        if start < len(chunk):
            too_long = self._keep_partial(chunk, start)
            if too_long is not None:
                yield too_long

    def finish(self) -> Iterator[tuple[int, bytes | None]]:
        if self._partial:  # last line without a trailing newline
            line = bytes(self._partial)
            self._partial = bytearray()
            yield self._line(line)
        self._discarding = False

    def _line(self, raw: bytes) -> tuple[int, bytes | None]:
        self.line_count += 1
        if len(raw) > MAX_LINE_BYTES:
            return self.line_count, None
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if self.line_count == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        return self.line_count, raw

    def _too_long(self) -> tuple[int, None]:
        self._partial = bytearray()  # a new object, so the big buffer is freed
        self.line_count += 1
        return self.line_count, None

    def _skip_long_line_rest(self, chunk: bytes) -> int:
        newline = chunk.find(b"\n")
        if newline < 0:
            return len(chunk)
        self._discarding = False
        return newline + 1

    def _complete_partial(self, chunk: bytes, start: int, newline: int) -> tuple[int, bytes | None]:
        if len(self._partial) + newline - start > MAX_LINE_BYTES:
            return self._too_long()
        self._partial += memoryview(chunk)[start:newline]
        line = bytes(self._partial)
        self._partial = bytearray()
        return self._line(line)

    def _keep_partial(self, chunk: bytes, start: int) -> tuple[int, None] | None:
        if len(self._partial) + len(chunk) - start > MAX_LINE_BYTES:
            self._discarding = True
            return self._too_long()
        self._partial += memoryview(chunk)[start:]
        return None


def all_lines(reader: LineReader, chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes | None]]:
    for chunk in chunks:
        yield from reader.feed(chunk if type(chunk) is bytes else bytes(chunk))
    yield from reader.finish()


# --------------------------------------------------------------------------
# JSON parsing


class LineProblem(Exception):
    """A line cannot be used; the message is the reason shown to the user."""


def _reject_constant(name: str):
    raise LineProblem(f"invalid JSON: {name} is not allowed")


# One shared decoder (as json.loads uses), but strict JSON: no NaN/Infinity.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_object(line: bytes) -> dict:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LineProblem(f"not valid UTF-8 (bad byte at position {error.start + 1})") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise LineProblem(f"invalid JSON: {error.msg} at column {error.pos + 1}") from None
    except RecursionError:
        raise LineProblem("invalid JSON: nested too deeply") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits())
        raise LineProblem(f"invalid JSON: a number has more than {sys.get_int_max_str_digits()} digits") from None
    if type(value) is not dict:
        raise LineProblem(f"expected a JSON object, got {json_type(value)}")
    return value


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
