"""The verdict on a file: valid or not, the errors by line, a message a
person reads, and (when valid) the report."""

from __future__ import annotations

from dataclasses import dataclass

MAX_REPORTED_ERRORS = 20


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
            parts.append(plural(invalid_lines, "invalid line"))
        if file_problems:
            parts.append(plural(file_problems, "problem with the whole file",
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
            return (f"{plural(report['examples'], 'example')} "
                    f"({split['train']} train, {split['test']} test)")
        if "requests" in report:
            return plural(report["requests"], "request")
        return "no problems found"


class ErrorLog:
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


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"
