"""Evaluation objects (a tunehouse extension; no OpenAI counterpart).

An evaluation runs N models on the held-out items of a fine-tune file and
scores every output against the item's reference answer (the conversation's
last assistant message; a preference pair's preferred output; a
prompt/completion line's completion) with supervised metrics. A text file's
evaluation computes perplexity only (docs/data-formats.md).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.evaluations.models import Evaluation
from domain.metadata import Metadata
from domain.pagination import ListPage

# The text metrics of worker/evaluation/scores.py (METRIC_NAMES, same order;
# a test keeps the two equal: the API never imports worker code), plus
# "perplexity": the model's loss on the reference answers.
TEXT_METRICS: tuple[str, ...] = (
    "exact_match",
    "normalized_exact_match",
    "token_f1",
    "chrf",
    "bleu",
    "rouge_l",
    "output_length",
)
PERPLEXITY = "perplexity"
EVALUATION_METRICS: tuple[str, ...] = (*TEXT_METRICS, PERPLEXITY)

SPLITS = ("test", "train", "all")
MAX_MODELS = 8
DEFAULT_MAX_TOKENS = 256


class CreateEvaluationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(min_length=1, max_length=64)
    split: Literal["test", "train", "all"] = "test"
    models: list[str] = Field(min_length=1, max_length=MAX_MODELS)
    # None: 256, or the deployment's TUNEHOUSE_MAX_COMPLETION_TOKENS if lower.
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    # None: every metric. Names are checked (with their position) in the service.
    metrics: list[str] | None = Field(default=None, min_length=1, max_length=len(EVALUATION_METRICS))
    # At most this many items (the first ones of the split, in file order).
    limit: int | None = Field(default=None, ge=1, le=1_000_000)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: Metadata = None


class EvaluationError(BaseModel):
    code: str
    message: str


class EvaluationProgress(BaseModel):
    items_total: int | None = Field(description="Items per model; known once a worker has read the file.")
    items_done: int = Field(description="Items done over all models (items_total * len(models) at the end).")
    items_skipped: int | None = Field(description="Examples of the split that do not end with an assistant answer.")
    attempt: int


class EvaluationObject(BaseModel):
    object: Literal["evaluation"] = "evaluation"
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    file_id: str
    split: Literal["test", "train", "all"]
    models: list[str]
    max_tokens: int
    temperature: float
    metrics: list[str]
    limit: int | None
    seed: int
    fine_tuning_job_id: str | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    progress: EvaluationProgress
    # {model: {metric: value}}; a model appears once all its items are scored.
    # With "perplexity", also "loss": the mean per-token loss on the references.
    results: dict[str, dict[str, float | None]]
    error: EvaluationError | None
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, evaluation: Evaluation) -> "EvaluationObject":
        return cls(
            id=evaluation.id,
            status=evaluation.status,
            file_id=evaluation.file_id,
            split=evaluation.split,
            models=evaluation.models,
            max_tokens=evaluation.max_tokens,
            temperature=evaluation.temperature,
            metrics=evaluation.metrics,
            limit=evaluation.item_limit,
            seed=evaluation.seed,
            fine_tuning_job_id=evaluation.fine_tuning_job_id,
            created_at=evaluation.created_at,
            started_at=evaluation.started_at,
            finished_at=evaluation.finished_at,
            progress=EvaluationProgress(
                items_total=evaluation.items_total,
                items_done=evaluation.items_done or 0,
                items_skipped=evaluation.items_skipped,
                attempt=evaluation.attempt or 0,
            ),
            results=evaluation.results or {},
            error=EvaluationError(**evaluation.error) if evaluation.error else None,
            metadata=evaluation.user_metadata,
        )


EvaluationList = ListPage[EvaluationObject]


def predictions_csv_key(jsonl_key: str) -> str:
    """Where the CSV copy of the predictions lives, beside the JSONL."""
    return jsonl_key.removesuffix(".jsonl") + ".csv"


def item_columns(models: list[str], metrics: list[str]) -> list[str]:
    """The predictions' columns, in order: the item, then per model its output
    (a column named after the model) and its scores ("{metric}:{model}";
    metric names have no ':', so the split at the first ':' is exact)."""
    columns = ["item", "line", "prompt", "reference"]
    for model in models:
        columns.append(model)
        columns.append(f"finish_reason:{model}")
        for metric in metrics:
            if metric == PERPLEXITY:
                columns += [f"loss:{model}", f"perplexity:{model}"]
            else:
                columns.append(f"{metric}:{model}")
    return columns


def as_json_safe(value: Any) -> Any:
    """JSON (and PostgreSQL's JSON type) has no inf or NaN: those become None."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value
