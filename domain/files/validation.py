"""Streaming validation of uploaded JSONL files (fine-tune and batch).

Files are validated while they upload: ``feed()`` takes chunks as they arrive
and ``finish()`` gives the verdict. Memory stays small however large the file
is: one partial line (never more than MAX_LINE_BYTES), compact per-example
number arrays, a few counters and one 64-bit hash per example for duplicate
detection.

The held-out TEST split is defined here too (``TestDraw``, ``split_lines``), so
the report shown at upload time and the trainer always agree on which lines are
TEST. Only the standard library is used, so the API process stays light.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAX_LINE_BYTES = 8 * 1024 * 1024
MIN_EXAMPLES = 10
TEST_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 0
MAX_REPORTED_ERRORS = 20

LONG_EXAMPLE_TOKENS = 4096
MAX_TRACKED_SYSTEM_PROMPTS = 10_000
MAX_DUPLICATE_EXAMPLES = 10
MAX_TRACKED_MODELS = 100

_BOM = b"\xef\xbb\xbf"
_TOO_LONG = "line is longer than 8 MiB"
_MISSING = object()  # marks an absent key where null is a value of its own

_ROLES = frozenset(("system", "user", "assistant", "tool"))
_ROLE_NAMES = "system, user, assistant or tool"
_EXAMPLE_KEYS = frozenset(("messages", "tools", "parallel_tool_calls", "split"))
_MESSAGE_KEYS = frozenset(("role", "content", "name", "weight", "tool_calls", "tool_call_id"))
_BATCH_KEYS = ("custom_id", "method", "url", "body")
_BATCH_KEY_SET = frozenset(_BATCH_KEYS)
_BATCH_METHOD = "POST"
_BATCH_URL = "/v1/chat/completions"


# --------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class LineError:
    line: int  # 1-based physical line number; 0 for a problem with the whole file
    reason: str


@dataclass
class ValidationResult:
    ok: bool
    errors: list[LineError]  # at most MAX_REPORTED_ERRORS, in line order
    error_count: int  # all errors, including those not kept in `errors`
    report: dict | None  # only when ok; JSON-serialisable
    purpose: str = "fine-tune"

    def message(self) -> str:
        """Human readable verdict: a summary line, then one line per kept error."""
        kind = f"{self.purpose} file"
        if self.ok:
            return "\n".join([f"The file is a valid {kind}: {self._report_summary()}."]
                             + [f"warning: {w}" for w in (self.report or {}).get("warnings", [])])
        file_problems = sum(1 for error in self.errors if error.line == 0)
        invalid_lines = self.error_count - file_problems
        parts = []
        if invalid_lines:
            parts.append(_plural(invalid_lines, "invalid line"))
        if file_problems:
            parts.append(_plural(file_problems, "problem with the whole file",
                                 "problems with the whole file"))
        lines = [f"The file is not a valid {kind}: {' and '.join(parts)}."]
        lines += [e.reason if e.line == 0 else f"line {e.line}: {e.reason}" for e in self.errors]
        if self.error_count > len(self.errors):
            lines.append(f"... and {self.error_count - len(self.errors)} more")
        return "\n".join(lines)

    def _report_summary(self) -> str:
        report = self.report or {}
        if "examples" in report:
            split = report["split"]
            return (f"{_plural(report['examples'], 'example')} "
                    f"({split['train']} train, {split['test']} test)")
        if "requests" in report:
            return _plural(report["requests"], "request")
        return "no problems found"


class _ErrorLog:
    """Counts every error but keeps details only for the first few."""

    def __init__(self) -> None:
        self.kept: list[LineError] = []
        self.count = 0

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.kept) < MAX_REPORTED_ERRORS:
            self.kept.append(LineError(line, reason))

    def add_file_problem(self, reason: str) -> None:
        # Line 0 sorts first, and a whole-file problem matters more than line details.
        self.count += 1
        self.kept.insert(0, LineError(0, reason))
        del self.kept[MAX_REPORTED_ERRORS:]


# --------------------------------------------------------------------------
# Cutting a byte stream into lines


class _LineReader:
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
        start = self._skip_long_line_rest(chunk) if self._discarding else 0
        find = chunk.find
        newline = find(b"\n", start)
        if self._partial and newline >= 0:
            yield self._complete_partial(chunk, start, newline)
            start = newline + 1
            newline = find(b"\n", start)
        while newline >= 0:  # the hot loop: whole lines inside this chunk
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


# --------------------------------------------------------------------------
# JSON parsing and small helpers


class _LineProblem(Exception):
    """A line cannot be used; the message is the reason shown to the user."""


def _reject_constant(name: str):
    raise _LineProblem(f"invalid JSON: {name} is not allowed")


# One shared decoder (as json.loads uses), but strict JSON: no NaN/Infinity.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_object(line: bytes) -> dict:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _LineProblem(f"not valid UTF-8 (bad byte at position {error.start + 1})") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise _LineProblem(f"invalid JSON: {error.msg} at column {error.pos + 1}") from None
    except RecursionError:
        raise _LineProblem("invalid JSON: nested too deeply") from None
    if type(value) is not dict:
        raise _LineProblem(f"expected a JSON object, got {_json_type(value)}")
    return value


def _json_type(value) -> str:
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


def _quote(text: str, limit: int = 60) -> str:
    """repr() of a user-supplied string, shortened so messages stay readable."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _show(value, limit: int = 60) -> str:
    """A JSON value as the user wrote it, shortened."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _unknown_key(obj: dict, allowed: frozenset) -> str:
    key = next(key for key in obj if key not in allowed)
    return f"unknown key {_quote(key)}"


def _string_problem(obj: dict, key: str, label: str | None = None) -> str | None:
    """Problem with a required string field ``obj[key]``, or None."""
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return None
    label = label or key
    if value is _MISSING:
        return f"missing '{label}'"
    return f"'{label}' must be a string, got {_json_type(value)}"


# --------------------------------------------------------------------------
# Fine-tune line rules (OpenAI chat fine-tuning format)


def _fine_tune_problem(example: dict) -> str | None:
    """The first problem with one fine-tune example, or None if it is valid."""
    if not _EXAMPLE_KEYS.issuperset(example):
        return _unknown_key(example, _EXAMPLE_KEYS)
    messages = example.get("messages", _MISSING)
    if messages is _MISSING:
        return "missing 'messages'"
    if type(messages) is not list or not messages:
        return "'messages' must be a non-empty list"
    split = example.get("split", _MISSING)
    if split is not _MISSING and split != "TRAIN" and split != "TEST":
        return f"'split' must be \"TRAIN\" or \"TEST\", got {_show(split)}"
    if "tools" in example:
        problem = _tools_problem(example["tools"])
        if problem:
            return problem
    if "parallel_tool_calls" in example and type(example["parallel_tool_calls"]) is not bool:
        return f"'parallel_tool_calls' must be true or false, got {_show(example['parallel_tool_calls'])}"
    return _messages_problem(messages)


def _messages_problem(messages: list) -> str | None:
    has_assistant = has_trained_assistant = False
    for index, message in enumerate(messages, 1):
        problem = _message_problem(message)
        if problem:
            return f"message {index}: {problem}"
        if message["role"] == "assistant":
            has_assistant = True
            if message.get("weight", 1):
                if index == 1:
                    # Nothing before it to answer: the trainer has no prompt to condition on.
                    return "message 1: a trained assistant message cannot come first; start with a user or system message"
                has_trained_assistant = True
    if not has_assistant:
        return "no assistant message"
    if not has_trained_assistant:
        return "every assistant message has weight 0, nothing to train on"
    return None


def _message_problem(message) -> str | None:
    if type(message) is not dict:
        return f"must be an object, got {_json_type(message)}"
    role = message.get("role", _MISSING)
    if role is _MISSING:
        return "missing 'role'"
    if type(role) is not str:
        return f"'role' must be a string, got {_json_type(role)}"
    if role not in _ROLES:
        return f"unknown role {_quote(role)} (expected {_ROLE_NAMES})"
    if not _MESSAGE_KEYS.issuperset(message):
        return _unknown_key(message, _MESSAGE_KEYS)
    has_tool_calls = "tool_calls" in message
    if has_tool_calls:
        if role != "assistant":
            return "'tool_calls' is only allowed on assistant messages"
        problem = _tool_calls_problem(message["tool_calls"])
        if problem:
            return problem
    # An assistant message that calls tools needs no text.
    problem = _content_problem(message.get("content", _MISSING), optional=has_tool_calls)
    if problem:
        return problem
    if len(message) > 2:  # role and content are the common case; check the rarer keys
        return _optional_message_keys_problem(message, role)
    return None


def _content_problem(content, optional: bool) -> str | None:
    if type(content) is str:
        return None if content or optional else "empty 'content'"
    if content is _MISSING:
        return None if optional else "missing 'content'"
    if content is None and optional:
        return None
    if type(content) is list:
        return "'content' as a list of parts is not supported; use a string"
    return f"'content' must be a string, got {_json_type(content)}"


def _optional_message_keys_problem(message: dict, role: str) -> str | None:
    if "name" in message and type(message["name"]) is not str:
        return f"'name' must be a string, got {_json_type(message['name'])}"
    if "tool_call_id" in message:
        if role != "tool":
            return "'tool_call_id' is only allowed on tool messages"
        if type(message["tool_call_id"]) is not str:
            return f"'tool_call_id' must be a string, got {_json_type(message['tool_call_id'])}"
    if "weight" in message:
        if role != "assistant":
            return "'weight' is only allowed on assistant messages"
        weight = message["weight"]
        if type(weight) is not int or weight not in (0, 1):  # type() check rejects true/false
            return f"'weight' must be 0 or 1, got {_show(weight)}"
    return None


def _tool_calls_problem(tool_calls) -> str | None:
    if type(tool_calls) is not list or not tool_calls:
        return "'tool_calls' must be a non-empty list"
    for index, call in enumerate(tool_calls, 1):
        problem = _tool_call_problem(call)
        if problem:
            return f"tool call {index}: {problem}"
    return None


def _tool_call_problem(call) -> str | None:
    if type(call) is not dict:
        return f"must be an object, got {_json_type(call)}"
    problem = _string_problem(call, "id")
    if problem:
        return problem
    if call.get("type") != "function":
        return "'type' must be \"function\""
    function = call.get("function")
    if type(function) is not dict:
        return "'function' must be an object"
    return (_string_problem(function, "name", "function.name")
            or _string_problem(function, "arguments", "function.arguments"))


def _tools_problem(tools) -> str | None:
    if type(tools) is not list:
        return f"'tools' must be a list, got {_json_type(tools)}"
    for index, tool in enumerate(tools, 1):
        problem = _tool_problem(tool)
        if problem:
            return f"tool {index} in 'tools': {problem}"
    return None


def _tool_problem(tool) -> str | None:
    if type(tool) is not dict:
        return f"must be an object, got {_json_type(tool)}"
    if tool.get("type") != "function":
        return "'type' must be \"function\""
    function = tool.get("function")
    if type(function) is not dict:
        return "'function' must be an object"
    problem = _string_problem(function, "name", "function.name")
    if problem:
        return problem
    if "description" in function and type(function["description"]) is not str:
        return "'function.description' must be a string"
    if "parameters" in function and type(function["parameters"]) is not dict:
        return "'function.parameters' must be an object"
    return None


# --------------------------------------------------------------------------
# The TEST split


def _seed_key(seed: int) -> bytes:
    return str(int(seed)).encode("ascii")


class TestDraw:
    """Deterministic 10% test draw, shared with the trainer so training sees the same split.

    Lines are ranked by a seeded hash of their bytes, so the draw depends on
    the lines' content and the seed, not on their order in the file. Ties
    (identical lines) are broken by line number.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, seed: int = DEFAULT_SPLIT_SEED) -> None:
        self.seed = seed
        self._key = _seed_key(seed)
        self._hashes = array("Q")
        self._line_numbers = array("Q")

    @staticmethod
    def test_size(candidates: int) -> int:
        """How many of `candidates` lines without an explicit split go to TEST."""
        if candidates < 2:
            return 0
        return max(1, round(candidates * TEST_FRACTION))

    def add(self, line_no: int, line: bytes) -> None:
        """Add a line (raw bytes WITHOUT the terminator) that has no explicit "split"."""
        digest = hashlib.blake2b(line, digest_size=8, key=self._key).digest()
        self._hashes.append(int.from_bytes(digest, "big"))
        self._line_numbers.append(line_no)

    def __len__(self) -> int:
        return len(self._hashes)

    def test_lines(self) -> set[int]:
        """Line numbers drawn into TEST: the lowest hashes."""
        lowest = heapq.nsmallest(self.test_size(len(self)), zip(self._hashes, self._line_numbers))
        return {line_no for _, line_no in lowest}


def jsonl_objects(chunks: Iterable[bytes]) -> Iterator[tuple[int, dict]]:
    """For an already-validated file: yields (line_no, object) for every
    non-blank line. Raises ValueError on a line that is not a JSON object."""
    for line_no, line in _all_lines(_LineReader(), chunks):
        if line is None:
            raise ValueError(f"line {line_no}: {_TOO_LONG}")
        if not line or line.isspace():
            continue
        try:
            yield line_no, _parse_object(line)
        except _LineProblem as problem:
            raise ValueError(f"line {line_no}: {problem}") from None


def split_lines(chunks: Iterable[bytes], seed: int = DEFAULT_SPLIT_SEED
                ) -> Iterator[tuple[int, dict, str]]:
    """For an already-validated fine-tune file: yields (line_no, example, "TRAIN"|"TEST")
    for every example, in file order, with exactly the split the validation report counted.

    Raises ValueError on a line that is not a JSON object (the file was not validated).
    """
    reader = _LineReader()
    draw = TestDraw(seed)
    examples: list[tuple[int, dict]] = []
    for line_no, line in _all_lines(reader, chunks):
        if line is None:
            raise ValueError(f"line {line_no}: {_TOO_LONG}")
        if not line or line.isspace():
            continue
        try:
            example = _parse_object(line)
        except _LineProblem as problem:
            raise ValueError(f"line {line_no}: {problem}") from None
        if "split" not in example:
            draw.add(line_no, line)
        examples.append((line_no, example))
    test = draw.test_lines()
    for line_no, example in examples:
        split = example.get("split") or ("TEST" if line_no in test else "TRAIN")
        yield line_no, example, split


def _all_lines(reader: _LineReader, chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes | None]]:
    for chunk in chunks:
        yield from reader.feed(chunk if type(chunk) is bytes else bytes(chunk))
    yield from reader.finish()


# --------------------------------------------------------------------------
# Validators


class _JsonlValidator:
    """Shared plumbing: lines, blank lines, JSON parsing, error collection."""

    purpose = ""

    def __init__(self) -> None:
        self._reader = _LineReader()
        self._errors = _ErrorLog()
        self._blank_lines = 0
        self._content_lines = 0  # non-blank lines, valid or not
        self._result: ValidationResult | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an unfinished line held in memory (never more than MAX_LINE_BYTES)."""
        return self._reader.buffered_bytes

    def feed(self, chunk: bytes) -> None:
        if self._result is not None:
            raise RuntimeError("feed() called after finish()")
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        take_line = self._take_line
        for line_no, line in self._reader.feed(chunk):
            take_line(line_no, line)

    def finish(self) -> ValidationResult:
        if self._result is None:
            for line_no, line in self._reader.finish():
                self._take_line(line_no, line)
            self._result = self._verdict()
        return self._result

    def _take_line(self, line_no: int, line: bytes | None) -> None:
        if line is None:
            self._content_lines += 1
            self._errors.add(line_no, _TOO_LONG)
            return
        if not line or line.isspace():
            self._blank_lines += 1
            return
        self._content_lines += 1
        try:
            obj = _parse_object(line)
        except _LineProblem as problem:
            self._errors.add(line_no, str(problem))
            return
        problem = self._line_problem(line_no, obj)
        if problem:
            self._errors.add(line_no, problem)
        else:
            self._record(line_no, line, obj)

    def _verdict(self) -> ValidationResult:
        if self._content_lines == 0:
            self._errors.add_file_problem("the file is empty")
        elif self._errors.count == 0:
            problem = self._file_problem()
            if problem:
                self._errors.add_file_problem(problem)
        ok = self._errors.count == 0
        return ValidationResult(ok=ok, errors=list(self._errors.kept),
                                error_count=self._errors.count,
                                report=self._report() if ok else None, purpose=self.purpose)

    # Per purpose:
    def _line_problem(self, line_no: int, obj: dict) -> str | None:
        raise NotImplementedError

    def _record(self, line_no: int, line: bytes, obj: dict) -> None:
        raise NotImplementedError

    def _file_problem(self) -> str | None:
        return None

    def _report(self) -> dict:
        raise NotImplementedError


class FineTuneValidator(_JsonlValidator):
    """Validates a chat fine-tuning file (OpenAI format) as it streams in."""

    purpose = "fine-tune"

    def __init__(self, split_seed: int = DEFAULT_SPLIT_SEED) -> None:
        super().__init__()
        self.split_seed = split_seed
        self._stats = _FineTuneStats()

    def _line_problem(self, line_no: int, example: dict) -> str | None:
        return _fine_tune_problem(example)

    def _record(self, line_no: int, line: bytes, example: dict) -> None:
        self._stats.add(line_no, line, example)

    def _file_problem(self) -> str | None:
        examples = self._stats.examples
        if examples < MIN_EXAMPLES:
            return f"the file has {_plural(examples, 'example')}; at least {MIN_EXAMPLES} are needed"
        return None

    def _report(self) -> dict:
        return self._stats.report(lines=self._reader.line_count, blank_lines=self._blank_lines,
                                  seed=self.split_seed)


class _FineTuneStats:
    """Numbers about valid fine-tune examples, kept compact for huge files."""

    def __init__(self) -> None:
        # One entry per example; 'I' (4 bytes) is plenty since a line is at most 8 MiB.
        self.messages = array("I")
        self.characters = array("I")
        self.tokens = array("I")
        self.role_counts = dict.fromkeys(("system", "user", "assistant", "tool"), 0)
        self.assistant_weight_0 = 0
        self.examples_with_weight_0 = 0
        self.examples_with_system_prompt = 0
        self.system_prompt_hashes: set[int] = set()
        self.system_prompts_capped = False
        self.examples_with_tools = 0
        self.not_ending_with_assistant = 0
        self.long_examples = 0
        self.explicit_train = self.explicit_test = self.unsplit = 0
        self.first_lines = _FirstLineIndex()
        self.duplicate_count = 0
        self.duplicate_examples: list[dict] = []

    @property
    def examples(self) -> int:
        return len(self.messages)

    def add(self, line_no: int, line: bytes, example: dict) -> None:
        messages = example["messages"]
        role_counts = self.role_counts
        characters = weight_0 = 0
        system_prompt = None
        uses_tools = bool(example.get("tools"))
        for message in messages:
            role = message["role"]
            role_counts[role] += 1
            content = message.get("content")
            if content:
                characters += len(content)
            if role == "assistant":
                if message.get("weight") == 0:
                    weight_0 += 1
                if "tool_calls" in message:
                    uses_tools = True
            elif role == "system" and system_prompt is None:
                system_prompt = content
        tokens = _estimate_tokens(characters, len(messages))
        self.messages.append(len(messages))
        self.characters.append(characters)
        self.tokens.append(tokens)
        self.long_examples += tokens > LONG_EXAMPLE_TOKENS
        self.examples_with_tools += uses_tools
        self.not_ending_with_assistant += messages[-1]["role"] != "assistant"
        if weight_0:
            self.assistant_weight_0 += weight_0
            self.examples_with_weight_0 += 1
        if system_prompt is not None:
            self._add_system_prompt(system_prompt)
        self._add_split(example.get("split"))
        self._add_line_hash(line_no, line)

    def _add_system_prompt(self, prompt: str) -> None:
        self.examples_with_system_prompt += 1
        digest = hash(prompt)
        if len(self.system_prompt_hashes) < MAX_TRACKED_SYSTEM_PROMPTS:
            self.system_prompt_hashes.add(digest)
        elif digest not in self.system_prompt_hashes:
            self.system_prompts_capped = True

    def _add_split(self, split: str | None) -> None:
        if split is None:
            self.unsplit += 1
        elif split == "TEST":
            self.explicit_test += 1
        else:
            self.explicit_train += 1

    def _add_line_hash(self, line_no: int, line: bytes) -> None:
        first_line = self.first_lines.first_line(hash(line), line_no)
        if first_line != line_no:
            self.duplicate_count += 1
            if len(self.duplicate_examples) < MAX_DUPLICATE_EXAMPLES:
                self.duplicate_examples.append({"line": line_no, "duplicate_of": first_line})

    def report(self, lines: int, blank_lines: int, seed: int) -> dict:
        token_summary = _number_summary(self.tokens)
        token_summary["total"] = sum(self.tokens)
        token_summary["histogram"] = _length_histogram(self.tokens)
        token_summary["method"] = "characters / 4, plus 4 per message"
        split = self._split_report(seed)
        return {
            "purpose": "fine-tune",
            "lines": lines,
            "blank_lines": blank_lines,
            "examples": self.examples,
            "split": split,
            "messages_per_example": _number_summary(self.messages),
            "roles": dict(self.role_counts),
            "assistant_messages_weight_0": self.assistant_weight_0,
            "examples_with_system_prompt": self.examples_with_system_prompt,
            "distinct_system_prompts": len(self.system_prompt_hashes),
            "characters": _number_summary(self.characters),
            "estimated_tokens": token_summary,
            "examples_with_tools": self.examples_with_tools,
            "duplicates": {"count": self.duplicate_count, "examples": list(self.duplicate_examples)},
            "warnings": self._warnings(split),
        }

    def _split_report(self, seed: int) -> dict:
        drawn_test = TestDraw.test_size(self.unsplit)
        drawn_train = self.unsplit - drawn_test
        explicit = self.explicit_train + self.explicit_test
        if explicit == 0:
            method = "hash_draw"
        elif self.unsplit == 0:
            method = "explicit"
        else:
            method = "mixed"
        train, test = self.explicit_train + drawn_train, self.explicit_test + drawn_test
        return {
            "method": method, "seed": seed, "test_fraction": TEST_FRACTION,
            "explicit_train": self.explicit_train, "explicit_test": self.explicit_test,
            "drawn_train": drawn_train, "drawn_test": drawn_test,
            "train": train, "test": test,
            "description": self._describe_split(method, seed, drawn_train, drawn_test),
        }

    def _describe_split(self, method: str, seed: int, drawn_train: int, drawn_test: int) -> str:
        draw = (f"a seeded hash draw (seed {seed}, {TEST_FRACTION:.0%} to test): "
                f"{drawn_train} train, {drawn_test} test.")
        if method == "hash_draw":
            return f"All {_plural(self.unsplit, 'example')} were split by {draw}"
        explicit = self.explicit_train + self.explicit_test
        chose = (f"{_plural(explicit, 'line')} chose {'its' if explicit == 1 else 'their'} "
                 f"split with the 'split' key ({self.explicit_train} train, {self.explicit_test} test)")
        if method == "explicit":
            return f"All {chose}."
        other = f"the other {self.unsplit} {'was' if self.unsplit == 1 else 'were'}"
        return f"{chose}; {other} split by {draw}"

    def _warnings(self, split: dict) -> list[str]:
        warnings = []
        if self.duplicate_count:
            first = self.duplicate_examples[0]
            warnings.append(
                f"{_plural(self.duplicate_count, 'line')} exactly "
                f"{'repeats' if self.duplicate_count == 1 else 'repeat'} an earlier line "
                f"(e.g. line {first['line']} repeats line {first['duplicate_of']}); "
                "duplicates get extra weight in training, remove them unless that is intended")
        if self.long_examples:
            warnings.append(
                f"{_plural(self.long_examples, 'example')} "
                f"{'is' if self.long_examples == 1 else 'are'} longer than "
                f"{LONG_EXAMPLE_TOKENS} estimated tokens and may be truncated")
        warnings += self._system_prompt_warnings()
        if split["test"] == 0:
            warnings.append(
                "no TEST examples: \"split\": \"TRAIN\" keys leave too few lines for the seeded "
                "draw, so there is nothing to evaluate on; add \"split\": \"TEST\" to some lines "
                "(or remove \"split\" from some lines to let the draw choose)")
        if self.not_ending_with_assistant:
            warnings.append(
                f"{_plural(self.not_ending_with_assistant, 'example')} "
                f"{'ends' if self.not_ending_with_assistant == 1 else 'end'} with a message "
                "that is not from the assistant; evaluation uses the last assistant message as "
                "the reference answer, so the messages after it are not evaluated")
        if self.examples_with_weight_0:
            warnings.append(
                f"{_plural(self.examples_with_weight_0, 'example')} "
                f"{'has' if self.examples_with_weight_0 == 1 else 'have'} assistant messages "
                "with weight 0; those messages are context only and are not trained on")
        return warnings

    def _system_prompt_warnings(self) -> list[str]:
        if self.examples_with_system_prompt == 0:
            return ["no example has a system prompt; that is fine, but then call the fine-tuned "
                    "model without one too, or add the system prompt you will use in production "
                    "to every example"]
        if self.examples_with_system_prompt == self.examples and len(self.system_prompt_hashes) == 1:
            return ["all examples share one system prompt; use exactly that system prompt when "
                    "calling the fine-tuned model, since it has only learned to answer under it"]
        if self.system_prompts_capped:
            return [f"more than {MAX_TRACKED_SYSTEM_PROMPTS} distinct system prompts; "
                    f"'distinct_system_prompts' stops counting at {MAX_TRACKED_SYSTEM_PROMPTS}"]
        return []


class _FirstLineIndex:
    """Line hash -> the first line with that hash, for duplicate detection.

    An open-addressing table in two flat arrays: about 24 bytes a line where a
    dict of ints takes ~100, which keeps a 1 GB upload's memory flat. Hashes are
    Python's 64-bit hash of the line; a collision (about 1 in 10^7 for a million
    lines) would only misreport one duplicate."""

    _EMPTY = 0

    def __init__(self) -> None:
        self._hashes = array("Q", bytes(8 * 1024))
        self._lines = array("I", bytes(4 * 1024))
        self._used = 0

    def first_line(self, line_hash: int, line_no: int) -> int:
        """The first line seen with `line_hash`; records `line_no` if it is the first."""
        key = (line_hash & 0xFFFF_FFFF_FFFF_FFFF) | 1  # never _EMPTY
        hashes = self._hashes
        mask = len(hashes) - 1
        slot = key & mask
        while True:
            found = hashes[slot]
            if found == key:
                return self._lines[slot]
            if found == self._EMPTY:
                break
            slot = (slot + 1) & mask
        hashes[slot] = key
        self._lines[slot] = line_no
        self._used += 1
        if self._used * 2 > len(hashes):
            self._grow()
        return line_no

    def _grow(self) -> None:
        old_hashes, old_lines = self._hashes, self._lines
        size = len(old_hashes) * 2
        self._hashes = array("Q", bytes(8 * size))
        self._lines = array("I", bytes(4 * size))
        mask = size - 1
        for key, line_no in zip(old_hashes, old_lines):
            if key == self._EMPTY:
                continue
            slot = key & mask
            while self._hashes[slot] != self._EMPTY:
                slot = (slot + 1) & mask
            self._hashes[slot] = key
            self._lines[slot] = line_no


def _estimate_tokens(characters: int, messages: int) -> int:
    # Rough rule of thumb (about 4 characters per token, plus per-message overhead).
    return -(-characters // 4) + 4 * messages


def _number_summary(values: array) -> dict:
    count = len(values)
    if not count:
        return {"min": 0, "mean": 0.0, "max": 0, "p95": 0}
    return {"min": min(values), "mean": round(sum(values) / count, 2),
            "max": max(values), "p95": _p95(values)}


def _length_histogram(values: array) -> list[dict]:
    """Examples per length bucket, doubling widths (0-15, 16-31, 32-63, …):
    token lengths are long-tailed, so equal widths would hide the short ones.
    Empty buckets between the shortest and longest are kept."""
    counts = Counter(max(value.bit_length(), 4) for value in values)
    if not counts:
        return []
    buckets = []
    for bits in range(min(counts), max(counts) + 1):
        low = 0 if bits == 4 else 1 << (bits - 1)
        buckets.append({"min": low, "max": (1 << bits) - 1, "count": counts.get(bits, 0)})
    return buckets


def _p95(values: array) -> int:
    """Nearest-rank 95th percentile, keeping only the top 5% in memory."""
    rank = (95 * len(values) + 99) // 100  # ceil(0.95 * n) in exact integer arithmetic
    return heapq.nlargest(len(values) - rank + 1, values)[-1]


class BatchValidator(_JsonlValidator):
    """Validates an OpenAI Batch API input file (chat completions requests)."""

    purpose = "batch"

    def __init__(self) -> None:
        super().__init__()
        self._first_line_by_custom_id: dict[str, int] = {}
        self._requests = 0
        self._models: dict[str, int] = {}
        self._models_capped = False

    def _line_problem(self, line_no: int, request: dict) -> str | None:
        if not _BATCH_KEY_SET.issuperset(request):
            return _unknown_key(request, _BATCH_KEY_SET)
        for key in _BATCH_KEYS:
            if key not in request:
                return f"missing '{key}'"
        problem = self._custom_id_problem(line_no, request["custom_id"])
        if problem:
            return problem
        if request["method"] != _BATCH_METHOD:
            return f"'method' must be \"{_BATCH_METHOD}\", got {_show(request['method'])}"
        if request["url"] != _BATCH_URL:
            return f"'url' must be \"{_BATCH_URL}\", got {_show(request['url'])}"
        return _batch_body_problem(request["body"])

    def _custom_id_problem(self, line_no: int, custom_id) -> str | None:
        if type(custom_id) is not str or not custom_id:
            return "'custom_id' must be a non-empty string"
        # Claimed even if the rest of the line is bad: a later repeat is still a repeat.
        first_line = self._first_line_by_custom_id.setdefault(custom_id, line_no)
        if first_line != line_no:
            return f"custom_id {_quote(custom_id)} repeats line {first_line}"
        return None

    def _record(self, line_no: int, line: bytes, request: dict) -> None:
        self._requests += 1
        model = request["body"]["model"]
        if model in self._models or len(self._models) < MAX_TRACKED_MODELS:
            self._models[model] = self._models.get(model, 0) + 1
        else:
            self._models_capped = True

    def _report(self) -> dict:
        return {"purpose": "batch", "lines": self._reader.line_count,
                "blank_lines": self._blank_lines, "requests": self._requests,
                "models": dict(self._models), "warnings": self._warnings()}

    def _warnings(self) -> list[str]:
        warnings = []
        if len(self._models) > 1:
            warnings.append(f"the requests use {len(self._models)} different models; some batch "
                            "services (OpenAI's among them) accept only one model per file")
        if self._models_capped:
            warnings.append(f"more than {MAX_TRACKED_MODELS} distinct models; 'models' counts "
                            f"only the first {MAX_TRACKED_MODELS}")
        return warnings


def _batch_body_problem(body) -> str | None:
    if type(body) is not dict:
        return f"'body' must be an object, got {_json_type(body)}"
    problem = _string_problem(body, "model", "body.model")
    if problem:
        return problem
    if not body["model"]:
        return "'body.model' must not be empty"
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        return "'body.messages' must be a non-empty list"
    for index, message in enumerate(messages, 1):
        problem = _batch_message_problem(message)
        if problem:
            return f"body message {index}: {problem}"
    return None


def _batch_message_problem(message) -> str | None:
    if type(message) is not dict:
        return f"must be an object, got {_json_type(message)}"
    problem = _string_problem(message, "role")
    if problem:
        return problem
    if message["role"] not in _ROLES:
        return f"unknown role {_quote(message['role'])} (expected {_ROLE_NAMES})"
    return _string_problem(message, "content")


def validator_for(purpose: str, split_seed: int = DEFAULT_SPLIT_SEED):
    """The streaming validator for a file purpose: "fine-tune" or "batch"."""
    if purpose == "fine-tune":
        return FineTuneValidator(split_seed)
    if purpose == "batch":
        return BatchValidator()
    raise ValueError(f"unknown file purpose {purpose!r} (expected 'fine-tune' or 'batch')")
