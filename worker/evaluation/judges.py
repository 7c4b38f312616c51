"""The judges of an evaluation, once every model has answered: which calls
each judge makes, what its answers say, and the ratings that follow.

A reference judge is asked once per model and item; a pairwise judge once per
pair of models and item in each order (order 0: as the evaluation lists the
pair, shown as A then B; order 1: swapped), so a judge that prefers whatever
comes first favours nobody. An output that could not be made (an external
model's call failed) is not judged: its judgments are kept as invalid, with
no prompt sent. Generation (local judges through the decode loop, external
ones through their connection) is the run's (run.py); parsing is
domain/evaluations/judges.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.evaluations.judges import PAIRWISE, REFERENCE, TIE, pairwise_prompt, parse_pairwise, parse_reference, reference_prompt
from domain.evaluations.ratings import FIRST, SECOND, Game


@dataclass(frozen=True)
class JudgeCall:
    item: int
    models: tuple[str, ...]  # the judged model, or the pair in the order shown
    order: int
    prompt: list[dict] | None  # None: not asked (an output is missing)


def judge_calls(judge: dict, items, models: list[str], outputs: dict[str, list[str | None]]) -> list[JudgeCall]:
    """Every call `judge` makes, item by item. `outputs` is {model: output per item (None: failed)}."""
    calls = []
    for item in items:
        answers = {model: outputs[model][item.index] for model in models}
        if judge["kind"] == REFERENCE:
            for model in models:
                prompt = None if answers[model] is None else reference_prompt(
                    judge.get("rubric"), item.prompt, item.reference, answers[model])
                calls.append(JudgeCall(item.index, (model,), 0, prompt))
            continue
        for k, a in enumerate(models):
            for b in models[k + 1 :]:
                for order, (first, second) in enumerate(((a, b), (b, a))):
                    missing = answers[first] is None or answers[second] is None
                    prompt = None if missing else pairwise_prompt(
                        judge.get("rubric"), item.prompt, item.reference, answers[first], answers[second])
                    calls.append(JudgeCall(item.index, (first, second), order, prompt))
    return calls


def judgment(judge: dict, call: JudgeCall, raw: str | None, error: dict | None = None) -> dict:
    """What is saved per item: the judge, the prompt, the answer as written and what it says."""
    record = {
        "item": call.item,
        "kind": judge["kind"],
        "judge": judge["model"],
        "models": list(call.models),
        "order": call.order,
        "prompt": call.prompt or [],
        "raw": raw,
    }
    if judge["kind"] == REFERENCE:
        verdict = parse_reference(raw)
        record.update(score=verdict.score, rationale=verdict.rationale)
    else:
        verdict = parse_pairwise(raw)
        winner = {FIRST: call.models[0], SECOND: call.models[1], TIE: TIE}.get(verdict.winner)
        record.update(winner=winner, rationale=verdict.rationale)
    record["valid"] = verdict.valid
    if error is not None:
        record["error"] = error
    return record


def games(judgments: list[dict]) -> list[Game]:
    """The pairwise judgments as games for the ratings (invalid ones included, as None)."""
    out = []
    for record in judgments:
        if record["kind"] != PAIRWISE:
            continue
        first, second = record["models"]
        winner = {first: FIRST, second: SECOND, TIE: TIE}.get(record["winner"]) if record["valid"] else None
        out.append(Game(record["item"], first, second, winner))
    return out


def reference_scores(judgments: list[dict]) -> dict[tuple[int, str], list[int]]:
    """{(item, model): the reference judges' readable scores}."""
    scores: dict[tuple[int, str], list[int]] = {}
    for record in judgments:
        if record["kind"] == REFERENCE and record["score"] is not None:
            scores.setdefault((record["item"], record["models"][0]), []).append(record["score"])
    return scores
