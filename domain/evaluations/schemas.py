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


MAX_JUDGES = 4
DEFAULT_JUDGE_MAX_TOKENS = 128


class JudgeSpec(BaseModel):
    """An LLM judge (opt-in; docs/evaluations.md). "reference": a 1–5 score and
    a one-line rationale for each model's output against the reference answer.
    "pairwise": each pair of the evaluation's models per item, judged in both
    orders (position bias cancels out); ties allowed. Any model may judge: a
    base model, a fine-tune, or an external model ("conn:{connection}/{model}")."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reference", "pairwise"]
    model: str = Field(min_length=1, max_length=255)
    # None: the default rubric of the kind (domain/evaluations/judges.py).
    rubric: str | None = Field(default=None, min_length=1, max_length=4000)
    # The judge's answer length (None: 128, or the deployment's limit if lower).
    max_tokens: int | None = Field(default=None, ge=1)


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
    # None: supervised metrics only.
    judges: list[JudgeSpec] | None = Field(default=None, max_length=MAX_JUDGES)


class EvaluationEstimate(BaseModel):
    """What an evaluation would cost before it runs: calls to models and judges,
    and the judges' prompt tokens (approximate: about 4 characters a token,
    from the file's average example size and max_tokens per judged output)."""

    object: Literal["evaluation.estimate"] = "evaluation.estimate"
    items: int
    generation_calls: int
    judge_calls: int
    judge_prompt_tokens: int
    external_calls: int = Field(description="Calls to external models (conn:), answering or judging.")


class Rating(BaseModel):
    model: str
    rating: float = Field(description="Bradley–Terry rating on the Elo scale (1000: the models' geometric mean).")
    ci_low: float
    ci_high: float
    games: int = Field(description="The model's readable pairwise judgments.")


class PairRecord(BaseModel):
    model_a: str
    model_b: str
    wins: int = Field(description="Judgments model_a won, over both orders.")
    ties: int
    losses: int
    invalid: int = Field(description="Judgments that could not be read.")


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
    judges: list[JudgeSpec] | None = None
    ratings: list[Rating] | None = None
    pairwise: list[PairRecord] | None = None
    # {model: {tag: count}}: automatic tags once it succeeded, plus the users' own.
    tag_counts: dict[str, dict[str, int]] | None = None

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
            judges=evaluation.judges,
            ratings=evaluation.ratings,
            pairwise=evaluation.pairwise,
            tag_counts=merged_counts(evaluation.tag_counts, evaluation.user_tag_counts),
        )


def merged_counts(*counts: dict[str, dict[str, int]] | None) -> dict[str, dict[str, int]] | None:
    if all(c is None for c in counts):
        return None
    out: dict[str, dict[str, int]] = {}
    for per_model in counts:
        for model, tags in (per_model or {}).items():
            for tag, count in tags.items():
                out.setdefault(model, {})[tag] = out.get(model, {}).get(tag, 0) + count
    return out


class ItemOutput(BaseModel):
    output: str | None = Field(description="None when the model could not be asked (see error).")
    finish_reason: str | None
    scores: dict[str, float | None]
    tags: list[str] = Field(description="Automatic tags (docs/evaluations.md).")
    user_tags: list[str]
    latency_ms: int | None = None
    usage: dict[str, int] | None = None
    error: EvaluationError | None = None


class Judgment(BaseModel):
    kind: Literal["reference", "pairwise"]
    judge: str = Field(description="The judge model.")
    models: list[str] = Field(description="The judged model (reference), or the pair in the order shown (pairwise).")
    order: int = Field(description="Pairwise: 0 as the evaluation lists the pair, 1 swapped. Reference: 0.")
    prompt: list[dict[str, Any]]
    raw: str | None = Field(description="The judge's answer as written; None when the call failed.")
    score: int | None = None
    rationale: str | None = None
    winner: str | None = Field(default=None, description="Pairwise: the winning model, \"tie\", or None if unreadable.")
    valid: bool
    error: EvaluationError | None = Field(default=None, description="Why an external judge could not be asked.")


class EvaluationItem(BaseModel):
    object: Literal["evaluation.item"] = "evaluation.item"
    item: int
    line: int
    prompt: list[dict[str, Any]] | str
    reference: str
    outputs: dict[str, ItemOutput]
    judgments: list[Judgment]


EvaluationItemList = ListPage[EvaluationItem]


class SetItemTagsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255)
    tags: list[str] = Field(max_length=20, description="Replaces the user's tags on this model's output; [] clears them.")


ItemFilter = Literal["disagree", "worse_than_base"]


EvaluationList = ListPage[EvaluationObject]


def predictions_csv_key(jsonl_key: str) -> str:
    """Where the CSV copy of the predictions lives, beside the JSONL."""
    return jsonl_key.removesuffix(".jsonl") + ".csv"


def item_columns(models: list[str], metrics: list[str], *, judged: bool = False) -> list[str]:
    """The predictions' columns, in order: the item, then per model its output
    (a column named after the model), its scores ("{metric}:{model}";
    metric names have no ':', so the split at the first ':' is exact), its
    automatic tags, latency, usage and error (the last three: external models
    only), and with judges, every judgment of the item (JSON in the CSV)."""
    columns = ["item", "line", "prompt", "reference"]
    for model in models:
        columns.append(model)
        columns.append(f"finish_reason:{model}")
        for metric in metrics:
            if metric == PERPLEXITY:
                columns += [f"loss:{model}", f"perplexity:{model}"]
            else:
                columns.append(f"{metric}:{model}")
        columns += [f"tags:{model}", f"latency_ms:{model}", f"usage:{model}", f"error:{model}"]
    if judged:
        columns.append("judgments")
    columns.append("worse_than_base")
    return columns


def as_json_safe(value: Any) -> Any:
    """JSON (and PostgreSQL's JSON type) has no inf or NaN: those become None."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value
