"""Fine-tuning objects in OpenAI's shapes, plus tunehouse's extensions."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator, model_validator

from domain.errors import refusal
from domain.jobs.hyperparameters import DPO_NAMES, OPENAI_NAMES, DpoHyperparameters, Hyperparameters
from domain.jobs.models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob
from domain.metadata import Metadata
from domain.pagination import ListPage


def _known_method(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise refusal(
            f"method.type must be 'supervised' or 'dpo', got {value!r} (reinforcement fine-tuning is not offered).",
            code="unsupported_method",
        ) from None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None


class FineTuningMethod(BaseModel):
    """OpenAI's `method`: supervised fine-tuning on chat, text or
    prompt/completion files, or DPO on preference pairs."""

    model_config = ConfigDict(extra="forbid")

    type: Annotated[Literal["supervised", "dpo"], WrapValidator(_known_method)]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> "FineTuningMethod":
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise refusal(f"method.{other} was given with method.type '{self.type}'; "
                          f"give the settings in method.{self.type}.", code="invalid_method")
        return self


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    # The same object may come here or, in OpenAI's newer form, as
    # method.supervised.hyperparameters (not both); DPO's only in method.dpo.
    hyperparameters: Hyperparameters | None = None
    method: FineTuningMethod | None = None
    # ":" separates the parts of a fine-tuned model's name, so it cannot appear here.
    suffix: str | None = Field(default=None, max_length=40, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: Metadata = None
    integrations: list[Any] | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobParent(BaseModel):
    model: str  # the `ft:…` name the job was created with
    fine_tuning_job: str | None
    checkpoint_step: int | None


class JobObject(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str]
    status: Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
    validation_file: str | None
    training_file: str
    # The OpenAI three plus every extension, all resolved once the job runs.
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    trained_tokens: int | None
    error: JobError | None
    user_provided_suffix: str | None
    seed: int
    estimated_finish: int | None
    integrations: list[Any] = []
    metadata: dict[str, str] | None
    # Extensions.
    hyperparameter_details: dict[str, Any] | None = Field(
        description="Every hyperparameter with its value, origin (user | auto | default | parent) and reason."
    )
    progress: dict[str, Any]
    evaluation_id: str | None = Field(
        default=None, description="The evaluation made when the job succeeded: base model vs the fine-tune."
    )
    base_model: str | None = Field(
        default=None, description="The root base model; `model` is the fine-tune this job continues, if it does."
    )
    parent: JobParent | None = Field(
        default=None, description="The fine-tune (or checkpoint model) this job continues, if any."
    )

    @classmethod
    def of(cls, job: FineTuningJob, owner_name: str) -> "JobObject":
        hyperparameters = _visible_hyperparameters(job)
        return cls(
            id=job.id,
            model=job.parent_model or job.model,  # OpenAI: the model fine-tuned, a fine-tune included
            created_at=job.created_at,
            finished_at=job.finished_at,
            fine_tuned_model=job.fine_tuned_model,
            organization_id=owner_name,
            result_files=job.result_files or [],
            status=job.status,
            validation_file=job.validation_file_id,
            training_file=job.training_file_id,
            hyperparameters=hyperparameters,
            method={"type": job.method, job.method: {"hyperparameters": hyperparameters}},
            trained_tokens=job.trained_tokens,
            error=JobError(**job.error) if job.error else None,
            user_provided_suffix=job.suffix,
            seed=job.seed,
            estimated_finish=job.estimated_finish,
            metadata=job.user_metadata,
            hyperparameter_details=job.hyperparameters,
            progress={
                "step": job.step,
                "total_steps": job.total_steps,
                "checkpoint_step": job.checkpoint_step,
                "attempt": job.attempt,
                # Asked to pause; the worker saves its step, then the job is paused.
                "pause_requested": bool(job.pause_requested) and job.status == "running",
            },
            evaluation_id=job.evaluation_id,
            base_model=job.model,
            parent=JobParent(model=job.parent_model, fine_tuning_job=job.parent_job_id,
                             checkpoint_step=job.parent_checkpoint_step) if job.parent_model else None,
        )


def _visible_hyperparameters(job: FineTuningJob) -> dict[str, Any]:
    """Resolved values once a worker has seen the data; until then what the
    user asked for, with "auto" for the OpenAI three they left open."""
    if job.hyperparameters:
        return {name: detail["value"] for name, detail in job.hyperparameters.items()}
    values = {name: "auto" for name in (OPENAI_NAMES + DPO_NAMES if job.method == "dpo" else OPENAI_NAMES)}
    values.update(job.requested_hyperparameters)
    return values


class EventObject(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: FineTuningEvent) -> "EventObject":
        return cls(
            id=event.id,
            created_at=event.created_at,
            level=event.level,
            message=event.message,
            type=event.type,
            data=event.data,
        )


class CheckpointObject(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int

    @classmethod
    def of(cls, checkpoint: FineTuningCheckpoint, job: FineTuningJob, owner_name: str) -> "CheckpointObject":
        return cls(
            id=checkpoint.id,
            created_at=checkpoint.created_at,
            fine_tuned_model_checkpoint=f"{fine_tuned_model_name(job, owner_name)}:ckpt-step-{checkpoint.step_number}",
            fine_tuning_job_id=job.id,
            metrics=checkpoint.metrics,
            step_number=checkpoint.step_number,
        )


class JobMetrics(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]] = Field(description="One row per training step, in step order.")
    total_steps: int | None


class MergedWeightsPending(BaseModel):
    object: Literal["fine_tuning.job.merged_weights"] = "fine_tuning.job.merged_weights"
    job_id: str
    status: str | None
    message: str


JobList = ListPage[JobObject]
EventList = ListPage[EventObject]
CheckpointList = ListPage[CheckpointObject]


def fine_tuned_model_name(job: FineTuningJob, owner_name: str) -> str:
    return f"ft:{job.model}:{owner_name}:{job.suffix or ''}:{job.id}"
