"""Evaluations: check a request completely before anything is queued, then
hand the evaluation to an inference worker (worker/evaluation/run.py).

Also the automatic evaluation of a fine-tuning job that succeeded
(`create_job_evaluation`, called by the training worker).
"""

import secrets
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.errors import Conflict, InvalidRequest, NotFound, model_not_found
from domain.evaluations.items import checked_user_tags, filtered_items, set_user_tags
from domain.evaluations.models import WORKING_STATUSES, Evaluation
from domain.evaluations.repository import EvaluationRepository
from domain.evaluations.judges import PAIRWISE, approximate_prompt_tokens
from domain.evaluations.judges import judge_calls as count_judge_calls
from domain.evaluations.schemas import (
    DEFAULT_JUDGE_MAX_TOKENS, DEFAULT_MAX_TOKENS, EVALUATION_METRICS, PERPLEXITY, CreateEvaluationRequest,
    SetItemTagsRequest)
from domain.files.models import File
from domain.files.repository import FileRepository
from domain.files.service import usable_file
from domain.files.validation.formats import TEXT
from domain.ids import new_id
from domain.inference.service import check_max_tokens
from domain.connections.service import CONNECTION_PREFIX
from domain.inference.targets import resolve_model
from domain.jobs.models import FineTuningJob
from domain.runs.kinds import EVALUATION
from domain.runs.leases import send_to_worker
from domain.queue_client import TaskQueue
from domain.settings import Settings
from domain.storage import Storage
from domain.sharing.service import refuse_sharee_evaluation


def split_size(report: dict, split: str) -> int:
    """Examples of a processed fine-tune file in `split`, from its upload report
    (before examples without an assistant answer are left out)."""
    if split == "all":
        return int(report.get("examples", 0))
    return int(report.get("split", {}).get(split, 0))


def _checked_metrics(metrics: list[str] | None) -> list[str]:
    if metrics is None:
        return list(EVALUATION_METRICS)
    seen = set()
    for index, name in enumerate(metrics):
        if name not in EVALUATION_METRICS:
            raise InvalidRequest(
                f"Unknown metric '{name}'. Known metrics: {', '.join(EVALUATION_METRICS)}.",
                param=f"metrics[{index}]",
                code="unknown_metric",
            )
        if name in seen:
            raise InvalidRequest(f"Metric '{name}' is given twice.", param=f"metrics[{index}]", code="duplicate_metric")
        seen.add(name)
    return [name for name in EVALUATION_METRICS if name in seen]  # canonical order


def file_metrics(report: dict, metrics: list[str]) -> list[str]:
    """The metrics an evaluation of a file computes: a text file (no prompt,
    no answer to compare) gets perplexity only."""
    if report.get("format") == TEXT:
        return [PERPLEXITY]
    return metrics


def _checked_text_metrics(file_id: str, report: dict, metrics: list[str] | None) -> None:
    if report.get("format") != TEXT or metrics is None:
        return
    for index, name in enumerate(metrics):
        if name != PERPLEXITY:
            raise InvalidRequest(
                f"File '{file_id}' holds text lines: it has no prompts and no answers to compare, so its "
                f"evaluations compute perplexity only. Leave 'metrics' out or ask for [\"{PERPLEXITY}\"].",
                param=f"metrics[{index}]",
                code="metric_not_available",
            )


def is_external(model: str) -> bool:
    return model.startswith(CONNECTION_PREFIX)


def _checked_models(session: Session, settings: Settings, user: User, models: list[str]) -> list[str]:
    for index, model in enumerate(models):
        if model in models[:index]:
            raise InvalidRequest(f"Model '{model}' is given twice.", param=f"models[{index}]", code="duplicate_model")
        if resolve_model(session, user.id, settings, model) is None:
            raise model_not_found(model, param=f"models[{index}]")
    return list(models)


def _checked_judges(session: Session, settings: Settings, user: User, request: CreateEvaluationRequest,
                    file_format: str | None) -> list[dict] | None:
    """The judges as stored (JudgeSpec dicts with max_tokens filled in)."""
    if not request.judges:
        return None
    if file_format == TEXT:
        raise InvalidRequest("A text file has no answers to judge; leave 'judges' out.", param="judges",
                             code="judges_not_available")
    judges = []
    for index, judge in enumerate(request.judges):
        if judge.kind == PAIRWISE and len(request.models) < 2:
            raise InvalidRequest("A pairwise judge compares models: give at least two.",
                                 param=f"judges[{index}].kind", code="too_few_models")
        if resolve_model(session, user.id, settings, judge.model) is None:
            raise model_not_found(judge.model, param=f"judges[{index}].model")
        check_max_tokens(judge.max_tokens, settings, param=f"judges[{index}].max_tokens")
        max_tokens = judge.max_tokens or min(DEFAULT_JUDGE_MAX_TOKENS, settings.max_completion_tokens)
        judges.append({**judge.model_dump(), "max_tokens": max_tokens})
    return judges


@dataclass(frozen=True)
class _Checked:
    metrics: list[str]
    max_tokens: int
    models: list[str]
    file: File
    judges: list[dict] | None


def _checked_request(
    session: Session, storage: Storage, settings: Settings, user: User, request: CreateEvaluationRequest
) -> _Checked:
    metrics = _checked_metrics(request.metrics)
    check_max_tokens(request.max_tokens, settings, param="max_tokens")
    max_tokens = request.max_tokens or min(DEFAULT_MAX_TOKENS, settings.max_completion_tokens)
    models = _checked_models(session, settings, user, request.models)
    file = usable_file(session, user, request.file_id, purpose="fine-tune", param="file_id", storage=storage)
    _checked_text_metrics(file.id, file.report, request.metrics)
    metrics = file_metrics(file.report, metrics)
    if split_size(file.report, request.split) == 0:
        raise InvalidRequest(
            f"File '{file.id}' has no examples in the '{request.split}' split.", param="split", code="no_items"
        )
    judges = _checked_judges(session, settings, user, request, file.report.get("format"))
    return _Checked(metrics, max_tokens, models, file, judges)


def estimate_evaluation(
    session: Session, storage: Storage, settings: Settings, user: User, request: CreateEvaluationRequest
) -> dict:
    """The calls an evaluation would make, checked like its creation; nothing is stored."""
    checked = _checked_request(session, storage, settings, user, request)
    report = checked.file.report
    items = split_size(report, request.split)
    if request.limit is not None:
        items = min(items, request.limit)
    generating = report.get("format") != TEXT
    generation_calls = items * len(checked.models) if generating else 0
    external = sum(1 for model in checked.models if is_external(model))
    example_chars = checked.file.bytes // max(1, int(report.get("examples", 0) or 1))
    judge_calls = judge_prompt_tokens = external_judge_calls = 0
    for judge in checked.judges or []:
        calls = count_judge_calls(judge["kind"], items, len(checked.models))
        judge_calls += calls
        judge_prompt_tokens += calls * approximate_prompt_tokens(
            judge["kind"], judge["rubric"], example_chars, checked.max_tokens)
        if is_external(judge["model"]):
            external_judge_calls += calls
    return {
        "object": "evaluation.estimate",
        "items": items,
        "generation_calls": generation_calls,
        "judge_calls": judge_calls,
        "judge_prompt_tokens": judge_prompt_tokens,
        "external_calls": (items * external if generating else 0) + external_judge_calls,
    }


def create_evaluation(
    session: Session, storage: Storage, settings: Settings, user: User, request: CreateEvaluationRequest
) -> Evaluation:
    """Everything checkable is checked here; a request that cannot run is
    refused with the parameter named, and nothing is stored or queued."""
    checked = _checked_request(session, storage, settings, user, request)
    file, models, metrics, max_tokens = checked.file, checked.models, checked.metrics, checked.max_tokens
    evaluation = EvaluationRepository(session, user.id).add(
        _new_evaluation(
            owner_id=user.id,
            file_id=file.id,
            split=request.split,
            models=models,
            max_tokens=max_tokens,
            temperature=request.temperature,
            metrics=metrics,
            item_limit=request.limit,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            user_metadata=request.metadata,
            judges=checked.judges,
        )
    )
    session.commit()
    return evaluation


def _new_evaluation(**values) -> Evaluation:
    return Evaluation(
        id=new_id("eval_"),
        status="queued",
        results={},
        items_done=0,
        attempt=0,
        created_at=int(time.time()),
        **values,
    )


def enqueue(session: Session, queue: TaskQueue, evaluation: Evaluation) -> None:
    """After the commit: a worker must never receive an evaluation it cannot
    read. A message the broker did not take is sent again by the recovery loop."""
    send_to_worker(session, queue, EVALUATION, evaluation.id)


def get_evaluation(session: Session, user: User, evaluation_id: str) -> Evaluation:
    """The user's own evaluation (a shared one is read through
    domain.sharing.service.readable_evaluation; this answers its sharee 403)."""
    evaluation = EvaluationRepository(session, user.id).get(evaluation_id)
    if evaluation is None:
        refuse_sharee_evaluation(session, user, evaluation_id)
        raise NotFound.of("evaluation", evaluation_id, param="evaluation_id")
    return evaluation


def cancel_evaluation(session: Session, user: User, evaluation_id: str) -> Evaluation:
    evaluation = get_evaluation(session, user, evaluation_id)
    repository = EvaluationRepository(session, user.id)
    if evaluation.status not in WORKING_STATUSES or not repository.cancel(evaluation.id):
        session.rollback()
        session.refresh(evaluation)
        raise InvalidRequest(f"Evaluation '{evaluation_id}' has already {evaluation.status}; it cannot be cancelled.",
            code="evaluation_not_cancellable",
        )
    session.commit()
    session.refresh(evaluation)
    return evaluation


def create_job_evaluation(
    session: Session, settings: Settings, job: FineTuningJob, fine_tuned_model: str
) -> Evaluation | None:
    """The automatic evaluation of a fine-tuning job: its base model against
    the new fine-tune, on the job's held-out data (the training file's TEST
    split, or the whole validation file when the job had one).

    Called as the job succeeds, before its row says so: `fine_tuned_model` is
    the name it is about to get. Returns None when there is nothing to evaluate on (no held-out examples,
    file gone, base model no longer offered).

    Transactions: the new row is only added to `session` (it is flushed with
    the caller's next statement); nothing is committed and nothing else in the
    session is touched. The caller commits it in the same transaction as the
    job's `evaluation_id` (or rolls both back), and only after that commit
    sends EVALUATION_TASK (see `enqueue`).
    """
    if job.model not in settings.base_models:
        return None
    files = FileRepository(session, job.owner_id)
    if job.validation_file_id:
        file, split = files.get(job.validation_file_id), "all"
    else:
        file, split = files.get(job.training_file_id), "test"
    if file is None or file.purpose != "fine-tune" or not file.report or split_size(file.report, split) == 0:
        return None
    evaluation = _new_evaluation(
        owner_id=job.owner_id,
        file_id=file.id,
        split=split,
        models=[job.model, fine_tuned_model],
        max_tokens=min(DEFAULT_MAX_TOKENS, settings.max_completion_tokens),
        temperature=0.0,
        metrics=file_metrics(file.report, list(EVALUATION_METRICS)),
        item_limit=None,
        seed=job.seed,
        fine_tuning_job_id=job.id,
        user_metadata=None,
    )
    session.add(evaluation)
    return evaluation


def evaluation_with_predictions(session: Session, storage: Storage, user: User, evaluation_id: str) -> Evaluation:
    """The user's evaluation once it succeeded and its predictions are stored; 409 before."""
    evaluation = get_evaluation(session, user, evaluation_id)
    if evaluation.status != "succeeded" or not evaluation.predictions_key:
        raise Conflict(
            f"Evaluation '{evaluation_id}' is {evaluation.status}; its predictions exist once it succeeds.",
            param="evaluation_id", code="predictions_not_ready")
    if not storage.exists(evaluation.predictions_key):
        raise Conflict(f"The predictions of evaluation '{evaluation_id}' are missing from storage.",
                       code="predictions_missing")
    return evaluation


def set_item_tags(
    session: Session, storage: Storage, user: User, evaluation_id: str, item: int, request: SetItemTagsRequest
) -> dict:
    """Replaces the user's tags on one model's output of one item; the item as it is now."""
    evaluation = evaluation_with_predictions(session, storage, user, evaluation_id)
    if request.model not in evaluation.models:
        raise InvalidRequest(f"Model '{request.model}' is not one of this evaluation's models.", param="model",
                             code="model_not_evaluated")
    if not 0 <= item < (evaluation.items_total or 0):
        raise NotFound.of("evaluation item", str(item), param="item")
    tags = checked_user_tags(request.tags)
    set_user_tags(session, evaluation, item, request.model, tags)
    session.commit()
    for found in filtered_items(session, storage, evaluation, tag=None, model=None, filter_=None, after=item - 1):
        if found["item"] == item:
            return found
        break
    raise NotFound.of("evaluation item", str(item), param="item")
