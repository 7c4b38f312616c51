"""Converting the usual public dataset formats into tunehouse's chat format
(`tunehouse convert`, documented in docs/data-formats.md). HTTP-free and
torch-free; standard library only.

Sources (``--from``):

- ``alpaca``: ``{"instruction", "input"?, "output", "system"?}`` -> a user
  message (the instruction, then a blank line and the input when there is
  one), the assistant's output, and the system prompt when given. Other keys
  (Alpaca-cleaned's "text" with the prompt template) are ignored.
- ``sharegpt``: ``{"conversations": [{"from", "value"}, ...]}`` (other keys
  ignored) -> one message per turn: ``human``/``user`` -> user,
  ``gpt``/``assistant``/``chatgpt``/``bot`` -> assistant, ``system`` -> system,
  ``tool``/``function_response``/``observation`` -> tool is NOT converted
  (OpenAI's tool messages need a tool_call_id ShareGPT does not have).
- ``transcript``: one conversation per line, as a plain text line or a JSON
  object ``{"text": "..."}`` (then a conversation may span several lines of
  text). Turns start with a speaker label at the start of the text or after
  whitespace: ``Human:``/``User:`` -> user, ``Bot:``/``Assistant:`` ->
  assistant, ``System:`` -> system. Each turn's text is stripped.

The input is JSONL, or (for alpaca and sharegpt) one JSON array of records, as
``alpaca_data.json`` ships; then problems are named by record number. Every
converted example must pass the same rules as an uploaded chat line
(domain/files/validation/rules.py), so the output uploads as it is (given 10
examples or more); a record that does not is reported with the reason and
left out. Nothing is ever dropped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from domain.files.validation.lines import TOO_LONG, LineProblem, LineReader, all_lines, json_type, parse_object
from domain.files.validation.rules import fine_tune_problem

SOURCES = ("alpaca", "sharegpt", "transcript")

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bot": "assistant", "system": "system"}
TRANSCRIPT_ROLES = {"Human": "user", "User": "user", "Bot": "assistant", "Assistant": "assistant",
                    "System": "system"}
_SPEAKER = re.compile(r"(?:^|(?<=\s))(" + "|".join(TRANSCRIPT_ROLES) + r"):")


class ConversionProblem(Exception):
    """A record that cannot be converted; the message is the reason."""


@dataclass
class Conversion:
    """What a conversion did: records read, converted, blank lines, and every
    record that could not be converted as (line or record number, reason)."""

    unit: str = "line"  # "line" (JSONL, transcripts) or "record" (a JSON array)
    read: int = 0
    converted: int = 0
    blank: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        failed = len(self.problems)
        return (f"converted {self.converted} of {self.read} {self.unit}s; {failed} could not be converted"
                + (f"; {self.blank} blank lines skipped" if self.blank else ""))


# ----------------------------------------------------------------- one record


def _required_string(record: dict, key: str) -> str:
    if key not in record:
        raise ConversionProblem(f"missing '{key}'")
    value = record[key]
    if type(value) is not str:
        raise ConversionProblem(f"'{key}' must be a string, got {json_type(value)}")
    if not value.strip():
        raise ConversionProblem(f"empty '{key}'")
    return value


def from_alpaca(record: dict) -> dict:
    instruction = _required_string(record, "instruction")
    output = _required_string(record, "output")
    extra = record.get("input")
    if extra is None:
        extra = ""
    elif type(extra) is not str:
        raise ConversionProblem(f"'input' must be a string, got {json_type(extra)}")
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": _required_string(record, "system")})
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages}


def from_sharegpt(record: dict) -> dict:
    turns = record.get("conversations")
    if turns is None:
        raise ConversionProblem("missing 'conversations'")
    if type(turns) is not list or not turns:
        raise ConversionProblem("'conversations' must be a non-empty list")
    messages = []
    for index, turn in enumerate(turns, 1):
        if type(turn) is not dict:
            raise ConversionProblem(f"turn {index}: must be an object, got {json_type(turn)}")
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise ConversionProblem(f"turn {index}: unknown 'from' {json.dumps(speaker)[:40]} "
                                    f"(expected {', '.join(SHAREGPT_ROLES)})")
        value = turn.get("value")
        if type(value) is not str or not value.strip():
            raise ConversionProblem(f"turn {index}: 'value' must be a non-empty string")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return {"messages": messages}


def from_transcript(text: str) -> dict:
    pieces = _SPEAKER.split(text)
    labels = ", ".join(label + ":" for label in TRANSCRIPT_ROLES)
    if len(pieces) == 1:
        raise ConversionProblem(f"no speaker label ({labels}) found")
    if pieces[0].strip():
        raise ConversionProblem(f"text before the first speaker label ({labels})")
    messages = []
    for index, (label, content) in enumerate(zip(pieces[1::2], pieces[2::2]), 1):
        if not content.strip():
            raise ConversionProblem(f"turn {index} ({label}:) is empty")
        messages.append({"role": TRANSCRIPT_ROLES[label], "content": content.strip()})
    return {"messages": messages}


def convert_record(source: str, record) -> dict:
    """The chat example of one record, checked by the upload rules; raises
    ConversionProblem with the reason."""
    if source == "transcript":
        if isinstance(record, dict):
            text = record.get("text")
            if type(text) is not str:
                raise ConversionProblem("a JSON transcript line needs a string 'text'")
            record = text
        example = from_transcript(record)
    elif type(record) is not dict:
        raise ConversionProblem(f"expected a JSON object, got {json_type(record)}")
    elif source == "alpaca":
        example = from_alpaca(record)
    elif source == "sharegpt":
        example = from_sharegpt(record)
    else:
        raise ValueError(f"unknown source format {source!r} (expected one of {', '.join(SOURCES)})")
    problem = fine_tune_problem(example)
    if problem:
        raise ConversionProblem(f"the converted conversation is not a valid chat example: {problem}")
    return example


# ---------------------------------------------------------------- a whole file


def _jsonl_records(source: str, chunks: Iterable[bytes], conversion: Conversion) -> Iterator[tuple[int, object]]:
    """(line number, record or LineProblem) of every non-blank line."""
    for line_no, line in all_lines(LineReader(), chunks):
        if line is None:
            yield line_no, LineProblem(TOO_LONG)
            continue
        if not line.strip():
            conversion.blank += 1
            continue
        if source == "transcript" and not line.lstrip().startswith(b"{"):
            try:
                yield line_no, line.decode("utf-8")
            except UnicodeDecodeError as error:
                yield line_no, LineProblem(f"not valid UTF-8 (bad byte at position {error.start + 1})")
            continue
        try:
            yield line_no, parse_object(line)
        except LineProblem as problem:
            yield line_no, problem


def convert_records(source: str, records: Iterable[tuple[int, object]], write: Callable[[str], None],
                    conversion: Conversion) -> Conversion:
    """Converts numbered records, writing each converted one as a JSONL line."""
    for number, record in records:
        conversion.read += 1
        if isinstance(record, LineProblem):
            conversion.problems.append((number, str(record)))
            continue
        try:
            example = convert_record(source, record)
        except ConversionProblem as problem:
            conversion.problems.append((number, str(problem)))
            continue
        write(json.dumps(example, ensure_ascii=False) + "\n")
        conversion.converted += 1
    return conversion


def convert_file(source: str, in_path: Path, out_path: Path) -> Conversion:
    """Converts ``in_path`` (JSONL, or one JSON array for alpaca and sharegpt)
    into chat JSONL at ``out_path``."""
    if source not in SOURCES:
        raise ValueError(f"unknown source format {source!r} (expected one of {', '.join(SOURCES)})")
    with in_path.open("rb") as handle:
        start = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    with out_path.open("w", encoding="utf-8") as out:
        if source != "transcript" and start.startswith(b"["):
            try:
                items = json.loads(in_path.read_bytes().decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError) as error:
                raise ValueError(f"{in_path} starts with '[' but is not one JSON array: {error}") from None
            conversion = Conversion(unit="record")
            return convert_records(source, enumerate(items, 1), out.write, conversion)
        conversion = Conversion()
        with in_path.open("rb") as handle:
            chunks = iter(lambda: handle.read(1 << 20), b"")
            return convert_records(source, _jsonl_records(source, chunks, conversion), out.write, conversion)
