"""The streaming validators: ``feed()`` takes chunks as they arrive and
``finish()`` gives the verdict (a ValidationResult).

Memory stays small however large the file is: one partial line (never more
than MAX_LINE_BYTES), compact per-example number arrays, a few counters and
one 64-bit hash per example for duplicate detection.

Each line is first offered to the fast path (typed.py: a typed msgspec
decoder, in C); a line it declines goes through ``parse_object`` and the
Python rules (rules.py), which give the verdict and the error message.
"""

from __future__ import annotations

from itertools import count

from domain.files.split import DEFAULT_SPLIT_SEED
from domain.files.validation.fine_tune_report import FineTuneStats, summarize
from domain.files.validation.format_reports import (
    PreferenceStats, PromptCompletionStats, TextStats, summarize_preference, summarize_prompt_completion,
    summarize_text,
)
from domain.files.validation.formats import (
    CHAT, FORMAT_NAMES, PREFERENCE, PROMPT_COMPLETION, TEXT, UNKNOWN_FORMAT, detect_format,
)
from domain.files.validation.lines import TOO_LONG, LineProblem, LineReader, parse_object
from domain.files.validation.result import ErrorLog, ValidationResult, plural
from domain.files.validation.rules import (
    batch_request_problem, fine_tune_problem, preference_problem, prompt_completion_problem, text_problem,
)
from domain.files.validation.typed import (
    batch_request, fine_tune_summary, prompt_completion_summary, text_summary,
)

MIN_EXAMPLES = 10
MAX_TRACKED_MODELS = 100

# Per fine-tune format: the line rule, the summary of a valid line, the report's numbers.
_FORMATS = {
    CHAT: (fine_tune_problem, summarize, FineTuneStats),
    TEXT: (text_problem, summarize_text, TextStats),
    PROMPT_COMPLETION: (prompt_completion_problem, summarize_prompt_completion, PromptCompletionStats),
    PREFERENCE: (preference_problem, summarize_preference, PreferenceStats),
}


def _fast_path(format_: str):
    """The typed decoder (typed.py) giving a format's summaries, or None.
    Looked up when called, so tests can turn the fast path off."""
    if format_ == CHAT:
        return fine_tune_summary
    if format_ == TEXT:
        return text_summary
    if format_ == PROMPT_COMPLETION:
        return prompt_completion_summary
    return None


class _JsonlValidator:
    """Shared plumbing: lines, blank lines, JSON parsing, error collection.

    Each chunk's complete lines go to ``_take_lines`` together: the fast path
    first, then ``_take_line`` (the Python rules) for the lines it declined,
    always recording lines in file order."""

    purpose = ""

    def __init__(self) -> None:
        self._reader = LineReader()
        self._errors = ErrorLog()
        self._blank_lines = 0
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
        first = self._reader.line_count + 1
        lines = self._reader.feed_lines(chunk)
        if lines:
            self._take_lines(first, lines)

    def finish(self) -> ValidationResult:
        if self._result is None:
            first = self._reader.line_count + 1
            lines = [line for _, line in self._reader.finish()]
            if lines:
                self._take_lines(first, lines)
            self._result = self._verdict()
        return self._result

    def _take_line(self, line_no: int, line: bytes | None) -> dict | None:
        """A line the fast path declined: records it if it is blank, too long
        or breaks a rule; returns its object if it is valid, to be recorded."""
        if line is None:
            self._errors.add(line_no, TOO_LONG)
            return None
        if not line or line.isspace():
            self._blank_lines += 1
            return None
        try:
            obj = parse_object(line)
        except LineProblem as problem:
            self._errors.add(line_no, str(problem))
            return None
        problem = self._line_problem(line_no, obj)
        if problem:
            self._errors.add(line_no, problem)
            return None
        return obj

    def _verdict(self) -> ValidationResult:
        if self._reader.line_count == self._blank_lines:  # no line with content, valid or not
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
    def _take_lines(self, first: int, lines: list[bytes | None]) -> None:
        """Lines ``first``, ``first + 1``, …: the fast path, then ``_take_line``."""
        raise NotImplementedError

    def _line_problem(self, line_no: int, obj: dict) -> str | None:
        raise NotImplementedError

    def _file_problem(self) -> str | None:
        return None

    def _report(self) -> dict:
        raise NotImplementedError


class FineTuneValidator(_JsonlValidator):
    """Validates a fine-tuning file as it streams in: OpenAI chat, OpenAI
    preference pairs, prompt/completion or text lines (formats.py), one
    format a file. The first line whose keys name a format sets the file's;
    a line of another format is refused, naming that first line.

    Lines go through the fast path (typed.py) of the file's format (chat's
    until the format is known; preference lines have none), and those it
    declines through the Python rules."""

    purpose = "fine-tune"

    def __init__(self, split_seed: int = DEFAULT_SPLIT_SEED) -> None:
        super().__init__()
        self.split_seed = split_seed
        self.format: str | None = None
        self._format_line = 0
        self._stats = None

    def _set_format(self, format_: str, line_no: int) -> None:
        self.format, self._format_line = format_, line_no
        self._stats = _FORMATS[format_][2]()

    def _other_format(self, format_: str) -> str:
        return (f"a {FORMAT_NAMES[format_]} line, but the file's first example (line {self._format_line}) "
                f"is {FORMAT_NAMES[self.format]}; a file holds one format")

    def _take_lines(self, first: int, lines: list[bytes | None]) -> None:
        # The fast path of the file's format; until it is known, chat's.
        fast_format = self.format or CHAT
        fast = _fast_path(fast_format)
        if fast is None:
            summaries = [None] * len(lines)
        else:
            summaries = list(map(fast, lines))
            if all(summaries):  # the usual chunk: every line valid on the fast path (None: declined)
                if self.format is None:
                    self._set_format(CHAT, first)
                self._stats.add_many(range(first, first + len(lines)), lines, summaries)
                return
        numbers, valid_lines, valid = [], [], []
        for line_no, line, summary in zip(count(first), lines, summaries):
            if summary is None:
                example = self._take_line(line_no, line)
                if example is None:
                    continue
                summary = _FORMATS[self.format][1](example)
            elif self.format is None:
                self._set_format(fast_format, line_no)
            elif self.format != fast_format:  # a valid chat line after this chunk's first text line, say
                self._errors.add(line_no, self._other_format(fast_format))
                continue
            numbers.append(line_no)
            valid_lines.append(line)
            valid.append(summary)
        if valid:
            self._stats.add_many(numbers, valid_lines, valid)

    def _line_problem(self, line_no: int, example: dict) -> str | None:
        format_ = detect_format(example)
        if format_ is None:
            if self.format is None:
                return UNKNOWN_FORMAT
            format_ = self.format  # its rule names the missing key
        elif self.format is None:
            self._set_format(format_, line_no)
        elif format_ != self.format:
            return self._other_format(format_)
        return _FORMATS[format_][0](example)

    def _file_problem(self) -> str | None:
        examples = self._stats.examples if self._stats is not None else 0
        if examples < MIN_EXAMPLES:
            return f"the file has {plural(examples, 'example')}; at least {MIN_EXAMPLES} are needed"
        return None

    def _report(self) -> dict:
        return self._stats.report(lines=self._reader.line_count, blank_lines=self._blank_lines,
                                  seed=self.split_seed)


class BatchValidator(_JsonlValidator):
    """Validates an OpenAI Batch API input file (chat completions requests)."""

    purpose = "batch"

    def __init__(self) -> None:
        super().__init__()
        self._first_line_by_custom_id: dict[str, int] = {}
        self._requests = 0
        self._models: dict[str, int] = {}
        self._models_capped = False

    def _take_lines(self, first: int, lines: list[bytes | None]) -> None:
        # One line at a time, in order: custom_ids are claimed by bad lines too.
        first_line_by_custom_id = self._first_line_by_custom_id
        for line_no, line in zip(count(first), lines):
            request = batch_request(line)
            if request is not None:
                custom_id, model = request
                if first_line_by_custom_id.setdefault(custom_id, line_no) == line_no:
                    self._count_model(model)
                    continue
                # A repeated custom_id: the rules name the line it repeats.
            request = self._take_line(line_no, line)
            if request is not None:
                self._count_model(request["body"]["model"])

    def _line_problem(self, line_no: int, request: dict) -> str | None:
        return batch_request_problem(line_no, request, self._first_line_by_custom_id)

    def _count_model(self, model: str) -> None:
        self._requests += 1
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


def validator_for(purpose: str, split_seed: int = DEFAULT_SPLIT_SEED):
    """The streaming validator for a file purpose: "fine-tune" or "batch"."""
    if purpose == "fine-tune":
        return FineTuneValidator(split_seed)
    if purpose == "batch":
        return BatchValidator()
    raise ValueError(f"unknown file purpose {purpose!r} (expected 'fine-tune' or 'batch')")
