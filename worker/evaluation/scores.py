"""Supervised metrics comparing a model's output with a reference answer.

Used by evaluations to compare models side by side on a file's test split,
without an LLM judge. Every metric is computed per item (:func:`item_scores`)
and aggregated over a whole evaluation (:func:`aggregate`).

Metrics and their scales:

``exact_match``
    1.0 if ``prediction.strip() == reference.strip()`` else 0.0.
``normalized_exact_match``
    1.0 if :func:`normalize` of both is equal else 0.0.
``token_f1``
    SQuAD-style F1 (0..1) over the bags of tokens ``normalize(text).split()``.
    Both empty -> 1.0; exactly one empty -> 0.0.
``chrf``
    sacrebleu chrF (0..100), character n-gram F-score.
``bleu``
    sacrebleu BLEU (0..100). Per item: sentence BLEU with effective order and
    exponential smoothing, so short sentences do not all score 0.
``rouge_l``
    ROUGE-L F-measure (0..1) on normalized tokens, from the longest common
    subsequence. Both empty -> 1.0; exactly one empty -> 0.0.
``output_length``
    Number of whitespace-separated tokens of the raw prediction.

Token-based metrics (``token_f1``, ``rouge_l``, ``output_length`` and, through
sacrebleu's ``13a`` tokenizer, ``bleu``) split on whitespace, so text written
without spaces (Chinese, Japanese, ...) is one "token" per run of characters
and is meaningfully scored mostly by ``chrf``. Any unicode input (CJK, emoji)
is accepted.

For ``chrf`` and ``bleu`` an item where prediction and reference are both
empty (after ``.strip()``) scores 100, matching ``token_f1`` and ``rouge_l``;
sacrebleu alone would say 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from sacrebleu.metrics import BLEU, CHRF

from domain.evaluations.text import normalize, token_f1
from domain.evaluations.text import tokens as _tokens

METRIC_NAMES: tuple[str, ...] = (
    "exact_match",
    "normalized_exact_match",
    "token_f1",
    "chrf",
    "bleu",
    "rouge_l",
    "output_length",
)

# Aggregated over a corpus by sacrebleu rather than as the mean of items.
CORPUS_METRICS: frozenset[str] = frozenset({"chrf", "bleu"})

# exp(709.78) is the largest finite double; stay clear of it.
PERPLEXITY_LOSS_CAP = 700.0

_SENTENCE_BLEU = BLEU(effective_order=True, smooth_method="exp")
_CORPUS_BLEU = BLEU(smooth_method="exp")
_CHRF = CHRF()


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(
            f"unknown metric(s): {', '.join(map(repr, unknown))}; "
            f"known metrics: {', '.join(METRIC_NAMES)}"
        )
    # Keep the canonical order, drop duplicates.
    return tuple(m for m in METRIC_NAMES if m in metrics)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence: O(len(a)*len(b)) time, two rows."""
    if len(a) < len(b):
        a, b = b, a  # rows over the shorter sequence
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) on normalized whitespace tokens."""
    pred, ref = _tokens(prediction), _tokens(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision = lcs / len(pred)
    recall = lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _clamp100(score: float) -> float:
    # sacrebleu can return 100.00000000000004 for identical strings.
    return min(100.0, max(0.0, float(score)))


def sentence_bleu(prediction: str, reference: str) -> float:
    if not prediction.strip() and not reference.strip():
        return 100.0
    return _clamp100(_SENTENCE_BLEU.sentence_score(prediction, [reference]).score)


def sentence_chrf(prediction: str, reference: str) -> float:
    if not prediction.strip() and not reference.strip():
        return 100.0
    return _clamp100(_CHRF.sentence_score(prediction, [reference]).score)


def item_scores(
    prediction: str, reference: str, metrics: Iterable[str] = METRIC_NAMES
) -> dict[str, float]:
    """Score one prediction against its reference on the chosen metrics.

    Returns ``{metric: value}`` in :data:`METRIC_NAMES` order. Unknown metric
    names raise ``ValueError`` naming them.
    """
    chosen = _check_metrics(metrics)
    out: dict[str, float] = {}
    for name in chosen:
        if name == "exact_match":
            out[name] = 1.0 if prediction.strip() == reference.strip() else 0.0
        elif name == "normalized_exact_match":
            out[name] = 1.0 if normalize(prediction) == normalize(reference) else 0.0
        elif name == "token_f1":
            out[name] = token_f1(prediction, reference)
        elif name == "chrf":
            out[name] = sentence_chrf(prediction, reference)
        elif name == "bleu":
            out[name] = sentence_bleu(prediction, reference)
        elif name == "rouge_l":
            out[name] = rouge_l(prediction, reference)
        elif name == "output_length":
            out[name] = float(len(prediction.split()))
    return out


def aggregate(
    predictions: Sequence[str],
    references: Sequence[str],
    per_item: Sequence[dict[str, float]],
    metrics: Iterable[str] | None = None,
) -> dict[str, float | None]:
    """Aggregate an evaluation's scores.

    ``chrf`` and ``bleu`` are corpus-level (sacrebleu ``corpus_chrf`` /
    ``corpus_bleu`` over all ``predictions`` and ``references``), which is not
    the mean of sentence scores; every other metric is the mean of its
    ``per_item`` values. ``metrics`` defaults to the metrics present in the
    first item (all of :data:`METRIC_NAMES` when there are no items). With no
    items every metric is ``None``.
    """
    if not (len(predictions) == len(references) == len(per_item)):
        raise ValueError(
            "predictions, references and per_item must have the same length "
            f"(got {len(predictions)}, {len(references)}, {len(per_item)})"
        )
    if metrics is None:
        metrics = per_item[0].keys() if per_item else METRIC_NAMES
    chosen = _check_metrics(metrics)
    if not per_item:
        return {name: None for name in chosen}

    out: dict[str, float | None] = {}
    for name in chosen:
        if name == "bleu":
            out[name] = _clamp100(
                _CORPUS_BLEU.corpus_score(list(predictions), [list(references)]).score
            )
        elif name == "chrf":
            out[name] = _clamp100(
                _CHRF.corpus_score(list(predictions), [list(references)]).score
            )
        else:
            missing = [i for i, item in enumerate(per_item) if name not in item]
            if missing:
                raise ValueError(f"metric {name!r} missing from item(s) {missing[:10]}")
            out[name] = math.fsum(item[name] for item in per_item) / len(per_item)
    return out


def mean_loss_to_perplexity(mean_loss: float) -> float:
    """``exp(mean_loss)``; ``inf`` when the loss is past :data:`PERPLEXITY_LOSS_CAP`
    (instead of an ``OverflowError``). NaN stays NaN."""
    mean_loss = float(mean_loss)
    if math.isnan(mean_loss):
        return math.nan
    if mean_loss > PERPLEXITY_LOSS_CAP:
        return math.inf
    return math.exp(mean_loss)
