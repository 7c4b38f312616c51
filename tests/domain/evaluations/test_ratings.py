"""Ratings from pairwise judgments: the counts per pair, and Bradley–Terry
ratings that recover known strengths from judgments drawn with them."""

import math
import random

import pytest

from domain.evaluations.ratings import FIRST, SECOND, TIE, Game, pair_records, ratings


def test_pair_records_count_both_orders_from_model_a_side():
    games = [
        Game(0, "a", "b", FIRST), Game(0, "b", "a", SECOND),  # a wins in both orders
        Game(1, "a", "b", TIE), Game(1, "b", "a", FIRST),  # a tie, then b wins
        Game(2, "b", "a", None),  # unreadable
        Game(2, "a", "c", SECOND),
    ]
    records = pair_records(games, ["a", "b", "c"])
    assert records == [
        {"model_a": "a", "model_b": "b", "wins": 2, "ties": 1, "losses": 1, "invalid": 1},
        {"model_a": "a", "model_b": "c", "wins": 0, "ties": 0, "losses": 1, "invalid": 0},
        {"model_a": "b", "model_b": "c", "wins": 0, "ties": 0, "losses": 0, "invalid": 0},
    ]


def synthetic_games(true_ratings: dict[str, float], items: int, seed: int, tie_rate: float = 0.0) -> list[Game]:
    """Every pair judged in both orders per item, outcomes drawn from the
    Bradley–Terry model with these Elo ratings (and a fixed share of ties,
    which the model does not produce: they pull the ratings together)."""
    generator = random.Random(seed)
    models = list(true_ratings)
    games = []
    for item in range(items):
        for k, a in enumerate(models):
            for b in models[k + 1 :]:
                for first, second in ((a, b), (b, a)):
                    p_first = 1 / (1 + 10 ** ((true_ratings[second] - true_ratings[first]) / 400))
                    draw = generator.random()
                    winner = TIE if draw < tie_rate else FIRST if generator.random() < p_first else SECOND
                    games.append(Game(item, first, second, winner))
    return games


def test_ratings_recover_known_strengths_and_their_intervals_cover_them():
    truth = {"weak": 800.0, "middle": 1000.0, "strong": 1200.0}  # geometric mean at 1000
    games = synthetic_games(truth, items=400, seed=3)
    result = {record["model"]: record for record in ratings(games, list(truth), seed=1)}
    assert [r["model"] for r in ratings(games, list(truth), seed=1)] == ["strong", "middle", "weak"]
    for model, rating in truth.items():
        record = result[model]
        assert record["rating"] == pytest.approx(rating, abs=40), record
        assert record["ci_low"] <= rating <= record["ci_high"], record
        assert record["ci_high"] - record["ci_low"] < 120, record
        assert record["games"] == 400 * 2 * 2  # two opponents, both orders
    # Ties count half: a fixed share of them narrows the gaps.
    tied = {r["model"]: r for r in ratings(synthetic_games(truth, items=400, seed=3, tie_rate=0.3), list(truth), seed=1)}
    assert 800 < tied["weak"]["rating"] < result["middle"]["rating"] < tied["strong"]["rating"] < 1200
    assert tied["strong"]["rating"] < result["strong"]["rating"]
    # Fewer items: wider intervals.
    few = {r["model"]: r for r in ratings(synthetic_games(truth, items=25, seed=3), list(truth), seed=1)}
    assert few["middle"]["ci_high"] - few["middle"]["ci_low"] > result["middle"]["ci_high"] - result["middle"]["ci_low"]


def test_ratings_are_reproducible_and_finite_when_one_model_always_wins():
    games = [Game(item, first, second, FIRST if first == "best" else SECOND)
             for item in range(10) for first, second in (("best", "rest"), ("rest", "best"))]
    once = ratings(games, ["rest", "best"], seed=7)
    assert once == ratings(list(games), ["rest", "best"], seed=7)
    best, rest = once
    assert best["model"] == "best" and all(math.isfinite(v) for v in (best["rating"], best["ci_low"], rest["ci_high"]))
    assert best["rating"] > 1300 and rest["rating"] < 700
    assert best["rating"] + rest["rating"] == pytest.approx(2000, abs=0.2)


def test_no_valid_game_gives_no_ratings():
    assert ratings([Game(0, "a", "b", None)], ["a", "b"]) == []
    assert ratings([], ["a", "b"]) == []
