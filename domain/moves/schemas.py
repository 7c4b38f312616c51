"""Moving fine-tuning jobs from a hosted OpenAI-compatible provider (a tunehouse
extension): the plan, the move and the comparison, as the API speaks them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.evaluations.schemas import MAX_JUDGES, JudgeSpec
from domain.pagination import ListPage

MAX_JOBS = 50  # per plan or move: each costs provider calls and a job here


class MappingEntry(BaseModel):
    """One field of the provider's job and what it becomes here."""

    field: str
    provider_value: Any = None
    value: Any = Field(default=None, description='What the tunehouse job gets ("auto": tunehouse chooses; null: none).')
    reason: str


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connection: str = Field(min_length=1, max_length=63)
    base_model: str = Field(min_length=1, max_length=255)
    jobs: list[str] | None = Field(default=None, min_length=1, max_length=MAX_JOBS,
                                   description="Provider job ids; left out: every fine-tuning job of the provider.")


class PlannedFile(BaseModel):
    role: Literal["training", "validation"]
    provider_file_id: str
    filename: str | None
    bytes: int | None
    lines: int | None = Field(default=None, description="When the provider says (another tunehouse does).")
    state: Literal["downloadable", "needs_upload", "matched"] = Field(
        description="downloadable: the provider hands its content back; needs_upload: it refuses to, upload your "
        "copy (matched by name, size and line count); matched: a file of yours already holds it.")
    file_id: str | None = Field(default=None, description="The matching file here (state matched).")


class PlannedJob(BaseModel):
    provider_job_id: str
    provider_model: str | None = Field(description="The provider's fine-tuned model, the comparison's other side.")
    status: str | None
    files: list[PlannedFile]
    mapping: list[MappingEntry]
    movable: bool
    problem: str | None = Field(default=None, description="Why it cannot move as it stands, if it cannot.")
    fine_tuning_job_id: str | None = Field(default=None, description="This job's earlier move here, if any.")


class PlanObject(BaseModel):
    object: Literal["move.plan"] = "move.plan"
    connection: str
    base_model: str
    jobs: list[PlannedJob]


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connection: str = Field(min_length=1, max_length=63)
    base_model: str = Field(min_length=1, max_length=255)
    jobs: list[str] = Field(min_length=1, max_length=MAX_JOBS)
    uploads: dict[str, str] | None = Field(
        default=None, description="{provider_file_id: file_id here}: your copies of files the provider refuses "
        "to hand back; each must match by name, size and line count.")


class MovedJob(BaseModel):
    provider_job_id: str
    fine_tuning_job_id: str
    training_file: str
    validation_file: str | None
    created: bool = Field(description="false: this provider job was moved before and that job is kept.")


class MoveObject(BaseModel):
    object: Literal["move"] = "move"
    jobs: list[MovedJob]


class MovedFrom(BaseModel):
    connection: str
    provider_job_id: str
    provider_model: str | None


class MoveListItem(BaseModel):
    object: Literal["move.job"] = "move.job"
    id: str = Field(description="The fine-tuning job here.")
    status: str
    fine_tuned_model: str | None
    moved_from: MovedFrom
    comparison_evaluation_id: str | None
    created_at: int


MoveList = ListPage[MoveListItem]


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fine_tuning_job_id: str = Field(min_length=1, max_length=64)
    judges: list[JudgeSpec] | None = Field(default=None, max_length=MAX_JUDGES,
                                           description="LLM judges, as in POST /v1/evaluations.")
    max_tokens: int | None = Field(default=None, ge=1)
    limit: int | None = Field(default=None, ge=1, le=1_000_000, description="At most this many held-out items.")
