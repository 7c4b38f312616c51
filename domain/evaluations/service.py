"""Evaluations: check a request completely before anything is queued, then
hand the evaluation to an inference worker (worker/evaluation/run.py).

Also the automatic evaluation of a fine-tuning job that succeeded
(`create_job_evaluation`, called by the training worker).
"""

import secrets
import time

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.errors import InvalidRequest, NotFound, model_not_found
from domain.evaluations.models import WORKING_STATUSES, Evaluation
from domain.evaluations.repository import EvaluationRepository
from domain.evaluations.schemas import DEFAULT_MAX_TOKENS, EVALUATION_METRICS, PERPLEXITY, CreateEvaluationRequest
from domain.files.repository import FileRepository
from domain.files.service import usable_file
from domain.files.validation.formats import TEXT
from domain.ids import new_id
from domain.inference.service import check_max_tokens
from domain.inference.targets import resolve_target
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


def _checked_models(session: Session, settings: Settings, user: User, models: list[str]) -> list[str]:
    for index, model in enumerate(models):
        if model in models[:index]:
            raise InvalidRequest(f"Model '{model}' is given twice.", param=f"models[{index}]", code="duplicate_model")
        if resolve_target(session, user.id, settings, model) is None:
            raise model_not_found(model, param=f"models[{index}]")
    return list(models)


def create_evaluation(
    session: Session, storage: Storage, settings: Settings, user: User, request: CreateEvaluationRequest
) -> Evaluation:
    """Everything checkable is checked here; a request that cannot run is
    refused with the parameter named, and nothing is stored or queued."""
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
