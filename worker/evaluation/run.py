"""One evaluation on an inference worker: claim it, read the file's items,
run every model on them through the worker's decode loop (each item's row
joins the running batch when there is room, beside whatever else the worker
serves: worker/inference/loop.py), score the outputs, and publish the
per-model metrics and the combined per-item predictions.

Items: the file's examples in the evaluation's split (the same deterministic
split training used), as a prompt and a reference answer, by the file's format
(domain/files/validation/formats.py):

- chat: the last assistant message is the reference, everything before it
  the prompt (rendered with the chat template);
- preference: ``input.messages`` is the prompt, the preferred output the reference;
- prompt/completion: the prompt, as the plain text the model continues (no chat
  template, as training saw it), and the completion as the reference;
- text: no prompt and the whole text as the reference; only perplexity is
  computed (the service refuses other metrics), nothing is generated.

Examples without a reference (a chat example that does not end with an
assistant answer, a preferred output that only calls tools) are left out
and counted (`items_skipped`). Losses (perplexity) are those of the tokens
training trains on for the same line (worker/evaluation/losses.py for text and
prompt/completion).

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

from domain.evaluations.judges import PAIRWISE
from domain.evaluations.ratings import pair_records, ratings
from domain.evaluations.schemas import PERPLEXITY, as_json_safe, item_columns, predictions_csv_key
from domain.evaluations.tags import REGRESSED, item_tags, tag_counts
from domain.files.repository import FileRepository
from domain.files.split import DEFAULT_SPLIT_SEED, split_lines
from domain.files.validation.formats import CHAT, PREFERENCE, PROMPT_COMPLETION, TEXT, detect_format
from domain.connections.client import ConnectionClient, ExternalCallError, ExternalModel
from domain.inference.targets import InferenceTarget, resolve_model
from domain.runs.kinds import EVALUATION
from worker.evaluation.judges import games, judge_calls, judgment, reference_scores
from worker.runs import FailureWords, HandBack, LeasedRun, RunFailure, RunLost, run_leased

log = logging.getLogger("tunehouse.worker")

# While its items generate, the run looks for a cancel or a shutdown this often,
# and records its progress this often, or each time a batch's worth of items is done.
CHECK_SECONDS = 0.5
PROGRESS_SECONDS = 1.0
# Items fed to the decode loop ahead of what it runs, in batch budgets.
LOOKAHEAD_BUDGETS = 2


# ----------------------------------------------------------------------- items


@dataclass(frozen=True)
class Item:
    index: int  # position among the evaluation's items
    line: int  # line number in the file
    # Chat messages (chat, preference), or the plain text the model continues
    # (prompt/completion; "" for text, where nothing is generated).
    prompt: list[dict] | str
    reference: str
    format: str = CHAT  # the file's (formats.py)

    @property
    def plain(self) -> bool:
        """A prompt/completion or text item: no chat template."""
        return self.format in (PROMPT_COMPLETION, TEXT)

    def loss_example(self) -> dict:
        """The training example whose trained tokens are this item's reference (plain items)."""
        if self.format == TEXT:
            return {"text": self.reference}
        return {"prompt": self.prompt, "completion": self.reference}


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
        format_ = detect_format(example)
        prompt, reference = _prompt_and_reference(format_, example)
        if reference is None:
            skipped += 1
            continue
        if limit is None or len(items) < limit:
            items.append(Item(index=len(items), line=line, prompt=prompt, reference=reference, format=format_))
    return items, skipped


def _prompt_and_reference(format_: str | None, example: dict) -> tuple[list[dict] | str, str | None]:
    """An example's prompt and reference answer by its format; the reference
    is None when the example has none."""
    if format_ == TEXT:
        return "", example.get("text")
    if format_ == PROMPT_COMPLETION:
        return example.get("prompt", ""), example.get("completion")
    if format_ == PREFERENCE:
        messages = (example.get("input") or {}).get("messages") or []
        preferred = example.get("preferred_output") or []
        reference = _text_of(preferred[0]) if preferred and isinstance(preferred[0], dict) else None
        return messages, reference if messages and reference else None
    messages = (example.get("messages") or []) if format_ == CHAT else []
    last = messages[-1] if messages else None
    reference = _text_of(last) if isinstance(last, dict) and last.get("role") == "assistant" else None
    return messages[:-1], reference if len(messages) >= 2 else None


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
        out_of_memory="The evaluation ran out of memory. Lower max_tokens or set TUNEHOUSE_INFERENCE_BATCH_SIZE.",
    )

    @property
    def evaluation_id(self) -> str:
        return self.row_id

    def _check_stop(self) -> None:
        if self.should_stop():
            raise RunLost
        if self.should_pause():
            # Models and judges finished are in storage; the one under way is redone.
            raise HandBack(self._stage)

    def work(self) -> None:
        self._evaluate()

    def _evaluate(self) -> None:
        from worker.inference.engine import shared_engine

        row = self.leases.get(self.evaluation_id)
        self.session.refresh(row)
        # Plain values: reads that end transactions (should_stop) expire ORM rows.
        models, metrics = list(row.models), list(row.metrics)
        judges, seed = list(row.judges or []), row.seed
        self._stage = "its start"
        owner_id, results = row.owner_id, dict(row.results or {})
        file = FileRepository(self.session, owner_id).get(row.file_id)
        if file is None:
            raise RunFailure("file_not_found", f"The file '{row.file_id}' was deleted before the evaluation ran.")
        split_seed = (file.report or {}).get("split", {}).get("seed", DEFAULT_SPLIT_SEED)
        items, skipped = load_items(self.storage.iter_bytes(file.storage_key), row.split, split_seed, row.item_limit)
        if not items:
            raise RunFailure(
                "no_items",
                f"The '{row.split}' split of file '{file.id}' has no example with a reference answer "
                "(in a chat file, one that ends with an assistant answer).",
            )
        targets = [self._resolved(owner_id, model, f"The model '{model}' (models[{index}])")
                   for index, model in enumerate(models)]
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
            self._stage = f"model {index + 1} of its {len(models)}"
            records = self._run_model(engine, target, items, metrics, params, index)
            self.stored(
                f"Storing the results of {model}",
                lambda: self.storage.put_bytes(
                    model_key(self.evaluation_id, index), "".join(json.dumps(r) + "\n" for r in records).encode()
                ),
            )
            results[model] = model_aggregate(items, records, metrics)
            self.write("recording progress", results=dict(results), items_done=(index + 1) * len(items))

        per_model = self._stored_records(models, items)
        judgments: list[dict] = []
        for index, judge in enumerate(judges):
            self._stage = f"judge {index + 1} of its {len(judges)}"
            judgments += self._judge(engine, owner_id, index, judge, models, items, per_model)
        base_of = {
            model: target.base_id
            if isinstance(target, InferenceTarget) and target.job_id is not None and target.base_id in models else None
            for model, target in zip(models, targets, strict=True)
        }
        key = predictions_key(self.evaluation_id)
        jsonl, csv_text, counts = self._predictions(models, metrics, items, per_model, base_of, judgments,
                                                    judged=bool(judges))

        def publish() -> None:
            self.storage.put_bytes(key, jsonl.encode())
            self.storage.put_bytes(predictions_csv_key(key), csv_text.encode())

        self.stored("Storing the predictions", publish)
        pairwise = any(judge["kind"] == PAIRWISE for judge in judges)
        played = games(judgments)
        self.write("recording progress",
            status="succeeded",
            predictions_key=key,
            results=dict(results),
            items_done=len(models) * len(items),
            tag_counts=counts,
            pairwise=pair_records(played, models) if pairwise else None,
            ratings=ratings(played, models, seed=seed) if pairwise else None,
            finished_at=int(time.time()),
        )
        log.info("evaluation %s succeeded", self.evaluation_id)

    def _resolved(self, owner_id: int, model: str, what: str) -> InferenceTarget | ExternalModel:
        target = resolve_model(self.session, owner_id, self.settings, model)
        if target is None:
            raise RunFailure("model_not_found", f"{what} does not exist any more.")
        return target

    def _run_model(
        self, engine, target: InferenceTarget | ExternalModel, items: list[Item], metrics: list[str], params: dict,
        model_index: int,
    ) -> list[dict]:
        """Every item's record for one model: output, finish reason, scores,
        loss (local models); latency, usage or the error (external models)."""
        from worker.evaluation.scores import item_scores
        from worker.inference.engine import context_length
        from worker.inference.requests import acquired

        self._check_stop()
        losses: list[tuple[float, int] | None] = [None] * len(items)
        extras: list[dict] = [{} for _ in items]
        if isinstance(target, ExternalModel):
            outputs = [("", None, 0)] * len(items)
            if items[0].format != TEXT:  # an endpoint's perplexity is not known: nothing to do for text
                done_before = model_index * len(items)
                outputs, extras = self._generate_external(
                    target, [item_messages(item) for item in items],
                    [None if params["temperature"] == 0 else (params["seed"] + item.index) % 2**31 for item in items],
                    params, on_progress=lambda done: self.write("recording progress", items_done=done_before + done))
        else:
            with acquired(engine, target.as_dict()) as (loaded, adapter):
                context = context_length(loaded.model)
                if items[0].format == TEXT:  # perplexity only, nothing to generate
                    outputs = [("", None, 0)] * len(items)
                else:
                    outputs = self._generate(engine.loop, loaded, adapter, items, params, context, model_index)
                if PERPLEXITY in metrics:
                    self._check_stop()
                    losses = self._reference_losses(engine.loop, loaded, adapter, items, outputs, model_index)
        text_metrics = [m for m in metrics if m != PERPLEXITY]
        records: list[dict] = []
        for item, (output, finish_reason, tokens), loss, extra in zip(items, outputs, losses, extras, strict=True):
            record = {
                "item": item.index,
                "attempt": self.attempt,
                "output": output,
                "finish_reason": finish_reason,
                "output_tokens": tokens,
                # A failed call has no output to score (and is left out of the model's metrics).
                "scores": item_scores(output, item.reference, text_metrics) if text_metrics and output is not None else {},
                **extra,
            }
            if PERPLEXITY in metrics:
                loss_sum, count = loss if loss is not None else (None, 0)
                record["loss_sum"], record["loss_tokens"] = _finite(loss_sum), count
            records.append(record)
        return records

    def _generate(self, loop, loaded, adapter, items: list[Item], params: dict, context: int, model_index: int):
        """(output, finish reason, output tokens) of every item, through the decode loop."""
        from worker.inference.requests import prompt_ids as prompt_ids_of

        prompts = [
            (plain_prompt_ids(loaded, item.prompt) if item.plain else prompt_ids_of(loaded, item.prompt),
             None if params["temperature"] == 0 else (params["seed"] + item.index) % 2**63)
            for item in items
        ]
        done_before = model_index * len(items)
        return self._decode(loop, loaded, adapter, prompts, params, context,
                            on_progress=lambda done: self.write("recording progress", items_done=done_before + done))

    def _generate_external(self, model: ExternalModel, prompts: list[list[dict]], seeds: list[int | None],
                           params: dict, on_progress=None) -> tuple[list[tuple[str | None, str | None, int]], list[dict]]:
        """(text, finish reason, output tokens) and {latency_ms, usage} or
        {error} per prompt from an external model, through its connection (at
        most TUNEHOUSE_CONNECTION_CONCURRENCY calls at once, retried by the
        client). A call that fails gives None as its text and the error: the
        item fails, the evaluation goes on."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        client = ConnectionClient(model.endpoint, self.settings)
        outputs: list[tuple[str | None, str | None, int]] = [(None, None, 0)] * len(prompts)
        extras: list[dict] = [{} for _ in prompts]

        def call(k: int) -> None:
            try:
                answer = client.chat(model.remote_model, prompts[k], max_tokens=params["max_tokens"],
                                     temperature=params["temperature"], seed=seeds[k])
            except ExternalCallError as error:
                extras[k] = {"error": {"code": error.code, "message": error.message}}
                return
            outputs[k] = (answer.text, answer.finish_reason, answer.completion_tokens)
            extras[k] = {"latency_ms": answer.latency_ms, "attempts": answer.attempts,
                         "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens}}

        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.connection_concurrency),
                                  thread_name_prefix=f"evaluation-{self.evaluation_id}")
        try:
            pending = {pool.submit(call, k) for k in range(len(prompts))}
            last_progress = time.monotonic()
            while pending:
                finished, pending = wait(pending, timeout=CHECK_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()  # anything but an ExternalCallError is the run's failure
                self._check_stop()
                now = time.monotonic()
                if on_progress and finished and (now - last_progress >= PROGRESS_SECONDS or not pending):
                    last_progress = now
                    on_progress(len(prompts) - len(pending))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return outputs, extras

    def _decode(self, loop, loaded, adapter, prompts: list[tuple[list[int], int | None]], params: dict, context: int,
                on_progress=None) -> list[tuple[str, str, int]]:
        """(text, finish reason, output tokens) for each (prompt ids, seed),
        through the decode loop beside whatever else the worker serves, checking
        for a stop as it goes: the models' items and the local judges' calls."""
        from worker.inference.generation import GenerationRequest
        from worker.inference.loop import Feeder

        outputs: list[tuple[str, str, int] | None] = [None] * len(prompts)
        requests: list[tuple[int, GenerationRequest]] = []
        for k, (prompt, seed) in enumerate(prompts):
            if not prompt:  # an empty prompt and a tokenizer without BOS: nothing to continue from
                outputs[k] = ("", "empty_prompt", 0)
                continue
            room = context - len(prompt)
            if room < 1:  # the prompt alone fills the context: nothing can be generated
                outputs[k] = ("", "prompt_too_long", 0)
                continue
            requests.append((k, GenerationRequest(
                prompt_ids=prompt,
                adapter=adapter,
                max_new_tokens=min(params["max_tokens"], room),
                temperature=params["temperature"],
                # Per item, so an output does not depend on its batch.
                seed=seed,
            )))
        done = len(prompts) - len(requests)
        max_rows = loop.budget(loaded).max_rows
        written = done
        last_check = last_progress = time.monotonic()
        with Feeder(loop, loaded, requests, rows_of=lambda pair: [pair[1]],
                    lookahead_rows=LOOKAHEAD_BUDGETS * max_rows) as feeder:
            while feeder.pending:
                ended = feeder.ended(CHECK_SECONDS)
                for submission in ended:
                    [result] = submission.results()
                    outputs[submission.tag[0]] = (result.text, result.finish_reason, len(result.token_ids))
                    done += 1
                now = time.monotonic()
                if now - last_check >= CHECK_SECONDS:
                    last_check = now
                    self._check_stop()
                if on_progress and ended and (
                        now - last_progress >= PROGRESS_SECONDS or done - written >= max_rows or not feeder.pending):
                    last_progress, written = now, done
                    on_progress(done)
        return outputs

    def _reference_losses(
        self, loop, loaded, adapter, items: list[Item], outputs, model_index: int
    ) -> list[tuple[float, int] | None]:
        """Each item's summed loss on its reference, run on the loop's thread a
        prefill's worth at a time (the decoding rows wait no longer than that)."""
        from worker.evaluation.losses import example_losses
        from worker.inference.engine import context_length
        from worker.inference.generation import reference_losses

        scored = [k for k, output in enumerate(outputs) if output[1] != "prompt_too_long"]
        losses: list[tuple[float, int] | None] = [None] * len(items)
        budget = loop.budget(loaded)

        def run(chunk: list[int]) -> list[tuple[float, int]]:
            with loaded.tokenizer_lock:
                if items[chunk[0]].plain:  # one format a file: the whole chunk is plain
                    return example_losses(
                        loaded.model, loaded.tokenizer, [items[k].loss_example() for k in chunk],
                        adapter=adapter, device=loaded.device, batch_size=len(chunk),
                        max_length=context_length(loaded.model),
                    )
                return reference_losses(
                    loaded.model, loaded.tokenizer, [(items[k].prompt, items[k].reference) for k in chunk],
                    adapter=adapter, device=loaded.device, batch_size=len(chunk),
                )

        # Rough size: a reference costs about a prompt's worth of tokens again.
        per_item = max(1, sum(len(str(items[k].prompt)) + len(items[k].reference) for k in scored) // (3 * max(1, len(scored))))
        step = max(1, budget.prefill_tokens // per_item)
        for start in range(0, len(scored), step):
            self._check_stop()
            chunk = scored[start : start + step]
            for k, value in zip(chunk, loop.call(lambda chunk=chunk: run(chunk)), strict=True):
                losses[k] = value
        return losses

    def _stored_records(self, models: list[str], items: list[Item]) -> list[dict[int, dict]]:
        """Each model's records by item, as stored when it finished."""
        per_model = []
        for index in range(len(models)):
            text = self.storage.get_bytes(model_key(self.evaluation_id, index)).decode()
            by_item = {record["item"]: record for record in map(json.loads, text.splitlines())}
            if sorted(by_item) != list(range(len(items))):
                raise RunFailure("evaluation_error", f"The stored results of {models[index]} do not cover every item.")
            per_model.append(by_item)
        return per_model

    def _judge(self, engine, owner_id: int, index: int, judge: dict, models: list[str], items: list[Item],
               per_model: list[dict[int, dict]]) -> list[dict]:
        """Every judgment of one judge (stored as soon as it is complete: a later attempt reuses it)."""
        from worker.inference.engine import context_length
        from worker.inference.requests import acquired, prompt_ids

        key = judge_key(self.evaluation_id, index)
        if self.storage.exists(key):
            return [json.loads(line) for line in self.storage.get_bytes(key).decode().splitlines()]
        outputs = {model: [by_item[item.index]["output"] for item in items] for model, by_item in zip(models, per_model, strict=True)}
        calls = judge_calls(judge, items, models, outputs)
        asked = [call for call in calls if call.prompt is not None]
        self._check_stop()
        target = self._resolved(owner_id, judge["model"], f"The judge model '{judge['model']}'")
        params = {"max_tokens": judge["max_tokens"], "temperature": 0.0}
        if isinstance(target, ExternalModel):
            answers, extras = self._generate_external(target, [call.prompt for call in asked], [0] * len(asked), params)
        else:
            with acquired(engine, target.as_dict()) as (loaded, adapter):
                prompts = [(prompt_ids(loaded, call.prompt), None) for call in asked]
                answers = self._decode(engine.loop, loaded, adapter, prompts, params, context_length(loaded.model))
            extras = [{} for _ in asked]
        answer_of = {id(call): (text, extra.get("error"))
                     for call, (text, _finish, _tokens), extra in zip(asked, answers, extras, strict=True)}
        records = [judgment(judge, call, *answer_of.get(id(call), (None, None))) for call in calls]
        self.stored(f"Storing the judgments of {judge['model']}", lambda: self.storage.put_bytes(
            key, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()))
        log.info("evaluation %s: judge %s made %d judgments, %d invalid", self.evaluation_id, judge["model"],
                 len(records), sum(not r["valid"] for r in records))
        return records

    def _predictions(self, models: list[str], metrics: list[str], items: list[Item], per_model: list[dict[int, dict]],
                     base_of: dict[str, str | None], judgments: list[dict], *, judged: bool
                     ) -> tuple[str, str, dict[str, dict[str, int]]]:
        """The combined predictions, as JSONL and as CSV (same columns; in the
        CSV the prompt, usage, tags and judgments as JSON), and the counts of
        the automatic tags per model."""
        columns = item_columns(models, metrics, judged=judged)
        jsonl = io.StringIO()
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        judgments_of: dict[int, list[dict]] = {}
        for record in judgments:
            judgments_of.setdefault(record["item"], []).append({k: v for k, v in record.items() if k != "item"})
        scores = reference_scores(judgments)
        all_tags = []
        for item in items:
            row = {"item": item.index, "line": item.line, "prompt": item.prompt, "reference": item.reference}
            # A text file's items generate nothing: no output to tag.
            tags = {model: [] for model in models} if item.format == TEXT else item_tags(item.reference, {
                model: (by_item[item.index]["output"], by_item[item.index]["finish_reason"])
                for model, by_item in zip(models, per_model, strict=True)}, base_of)
            all_tags.append(tags)
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
                row[f"tags:{model}"] = tags[model]
                for extra in ("latency_ms", "usage", "error"):
                    row[f"{extra}:{model}"] = record.get(extra)
            if judged:
                row["judgments"] = judgments_of.get(item.index, [])
            row["worse_than_base"] = [
                model for model, base in base_of.items()
                if base is not None and (REGRESSED in tags[model] or _mean(scores.get((item.index, model))) < _mean(
                    scores.get((item.index, base)), missing=-1.0))
            ]
            jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
            flat = {name: json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value
                    for name, value in row.items()}
            for model in models:
                flat[f"tags:{model}"] = ",".join(tags[model])
            writer.writerow({**flat, "prompt": json.dumps(item.prompt, ensure_ascii=False)})
        return jsonl.getvalue(), table.getvalue(), tag_counts(all_tags, models)


def _mean(values: list[int] | None, missing: float = 6.0) -> float:
    """The mean judge score, or `missing` (higher than any score for the judged
    model, lower for its base: no score is never "worse")."""
    return sum(values) / len(values) if values else missing


def judge_key(evaluation_id: str, index: int) -> str:
    return f"evaluations/{evaluation_id}/judges/{index}.jsonl"


def item_messages(item: Item) -> list[dict]:
    """An item's prompt as chat messages for an external model: a plain
    prompt (prompt/completion) becomes one user message."""
    return [{"role": "user", "content": item.prompt}] if item.plain else item.prompt


def plain_prompt_ids(loaded, prompt: str) -> list[int]:
    """A prompt/completion item's prompt as training tokenized it: the plain
    text with the tokenizer's BOS, if it adds one (worker/training/data.py)."""
    with loaded.tokenizer_lock:
        return loaded.tokenizer(prompt, add_special_tokens=True)["input_ids"]


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
    answered = [(item, record) for item, record in zip(items, records, strict=True) if record["output"] is not None]
    if len(answered) < len(records):  # an external model's failed calls
        out["errors"] = float(len(records) - len(answered))
    if text_metrics:
        values = aggregate(
            [record["output"] for _, record in answered],
            [item.reference for item, _ in answered],
            [record["scores"] for _, record in answered],
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
