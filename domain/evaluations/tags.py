"""Automatic per-item tags for error analysis, computed by the evaluation
worker once every model has answered, and the rules for users' own tags.

Per model and item (the reference is the item's reference answer; words are
whitespace-separated):

- ``error``: the model could not be asked (an external endpoint failed); no other tag.
- ``empty``: the output is blank.
- ``cut_off``: generation stopped at ``max_tokens`` (finish_reason "length").
- ``invalid_json``: the reference is a JSON object or array and the output does not parse as JSON.
- ``exact_match``: output and reference equal after stripping the ends.
- ``near_match``: not an exact match, but equal after normalization
  (text.normalize: case, punctuation, spaces) or token F1 >= ``NEAR_MATCH_F1``.
- ``much_longer``: more than ``LENGTH_FACTOR`` times the reference's words, and
  at least ``LENGTH_MIN_WORDS`` more; ``much_shorter``: the reverse (blank outputs are ``empty`` instead).
- ``regressed``: a fine-tune is wrong where its base model, in the same
  evaluation, is right. "Right" is an exact or near match as above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from domain.evaluations.text import normalize, token_f1

ERROR, EMPTY, CUT_OFF, INVALID_JSON = "error", "empty", "cut_off", "invalid_json"
EXACT_MATCH, NEAR_MATCH, MUCH_LONGER, MUCH_SHORTER, REGRESSED = (
    "exact_match", "near_match", "much_longer", "much_shorter", "regressed")
AUTO_TAGS: tuple[str, ...] = (
    ERROR, EMPTY, CUT_OFF, INVALID_JSON, EXACT_MATCH, NEAR_MATCH, MUCH_LONGER, MUCH_SHORTER, REGRESSED)

NEAR_MATCH_F1 = 0.8
LENGTH_FACTOR = 2.0
LENGTH_MIN_WORDS = 5

# Users' own tags: short labels without commas or spaces (they are joined with
# "," in the CSV download).
USER_TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,39}$")
MAX_USER_TAGS = 20


def _is_json_document(text: str) -> bool:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def is_right(output: str, reference: str) -> bool:
    """An exact or near match: what "right" means for `regressed` and the filters."""
    return normalize(output) == normalize(reference) or token_f1(output, reference) >= NEAR_MATCH_F1


def output_tags(output: str | None, finish_reason: str | None, reference: str) -> list[str]:
    """The tags of one output on its own (all but `regressed`)."""
    if output is None:
        return [ERROR]
    tags = []
    blank = not output.strip()
    if blank:
        tags.append(EMPTY)
    if finish_reason == "length":
        tags.append(CUT_OFF)
    if _is_json_document(reference) and not _parses(output):
        tags.append(INVALID_JSON)
    if output.strip() == reference.strip():
        tags.append(EXACT_MATCH)
    elif is_right(output, reference):
        tags.append(NEAR_MATCH)
    words, reference_words = len(output.split()), len(reference.split())
    if words > LENGTH_FACTOR * reference_words and words - reference_words >= LENGTH_MIN_WORDS:
        tags.append(MUCH_LONGER)
    if not blank and words * LENGTH_FACTOR < reference_words and reference_words - words >= LENGTH_MIN_WORDS:
        tags.append(MUCH_SHORTER)
    return tags


def item_tags(
    reference: str, outputs: Mapping[str, tuple[str | None, str | None]], base_of: Mapping[str, str | None]
) -> dict[str, list[str]]:
    """{model: tags} for one item. `outputs` is {model: (output or None on
    error, finish_reason)}; `base_of` maps each fine-tune to its base model
    (None for a base or an external model)."""
    tags = {model: output_tags(output, finish, reference) for model, (output, finish) in outputs.items()}
    for model, base in base_of.items():
        if base is None or base not in outputs or model not in outputs:
            continue
        mine, theirs = outputs[model][0], outputs[base][0]
        if theirs is not None and is_right(theirs, reference) and (mine is None or not is_right(mine, reference)):
            tags[model].append(REGRESSED)
    return tags


def tag_counts(rows: list[dict[str, list[str]]], models: list[str]) -> dict[str, dict[str, int]]:
    """{model: {tag: count}} over the items' {model: tags}, every automatic tag listed."""
    counts = {model: dict.fromkeys(AUTO_TAGS, 0) for model in models}
    for row in rows:
        for model, tags in row.items():
            for tag in tags:
                counts.setdefault(model, {})[tag] = counts.get(model, {}).get(tag, 0) + 1
    return counts
