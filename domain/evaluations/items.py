"""An evaluation's items for error analysis: read from its predictions (the
worker's JSONL, one flat row per item: worker/evaluation/run.py), shaped as
`evaluation.item` objects with the users' own tags, filtered, paged and
downloaded; and the users' tags themselves.

Filters (all optional, combined with AND):
- ``tag``: the item has this tag (automatic or the user's) on `model`'s output, or on any model's;
- ``filter=disagree``: the models' outputs differ after normalization (case, punctuation, spaces);
- ``filter=worse_than_base``: a fine-tune (or `model`) is worse than its base on the item: tagged
  ``regressed``, or scored lower by a reference judge.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.errors import InvalidRequest
from domain.evaluations.models import Evaluation, EvaluationItemTags
from domain.evaluations.schemas import PERPLEXITY
from domain.evaluations.tags import MAX_USER_TAGS, USER_TAG_PATTERN
from domain.evaluations.text import normalize
from domain.storage import Storage

DISAGREE, WORSE_THAN_BASE = "disagree", "worse_than_base"


def user_tags_of(session: Session, evaluation_id: str) -> dict[tuple[int, str], list[str]]:
    rows = session.scalars(select(EvaluationItemTags).where(EvaluationItemTags.evaluation_id == evaluation_id))
    return {(row.item, row.model): list(row.tags) for row in rows}


def predictions_rows(storage: Storage, evaluation: Evaluation) -> Iterator[dict]:
    for line in storage.get_bytes(evaluation.predictions_key).splitlines():
        if line.strip():
            yield json.loads(line)


def item_object(row: dict, evaluation: Evaluation, user_tags: dict[tuple[int, str], list[str]]) -> dict:
    """A flat predictions row as an `evaluation.item` (schemas.EvaluationItem)."""
    outputs = {}
    for model in evaluation.models:
        scores: dict = {}
        for metric in evaluation.metrics:
            names = ("loss", PERPLEXITY) if metric == PERPLEXITY else (metric,)
            for name in names:
                scores[name] = row.get(f"{name}:{model}")
        outputs[model] = {
            "output": row.get(model),
            "finish_reason": row.get(f"finish_reason:{model}"),
            "scores": scores,
            "tags": row.get(f"tags:{model}") or [],
            "user_tags": user_tags.get((row["item"], model), []),
            "latency_ms": row.get(f"latency_ms:{model}"),
            "usage": row.get(f"usage:{model}"),
            "error": row.get(f"error:{model}"),
        }
    return {
        "object": "evaluation.item",
        "item": row["item"],
        "line": row["line"],
        "prompt": row["prompt"],
        "reference": row["reference"],
        "outputs": outputs,
        "judgments": row.get("judgments") or [],
        "_worse_than_base": row.get("worse_than_base") or [],
    }


def check_filters(evaluation: Evaluation, model: str | None) -> None:
    if model is not None and model not in evaluation.models:
        raise InvalidRequest(f"Model '{model}' is not one of this evaluation's models.", param="model",
                             code="model_not_evaluated")


def matches(item: dict, *, tag: str | None, model: str | None, filter_: str | None) -> bool:
    outputs = item["outputs"]
    looked_at = [model] if model else list(outputs)
    if tag is not None and not any(tag in outputs[m]["tags"] or tag in outputs[m]["user_tags"] for m in looked_at):
        return False
    if filter_ == DISAGREE:
        answers = {normalize(out["output"]) for out in outputs.values() if out["output"] is not None}
        if len(answers) < 2:
            return False
    if filter_ == WORSE_THAN_BASE:
        worse = item["_worse_than_base"]
        if not (model in worse if model else worse):
            return False
    return True


def public(item: dict) -> dict:
    return {key: value for key, value in item.items() if not key.startswith("_")}


def filtered_items(
    session: Session, storage: Storage, evaluation: Evaluation, *, tag: str | None, model: str | None,
    filter_: str | None, after: int | None = None,
) -> Iterator[dict]:
    check_filters(evaluation, model)
    user_tags = user_tags_of(session, evaluation.id)
    for row in predictions_rows(storage, evaluation):
        if after is not None and row["item"] <= after:
            continue
        item = item_object(row, evaluation, user_tags)
        if matches(item, tag=tag, model=model, filter_=filter_):
            yield public(item)


def items_csv(evaluation: Evaluation, items: Iterator[dict]) -> str:
    """The filtered items as a table: the item, then per model its output,
    finish reason, automatic and user tags (joined with ","), and the judgments as JSON."""
    columns = ["item", "line", "prompt", "reference"]
    for model in evaluation.models:
        columns += [model, f"finish_reason:{model}", f"tags:{model}", f"user_tags:{model}"]
    columns.append("judgments")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for item in items:
        row = {"item": item["item"], "line": item["line"], "prompt": json.dumps(item["prompt"], ensure_ascii=False),
               "reference": item["reference"], "judgments": json.dumps(item["judgments"], ensure_ascii=False)}
        for model, out in item["outputs"].items():
            row[model] = out["output"]
            row[f"finish_reason:{model}"] = out["finish_reason"]
            row[f"tags:{model}"] = ",".join(out["tags"])
            row[f"user_tags:{model}"] = ",".join(out["user_tags"])
        writer.writerow(row)
    return table.getvalue()


def checked_user_tags(tags: list[str]) -> list[str]:
    unique: list[str] = []
    for index, tag in enumerate(tags):
        if not USER_TAG_PATTERN.match(tag):
            raise InvalidRequest(
                f"Tag '{tag[:60]}' is not allowed: 1–40 letters, digits and _ . : / - (starting with a letter or digit).",
                param=f"tags[{index}]", code="invalid_tag")
        if tag not in unique:
            unique.append(tag)
    if len(unique) > MAX_USER_TAGS:
        raise InvalidRequest(f"At most {MAX_USER_TAGS} tags.", param="tags", code="too_many_tags")
    return unique


def set_user_tags(session: Session, evaluation: Evaluation, item: int, model: str, tags: list[str]) -> None:
    """Replaces the user's tags on (item, model) and recounts the evaluation's
    user tags in the same transaction. Does not commit."""
    row = session.get(EvaluationItemTags, (evaluation.id, item, model))
    if row is None and tags:
        session.add(EvaluationItemTags(evaluation_id=evaluation.id, item=item, model=model, tags=tags,
                                       updated_at=int(time.time())))
    elif row is not None and tags:
        row.tags, row.updated_at = tags, int(time.time())
    elif row is not None:
        session.delete(row)
    session.flush()
    counts: dict[str, dict[str, int]] = {}
    for (_, tagged_model), user_tags in user_tags_of(session, evaluation.id).items():
        for tag in user_tags:
            counts.setdefault(tagged_model, {})[tag] = counts.get(tagged_model, {}).get(tag, 0) + 1
    evaluation.user_tag_counts = counts
