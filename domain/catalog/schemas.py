from typing import Literal

from pydantic import BaseModel


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions: what the model is and where it came from.
    kind: Literal["base", "fine-tune", "checkpoint"]
    base_model: str | None = None  # the root base model
    fine_tuning_job: str | None = None
    # A checkpoint model: the step of its job it was saved at.
    step_number: int | None = None
    # A fine-tune (or checkpoint) of a job that continued an earlier fine-tune: that model.
    parent_model: str | None = None
    # A fine-tune another user shared with the caller (read-only): its owner.
    shared_by: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
