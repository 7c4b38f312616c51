"""Lenient text comparison shared by the supervised metrics
(worker/evaluation/scores.py) and the automatic item tags (tags.py): pure
Python, so the API side can use it too."""

from __future__ import annotations

import unicodedata
from collections import Counter


def normalize(text: str) -> str:
    """Normalize text for lenient comparison.

    Lowercases (``str.casefold``), removes every punctuation character
    (unicode category ``P*``, so ``"don't"`` becomes ``"dont"`` and ``"。"`` is
    removed too; symbols such as emoji or ``$`` are kept), collapses runs of
    whitespace into one space and strips the ends.
    """
    text = text.casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 on the bags of normalized whitespace tokens."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred)
    recall = common / len(ref)
    return 2 * precision * recall / (precision + recall)
