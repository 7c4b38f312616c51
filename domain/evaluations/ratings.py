"""Ratings from pairwise judgments: win/tie/loss counts per pair of models and
Bradley–Terry ratings on the Elo scale with bootstrap confidence intervals.

Pure Python (the API side has no numpy): an evaluation compares at most 8
models, so every step works on an 8×8 table of games, not on the judgments.

A game is one judgment of one item with the models in one order; a pairwise
judge judges every pair twice (both orders), and both judgments count. The
winner scores 1, the loser 0, a tie 0.5 each; an invalid judgment (the judge's
answer could not be read) is counted but not played.

Bradley–Terry: P(i beats j) = p_i / (p_i + p_j), fitted by Hunter's MM
iteration (2004), with ties as half a win each. A model that won (or lost)
every game would have an infinite rating, so every pair also plays
`PRIOR_GAMES` virtual tied games: the ratings are pulled gently towards each
other and stay finite. The strengths are scaled to a geometric mean of 1 and
reported as ``1000 + 400·log10(p)`` (a 400-point gap: 10:1 odds).

Intervals: the items are resampled with replacement (all the judgments of an
item go together, since they share its difficulty) `BOOTSTRAP_ROUNDS` times
with a seeded generator, the ratings refitted each time, and the 2.5th and
97.5th percentiles reported. Same judgments and seed: same numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FIRST, SECOND, TIE = "first", "second", "tie"
PRIOR_GAMES = 1.0
BOOTSTRAP_ROUNDS = 200
CONFIDENCE = 0.95
BASE_RATING = 1000.0
SCALE = 400.0
_ITERATIONS = 1000
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Game:
    """One judgment: `first` was shown first; `winner` is FIRST, SECOND, TIE,
    or None when the judgment could not be read (invalid)."""

    item: int
    first: str
    second: str
    winner: str | None


def pair_records(games: Iterable[Game], models: Sequence[str]) -> list[dict]:
    """One record per pair of `models` (in their order, model_a before
    model_b): wins, ties and losses of model_a against model_b over both
    orders, and the invalid judgments of the pair."""
    position = {model: k for k, model in enumerate(models)}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for a, b in _pairs(models):
        counts[(a, b)] = {"wins": 0, "ties": 0, "losses": 0, "invalid": 0}
    for game in games:
        if game.first not in position or game.second not in position or game.first == game.second:
            continue
        a, b = sorted((game.first, game.second), key=position.__getitem__)
        record = counts[(a, b)]
        if game.winner is None:
            record["invalid"] += 1
        elif game.winner == TIE:
            record["ties"] += 1
        elif (game.winner == FIRST) == (game.first == a):
            record["wins"] += 1
        else:
            record["losses"] += 1
    return [{"model_a": a, "model_b": b, **record} for (a, b), record in counts.items()]


def _pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for k, a in enumerate(models) for b in models[k + 1 :]]


# A table: n[i][j] games between i and j, w[i][j] points i scored against j.
_Table = tuple[list[list[float]], list[list[float]]]


def _empty(size: int) -> _Table:
    return [[0.0] * size for _ in range(size)], [[0.0] * size for _ in range(size)]


def _item_tables(games: Iterable[Game], models: Sequence[str]) -> dict[int, list[tuple[int, int, float]]]:
    """Per item, its valid games as (i, j, points of i) with i shown first."""
    position = {model: k for k, model in enumerate(models)}
    per_item: dict[int, list[tuple[int, int, float]]] = {}
    for game in games:
        if game.winner is None or game.first not in position or game.second not in position:
            continue
        i, j = position[game.first], position[game.second]
        if i == j:
            continue
        points = {FIRST: 1.0, SECOND: 0.0, TIE: 0.5}.get(game.winner)
        if points is None:
            continue
        per_item.setdefault(game.item, []).append((i, j, points))
    return per_item


def _add(table: _Table, plays: list[tuple[int, int, float]], times: int = 1) -> None:
    n, w = table
    for i, j, points in plays:
        n[i][j] += times
        n[j][i] += times
        w[i][j] += points * times
        w[j][i] += (1.0 - points) * times


def fit_strengths(table: _Table) -> list[float]:
    """Bradley–Terry strengths (geometric mean 1) by MM iteration, every pair
    with PRIOR_GAMES virtual tied games."""
    n, w = table
    size = len(n)
    games = [[n[i][j] + (PRIOR_GAMES if i != j else 0.0) for j in range(size)] for i in range(size)]
    points = [sum(w[i][j] + (PRIOR_GAMES / 2 if i != j else 0.0) for j in range(size)) for i in range(size)]
    strengths = [1.0] * size
    for _ in range(_ITERATIONS):
        updated = []
        for i in range(size):
            denominator = sum(games[i][j] / (strengths[i] + strengths[j]) for j in range(size) if j != i)
            updated.append(points[i] / denominator if denominator > 0 else strengths[i])
        centre = math.exp(math.fsum(math.log(s) for s in updated) / size)
        updated = [s / centre for s in updated]
        change = max(abs(math.log(a) - math.log(b)) for a, b in zip(updated, strengths, strict=True))
        strengths = updated
        if change < _TOLERANCE:
            break
    return strengths


def elo(strength: float) -> float:
    return BASE_RATING + SCALE * math.log10(strength)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks."""
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def ratings(
    games: Iterable[Game], models: Sequence[str], *, seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS
) -> list[dict]:
    """Per model (highest rating first): rating, ci_low, ci_high (rounded to
    0.1) and games (its valid judgments). None of it when no game was valid."""
    models = list(models)
    size = len(models)
    per_item = _item_tables(games, models)
    if size < 2 or not per_item:
        return []
    full = _empty(size)
    for plays in per_item.values():
        _add(full, plays)
    point = [elo(s) for s in fit_strengths(full)]
    items = sorted(per_item)
    generator = random.Random(seed)
    samples: list[list[float]] = [[] for _ in range(size)]
    for _ in range(rounds):
        drawn: dict[int, int] = {}
        for _ in items:
            item = items[generator.randrange(len(items))]
            drawn[item] = drawn.get(item, 0) + 1
        table = _empty(size)
        for item, times in drawn.items():
            _add(table, per_item[item], times)
        for k, strength in enumerate(fit_strengths(table)):
            samples[k].append(elo(strength))
    tail = (1.0 - CONFIDENCE) / 2
    played = [sum(full[0][k]) for k in range(size)]
    out = []
    for k, model in enumerate(models):
        values = sorted(samples[k])
        out.append({
            "model": model,
            "rating": round(point[k], 1),
            "ci_low": round(min(_percentile(values, tail), point[k]), 1),
            "ci_high": round(max(_percentile(values, 1.0 - tail), point[k]), 1),
            "games": int(played[k]),
        })
    return sorted(out, key=lambda record: -record["rating"])
