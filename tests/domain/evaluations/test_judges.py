"""Judge prompts and the lenient reading of judges' answers: what cannot be
read is invalid, never an error."""

import pytest

from domain.evaluations.judges import (
    DEFAULT_RUBRICS, judge_calls, pairwise_prompt, parse_pairwise, parse_reference, reference_prompt)


@pytest.mark.parametrize("raw, score, rationale", [
    ("Score: 4 - close, misses the unit", 4, "close, misses the unit"),
    ("**Score**: 5\nIdentical to the reference.", 5, "Identical to the reference."),
    ("score=2 — wrong city", 2, "wrong city"),
    ("3/5 partly right", 3, "partly right"),
    ("I would say Score: 1. Off topic.", 1, "Off topic."),
])
def test_reference_scores_are_read_leniently(raw, score, rationale):
    verdict = parse_reference(raw)
    assert (verdict.score, verdict.rationale, verdict.valid) == (score, rationale, True)


@pytest.mark.parametrize("raw", [None, "", "Score: 7", "Score: 4.5", "great answer!", "10 out of 10", "ééé\x00"])
def test_unreadable_reference_answers_are_invalid(raw):
    verdict = parse_reference(raw)
    assert verdict.score is None and not verdict.valid


@pytest.mark.parametrize("raw, winner", [
    ("Winner: A - matches the reference", "first"),
    ("winner = b", "second"),
    ("**Winner:** Tie - both wrong", "tie"),
    ("B. It is shorter.", "second"),
    ("tie", "tie"),
])
def test_pairwise_winners_are_read_leniently(raw, winner):
    assert parse_pairwise(raw).winner == winner


@pytest.mark.parametrize("raw", [None, "", "Winner: C", "Both are fine", "Answer A's tone is nicer"])
def test_unreadable_pairwise_answers_are_invalid(raw):
    assert not parse_pairwise(raw).valid


def test_prompts_quote_the_item_and_the_rubric():
    messages = [{"role": "user", "content": "Capital of France?"}]
    [system, user] = reference_prompt(None, messages, "Paris", "Lyon")
    assert system["role"] == "system" and DEFAULT_RUBRICS["reference"] in user["content"]
    assert "user: Capital of France?" in user["content"] and "Paris" in user["content"] and "Lyon" in user["content"]
    [_, user] = pairwise_prompt("Prefer brevity.", "Q:", "x", "first answer", "second answer")
    assert user["content"].startswith("Prefer brevity.")
    assert user["content"].index("first answer") < user["content"].index("second answer")
    assert judge_calls("reference", 10, 3) == 30 and judge_calls("pairwise", 10, 3) == 60


@pytest.mark.parametrize("raw", ["A good answer would say moo", "a", "Both wrong, A is closer"])
def test_prose_starting_with_a_letter_is_not_a_verdict(raw):
    assert not parse_pairwise(raw).valid
