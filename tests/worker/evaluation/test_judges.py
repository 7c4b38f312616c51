"""The calls a judge makes and how its answers become judgments and games."""

from domain.evaluations.ratings import FIRST, SECOND, TIE, Game
from worker.evaluation.judges import games, judge_calls, judgment, reference_scores
from worker.evaluation.run import Item

ITEMS = [Item(index=0, line=1, prompt=[{"role": "user", "content": "2+2?"}], reference="4"),
         Item(index=1, line=2, prompt=[{"role": "user", "content": "3+3?"}], reference="6")]
OUTPUTS = {"a": ["4", "six"], "b": ["5", None], "c": ["4", "6"]}  # b's second call failed


def test_pairwise_judges_every_pair_in_both_orders_and_skips_missing_outputs():
    judge = {"kind": "pairwise", "model": "j", "rubric": None}
    calls = judge_calls(judge, ITEMS, ["a", "b", "c"], OUTPUTS)
    assert [(c.item, c.models, c.order) for c in calls[:6]] == [
        (0, ("a", "b"), 0), (0, ("b", "a"), 1), (0, ("a", "c"), 0), (0, ("c", "a"), 1), (0, ("b", "c"), 0), (0, ("c", "b"), 1)]
    assert len(calls) == 12
    # Answer A is the first model shown.
    first = calls[1].prompt[-1]["content"]
    assert first.index("[Answer A]\n5") < first.index("[Answer B]\n4")
    skipped = [c for c in calls if c.prompt is None]
    assert [(c.item, c.models) for c in skipped] == [(1, ("a", "b")), (1, ("b", "a")), (1, ("b", "c")), (1, ("c", "b"))]

    records = [judgment(judge, calls[0], "Winner: A - right"), judgment(judge, calls[1], "Winner: B"),
               judgment(judge, calls[2], "Winner: tie"), judgment(judge, calls[3], "I like both"),
               judgment(judge, skipped[0], None)]
    assert [(r["winner"], r["valid"]) for r in records] == [("a", True), ("a", True), ("tie", True), (None, False), (None, False)]
    assert records[0]["rationale"] == "right" and records[0]["prompt"] == calls[0].prompt and records[0]["judge"] == "j"
    assert games(records) == [Game(0, "a", "b", FIRST), Game(0, "b", "a", SECOND), Game(0, "a", "c", TIE),
                              Game(0, "c", "a", None), Game(1, "a", "b", None)]


def test_reference_judges_each_output_and_keeps_errors():
    judge = {"kind": "reference", "model": "j", "rubric": "Be strict."}
    calls = judge_calls(judge, ITEMS, ["a", "b"], OUTPUTS)
    assert [(c.item, c.models, c.prompt is None) for c in calls] == [
        (0, ("a",), False), (0, ("b",), False), (1, ("a",), False), (1, ("b",), True)]
    assert calls[0].prompt[-1]["content"].startswith("Be strict.")
    error = {"code": "timeout", "message": "no answer"}
    records = [judgment(judge, calls[0], "Score: 5 - same"), judgment(judge, calls[1], "Score: 2"),
               judgment(judge, calls[2], None, error)]
    assert [(r["score"], r["valid"]) for r in records] == [(5, True), (2, True), (None, False)]
    assert records[2]["error"] == error
    assert reference_scores(records) == {(0, "a"): [5], (0, "b"): [2]}
