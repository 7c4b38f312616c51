"""One evaluation on an inference worker: claim it, read the file's items,
run every model on them in padded batches, score the outputs, and publish
the per-model metrics and the combined per-item predictions.

Items: the file's examples in the evaluation's split (the same deterministic
split training used); the last assistant message is the reference answer,
everything before it the prompt. Examples that do not end with an assistant
answer are left out and counted (`items_skipped`).

Surviving a restart: every finished model's per-item results go to storage
(`evaluations/{id}/models/{index}.jsonl`) and its aggregate into `results`;
a later attempt (after the worker died and the evaluation was requeued)
skips the models already finished and redoes the one that was cut off, so
each item appears once per model. Every write is fenced by the lease's
attempt (domain/runs/leases.py): a worker that lost its claim changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from domain.evaluations.schemas import PERPLEXITY, as_json_safe, item_columns, predictions_csv_key
from domain.files.repository import FileRepository
from domain.files.split import DEFAULT_SPLIT_SEED, split_lines
from domain.inference.targets import InferenceTarget, resolve_target
from domain.runs.kinds import EVALUATION
from worker.runs import FailureWords, HandBack, LeasedRun, RunFailure, RunLost, run_leased

log = logging.getLogger("tunehouse.worker")



# ----------------------------------------------------------------------- items


@dataclass(frozen=True)
class Item:
    index: int  # position among the evaluation's items
    line: int  # line number in the file
    prompt: list[dict]
    reference: str


def _text_of(message: dict) -> str | None:
    """A message's text: a string content, or the text parts of a content list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "".join(parts) if parts else None
    return None


def load_items(chunks: Iterable[bytes], split: str, split_seed: int, limit: int | None) -> tuple[list[Item], int]:
    """(items, skipped): the examples of `split` ("test" | "train" | "all") as
    prompt + reference, in file order, at most `limit`; `skipped` counts the
    split's examples that do not end with an assistant answer after a prompt."""
    items: list[Item] = []
    skipped = 0
    for line, example, example_split in split_lines(chunks, split_seed):
        if split != "all" and example_split != split.upper():
            continue
        messages = example.get("messages") or []
        last = messages[-1] if messages else None
        reference = _text_of(last) if isinstance(last, dict) and last.get("role") == "assistant" else None
        if reference is None or len(messages) < 2:
            skipped += 1
            continue
        if limit is None or len(items) < limit:
            items.append(Item(index=len(items), line=line, prompt=messages[:-1], reference=reference))
    return items, skipped


# -------------------------------------------------------------------- failures


# ---------------------------------------------------------------- the run


def model_key(evaluation_id: str, index: int) -> str:
    return f"evaluations/{evaluation_id}/models/{index}.jsonl"


def predictions_key(evaluation_id: str) -> str:
    return f"evaluations/{evaluation_id}/predictions.jsonl"


def _finite(value: float | None) -> float | None:
    return as_json_safe(float(value)) if value is not None else None


class EvaluationRun(LeasedRun):
    """One attempt at one evaluation."""

    kind = EVALUATION
    words = FailureWords(
        generic_code="evaluation_error",
        generic_what="The evaluation failed",
        bad_data_code="invalid_evaluation_data",
        bad_data_what="The evaluation data",
        out_of_memory="The evaluation ran out of memory. Lower max_tokens or TUNEHOUSE_INFERENCE_BATCH_SIZE.",
    )

    @property
    def evaluation_id(self) -> str:
        return self.row_id

    def _check_stop(self, model_index: int) -> None:
        if self.should_stop():
            raise RunLost
        if self.should_pause():
            # Models finished are in storage; the one under way is redone.
            raise HandBack(f"model {model_index + 1} of its {len(self._models)}")

    def work(self) -> None:
        self._evaluate()

    def _evaluate(self) -> None:
        from worker.inference.engine import shared_engine

        row = self.leases.get(self.evaluation_id)
        self.session.refresh(row)
        # Plain values: reads that end transactions (should_stop) expire ORM rows.
        models, metrics = list(row.models), list(row.metrics)
        self._models = models
        owner_id, results = row.owner_id, dict(row.results or {})
        file = FileRepository(self.session, owner_id).get(row.file_id)
        if file is None:
            raise RunFailure("file_not_found", f"The file '{row.file_id}' was deleted before the evaluation ran.")
        split_seed = (file.report or {}).get("split", {}).get("seed", DEFAULT_SPLIT_SEED)
        items, skipped = load_items(self.storage.iter_bytes(file.storage_key), row.split, split_seed, row.item_limit)
        if not items:
            raise RunFailure(
                "no_items",
                f"The '{row.split}' split of file '{file.id}' has no example that ends with an assistant answer.",
            )
        targets = []
        for index, model in enumerate(models):
            target = resolve_target(self.session, owner_id, self.settings, model)
            if target is None:
                raise RunFailure("model_not_found", f"The model '{model}' does not exist any more (models[{index}]).")
            targets.append(target)
        finished = {
            index
            for index, model in enumerate(models)
            if model in results and self.storage.exists(model_key(self.evaluation_id, index))
        }
        self.write("recording progress", items_total=len(items), items_skipped=skipped, items_done=len(finished) * len(items))
        params = {"max_tokens": row.max_tokens, "temperature": row.temperature, "seed": row.seed}
        engine = shared_engine()
        for index, (model, target) in enumerate(zip(models, targets, strict=True)):
            if index in finished:
                log.info("evaluation %s: %s was finished by an earlier attempt", self.evaluation_id, model)
                continue
            records = self._run_model(engine, target, items, metrics, params, index)
            self.stored(
                f"Storing the results of {model}",
                lambda: self.storage.put_bytes(
                    model_key(self.evaluation_id, index), "".join(json.dumps(r) + "\n" for r in records).encode()
                ),
            )
            results[model] = model_aggregate(items, records, metrics)
            self.write("recording progress", results=dict(results), items_done=(index + 1) * len(items))

        key = predictions_key(self.evaluation_id)
        jsonl, csv_text = self._predictions(models, metrics, items)

        def publish() -> None:
            self.storage.put_bytes(key, jsonl.encode())
            self.storage.put_bytes(predictions_csv_key(key), csv_text.encode())

        self.stored("Storing the predictions", publish)
        self.write("recording progress", 
            status="succeeded",
            predictions_key=key,
            results=dict(results),
            items_done=len(models) * len(items),
            finished_at=int(time.time()),
        )
        log.info("evaluation %s succeeded", self.evaluation_id)

    def _run_model(
        self, engine, target: InferenceTarget, items: list[Item], metrics: list[str], params: dict, model_index: int
    ) -> list[dict]:
        """Every item's record for one model: output, finish reason, scores, loss."""
        from worker.evaluation.scores import item_scores
        from worker.inference.generation import GenerationCancelled, GenerationRequest, generate, reference_losses, render_prompt
        from worker.inference.engine import context_length
        from worker.inference.requests import prepare

        self._check_stop(model_index)
        done_before = model_index * len(items)
        loaded, adapter = prepare(engine, target.as_dict())
        context = context_length(loaded.model)
        text_metrics = [m for m in metrics if m != PERPLEXITY]
        batch_size = self.settings.inference_batch_size
        records: list[dict] = []
        for start in range(0, len(items), batch_size):
            self._check_stop(model_index)
            chunk = items[start : start + batch_size]
            requests, fits = [], []
            for item in chunk:
                prompt_ids = render_prompt(loaded.tokenizer, item.prompt)
                room = context - len(prompt_ids)
                fits.append(room >= 1)
                if room >= 1:
                    requests.append(
                        GenerationRequest(
                            prompt_ids=prompt_ids,
                            adapter=adapter,
                            max_new_tokens=min(params["max_tokens"], room),
                            temperature=params["temperature"],
                            # Per item, so an output does not depend on its batch.
                            seed=None if params["temperature"] == 0 else (params["seed"] + item.index) % 2**63,
                        )
                    )
            try:
                generated = iter(
                    generate(
                        loaded.model,
                        loaded.tokenizer,
                        requests,
                        eos_ids=loaded.eos_ids,
                        device=loaded.device,
                        should_stop=self.should_stop,
                    )
                    if requests
                    else []
                )
            except GenerationCancelled as exc:
                raise RunLost from exc
            losses: list[tuple[float, int] | None] = [None] * len(chunk)
            if PERPLEXITY in metrics:
                scored = [k for k, fit in enumerate(chunk) if fits[k]]
                if scored:
                    values = reference_losses(
                        loaded.model,
                        loaded.tokenizer,
                        [(chunk[k].prompt, chunk[k].reference) for k in scored],
                        adapter=adapter,
                        device=loaded.device,
                        batch_size=len(scored),
                    )
                    for k, value in zip(scored, values, strict=True):
                        losses[k] = value
            for k, item in enumerate(chunk):
                if fits[k]:
                    result = next(generated)
                    output, finish_reason, tokens = result.text, result.finish_reason, len(result.token_ids)
                else:  # the prompt alone fills the context: nothing can be generated
                    output, finish_reason, tokens = "", "prompt_too_long", 0
                record = {
                    "item": item.index,
                    "attempt": self.attempt,
                    "output": output,
                    "finish_reason": finish_reason,
                    "output_tokens": tokens,
                    "scores": item_scores(output, item.reference, text_metrics) if text_metrics else {},
                }
                if PERPLEXITY in metrics:
                    loss, count = losses[k] if losses[k] is not None else (None, 0)
                    record["loss_sum"], record["loss_tokens"] = _finite(loss), count
                records.append(record)
            self.write("recording progress", items_done=done_before + len(records))
        return records

    def _predictions(self, models: list[str], metrics: list[str], items: list[Item]) -> tuple[str, str]:
        """The combined predictions, as JSONL and as CSV (same columns; in the
        CSV the prompt is its messages as JSON)."""
        per_model = []
        for index in range(len(models)):
            text = self.storage.get_bytes(model_key(self.evaluation_id, index)).decode()
            by_item = {record["item"]: record for record in map(json.loads, text.splitlines())}
            if sorted(by_item) != list(range(len(items))):
                raise RunFailure("evaluation_error", f"The stored results of {models[index]} do not cover every item.")
            per_model.append(by_item)
        columns = item_columns(models, metrics)
        jsonl = io.StringIO()
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for item in items:
            row = {"item": item.index, "line": item.line, "prompt": item.prompt, "reference": item.reference}
            for model, by_item in zip(models, per_model, strict=True):
                record = by_item[item.index]
                row[model] = record["output"]
                row[f"finish_reason:{model}"] = record["finish_reason"]
                for metric in metrics:
                    if metric == PERPLEXITY:
                        loss = item_mean_loss(record)
                        row[f"loss:{model}"] = loss
                        row[f"perplexity:{model}"] = _perplexity(loss)
                    else:
                        row[f"{metric}:{model}"] = record["scores"].get(metric)
            jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
            writer.writerow({**row, "prompt": json.dumps(item.prompt, ensure_ascii=False)})
        return jsonl.getvalue(), table.getvalue()


def item_mean_loss(record: dict) -> float | None:
    if record.get("loss_sum") is None or not record.get("loss_tokens"):
        return None
    return record["loss_sum"] / record["loss_tokens"]


def _perplexity(mean_loss: float | None) -> float | None:
    from worker.evaluation.scores import mean_loss_to_perplexity

    return None if mean_loss is None else _finite(mean_loss_to_perplexity(mean_loss))


def model_aggregate(items: list[Item], records: list[dict], metrics: list[str]) -> dict[str, float | None]:
    """One model's metrics over all items: means of the per-item scores, corpus
    chrF and BLEU, and with "perplexity" the per-token loss over every scored
    reference token ("loss") and its exponential."""
    from worker.evaluation.scores import aggregate

    text_metrics = [m for m in metrics if m != PERPLEXITY]
    out: dict[str, float | None] = {}
    if text_metrics:
        values = aggregate(
            [record["output"] for record in records],
            [item.reference for item in items],
            [record["scores"] for record in records],
            metrics=text_metrics,
        )
        out.update({name: _finite(value) for name, value in values.items()})
    if PERPLEXITY in metrics:
        scored = [r for r in records if r.get("loss_sum") is not None and r.get("loss_tokens")]
        tokens = sum(r["loss_tokens"] for r in scored)
        loss = math.fsum(r["loss_sum"] for r in scored) / tokens if tokens else None
        out["loss"] = _finite(loss)
        out[PERPLEXITY] = _perplexity(loss)
    return out


def run_evaluation(evaluation_id: str) -> None:
    """The `tunehouse.evaluate` task: the message is the evaluation id only."""
    run_leased(EvaluationRun, evaluation_id)
