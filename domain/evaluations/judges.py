"""LLM judges: the prompts they are given and how their answers are read.
Pure Python: the worker builds and parses with it (worker/evaluation/run.py),
the API estimates the cost of a run before it starts.

A judge's answer is read leniently (any case, markdown bold, "=" or ":"),
and one that cannot be read is kept as written and counted "invalid": it
never fails the evaluation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REFERENCE, PAIRWISE = "reference", "pairwise"
TIE = "tie"

DEFAULT_RUBRICS = {
    REFERENCE: (
        "Grade how well the answer agrees with the reference answer in meaning and correctness. "
        "5: equivalent to the reference; 4: correct with minor omissions or extra detail; "
        "3: partly correct; 2: mostly wrong but related; 1: wrong, empty or off-topic."
    ),
    PAIRWISE: (
        "Decide which answer is better: the one that agrees with the reference answer in meaning and "
        "correctness, then the clearer and more concise one. Answer tie when they are equally good or equally bad."
    ),
}
# Each text quoted in a judge prompt is cut to this many characters.
QUOTE_CHARS = 4000
RATIONALE_CHARS = 300
SYSTEM = "You are a careful, impartial evaluator of answers written by AI assistants."


def prompt_text(prompt: list[dict] | str) -> str:
    """An item's prompt as plain text: messages as "role: content" lines."""
    if isinstance(prompt, str):
        return prompt
    lines = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        lines.append(f"{message.get('role', 'user')}: {content or ''}")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + " [...]"


def reference_prompt(rubric: str | None, prompt: list[dict] | str, reference: str, output: str) -> list[dict]:
    user = (
        f"{rubric or DEFAULT_RUBRICS[REFERENCE]}\n\n"
        f"[Question]\n{_quote(prompt_text(prompt))}\n\n"
        f"[Reference answer]\n{_quote(reference)}\n\n"
        f"[Answer to grade]\n{_quote(output)}\n\n"
        "Reply with one line: \"Score: N - reason\", where N is a whole number from 1 to 5 "
        "and the reason is one short sentence."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def pairwise_prompt(rubric: str | None, prompt: list[dict] | str, reference: str, first: str, second: str) -> list[dict]:
    user = (
        f"{rubric or DEFAULT_RUBRICS[PAIRWISE]}\n\n"
        f"[Question]\n{_quote(prompt_text(prompt))}\n\n"
        f"[Reference answer]\n{_quote(reference)}\n\n"
        f"[Answer A]\n{_quote(first)}\n\n"
        f"[Answer B]\n{_quote(second)}\n\n"
        "Reply with one line: \"Winner: A\", \"Winner: B\" or \"Winner: tie\", then \" - \" and one short reason."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_SCORE = re.compile(r"score\W{0,4}([1-5])(?!\d|\.\d)", re.IGNORECASE)
_LEADING_SCORE = re.compile(r"^\W{0,4}([1-5])(?:\s*/\s*5)?(?!\d|\.\d)")
_WINNER = re.compile(r"winner\W{0,4}(a|b|tie)\b", re.IGNORECASE)
# A bare verdict ("B.", "tie - both wrong"): only the letter or the word alone,
# so prose that starts with "A good answer..." is not read as a verdict.
_LEADING_WINNER = re.compile(r"^[*\s]{0,4}(A|B|[Tt]ie|TIE)[*\s]*(?:$|[-–—:.,)](?:\s|$))")


@dataclass(frozen=True)
class Verdict:
    score: int | None = None  # reference
    winner: str | None = None  # pairwise: "first", "second", "tie"
    rationale: str | None = None

    @property
    def valid(self) -> bool:
        return self.score is not None or self.winner is not None


def _rationale(raw: str, end: int) -> str | None:
    rest = raw[end:].strip().lstrip("-–—:.,*) ").strip()
    line = rest.splitlines()[0].strip() if rest else ""
    return line[:RATIONALE_CHARS] or None


def parse_reference(raw: str | None) -> Verdict:
    """A 1–5 score and the rest of its line as the rationale; Verdict() when unreadable."""
    if not raw:
        return Verdict()
    match = _SCORE.search(raw) or _LEADING_SCORE.match(raw.strip())
    if match is None:
        return Verdict()
    text = raw if match.re is _SCORE else raw.strip()
    return Verdict(score=int(match.group(1)), rationale=_rationale(text, match.end()))


def parse_pairwise(raw: str | None) -> Verdict:
    """"first" (answer A), "second" (B) or "tie"; Verdict() when unreadable."""
    if not raw:
        return Verdict()
    match = _WINNER.search(raw) or _LEADING_WINNER.match(raw.strip())
    if match is None:
        return Verdict()
    text = raw if match.re is _WINNER else raw.strip()
    winner = {"a": "first", "b": "second", "tie": TIE}[match.group(1).lower()]
    return Verdict(winner=winner, rationale=_rationale(text, match.end()))


def judge_calls(kind: str, items: int, models: int) -> int:
    """Reference: every model's output per item; pairwise: every pair per item, twice."""
    if kind == REFERENCE:
        return items * models
    return items * models * (models - 1)


def approximate_prompt_tokens(kind: str, rubric: str | None, example_chars: int, max_tokens: int) -> int:
    """One call's prompt, about 4 characters a token; each judged output counted at max_tokens."""
    fixed = len(SYSTEM) + len(rubric or DEFAULT_RUBRICS[kind]) + 200
    outputs = 1 if kind == REFERENCE else 2
    return (fixed + example_chars) // 4 + outputs * max_tokens
