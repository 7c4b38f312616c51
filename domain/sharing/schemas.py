"""Model shares (a tunehouse extension): an owner lets a named user, or every
user of the deployment, use one of their fine-tunes read-only."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.errors import refusal
from domain.sharing.models import ModelShare


class CreateShareRequest(BaseModel):
    """Exactly one of `user` (a user name of this deployment) or `everyone: true`."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, min_length=1, max_length=64)
    everyone: bool = False

    @model_validator(mode="after")
    def _one_grantee(self) -> "CreateShareRequest":
        if (self.user is None) == (not self.everyone):
            raise refusal(
                'Give either "user" (a user name) or "everyone": true, not both and not neither.',
                code="invalid_share",
            )
        return self


class ShareObject(BaseModel):
    object: Literal["model.share"] = "model.share"
    id: str
    model: str
    # The user it is shared with; None when shared with everyone.
    user: str | None
    everyone: bool
    created_at: int

    @classmethod
    def of(cls, share: ModelShare, model: str, grantee_name: str | None) -> "ShareObject":
        everyone = share.grantee_user_id is None
        return cls(id=share.id, model=model, user=None if everyone else grantee_name, everyone=everyone,
                   created_at=share.created_at)


class ShareList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ShareObject]


class ShareDeleted(BaseModel):
    id: str
    object: Literal["model.share"] = "model.share"
    deleted: bool
