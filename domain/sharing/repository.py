"""Queries on model shares.

`ShareRepository` answers an owner about their own shares. The rest answers
"may this user read that?" for everyone else: a share names the user or
everyone (grantee NULL), and only counts while its fine-tune exists (the job
succeeded and its model was not deleted). Every check is a query at the time
of the request, never a cache, so a revoked share is gone at once.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists, or_, select
from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.evaluations.models import Evaluation
from domain.jobs.models import FineTuningJob
from domain.sharing.models import ModelShare


class ShareRepository:
    def __init__(self, session: Session, owner_id: int):
        self.session = session
        self.owner_id = owner_id

    def list(self, job_id: str) -> list[tuple[ModelShare, str | None]]:
        """The shares of one of the owner's jobs with each grantee's name
        (None: everyone), oldest first."""
        query = (
            select(ModelShare, User.name)
            .outerjoin(User, User.id == ModelShare.grantee_user_id)
            .where(ModelShare.job_id == job_id, ModelShare.owner_id == self.owner_id)
            .order_by(ModelShare.created_at, ModelShare.id)
        )
        return [(share, name) for share, name in self.session.execute(query)]

    def find(self, job_id: str, grantee_user_id: int | None) -> ModelShare | None:
        grantee = (
            ModelShare.grantee_user_id.is_(None)
            if grantee_user_id is None
            else ModelShare.grantee_user_id == grantee_user_id
        )
        return self.session.scalar(
            select(ModelShare).where(ModelShare.job_id == job_id, ModelShare.owner_id == self.owner_id, grantee)
        )

    def get(self, job_id: str, share_id: str) -> ModelShare | None:
        return self.session.scalar(
            select(ModelShare).where(
                ModelShare.id == share_id, ModelShare.job_id == job_id, ModelShare.owner_id == self.owner_id
            )
        )

    def add(self, share: ModelShare) -> ModelShare:
        self.session.add(share)
        self.session.flush()
        return share

    def delete_all(self, job_id: str) -> None:
        """When the model is deleted its shares go with it. Does not commit."""
        for share in self.session.scalars(
            select(ModelShare).where(ModelShare.job_id == job_id, ModelShare.owner_id == self.owner_id)
        ):
            self.session.delete(share)


def shared_with(user_id: int) -> ColumnElement[bool]:
    """A condition on FineTuningJob: its fine-tune is shared with this user
    (by name or with everyone), and exists."""
    share = exists().where(
        ModelShare.job_id == FineTuningJob.id,
        ModelShare.owner_id == FineTuningJob.owner_id,
        or_(ModelShare.grantee_user_id == user_id, ModelShare.grantee_user_id.is_(None)),
    )
    return (
        share
        & (FineTuningJob.owner_id != user_id)
        & (FineTuningJob.status == "succeeded")
        & FineTuningJob.fine_tuned_model.is_not(None)
        & FineTuningJob.model_deleted.is_(False)
    )


def shared_job(session: Session, user_id: int, job_id: str) -> FineTuningJob | None:
    """Another user's job whose fine-tune is shared with this user."""
    return session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id, shared_with(user_id)))


def shared_job_by_model(session: Session, user_id: int, model: str) -> FineTuningJob | None:
    return session.scalar(select(FineTuningJob).where(FineTuningJob.fine_tuned_model == model, shared_with(user_id)))


def shared_jobs(session: Session, user_id: int) -> list[tuple[FineTuningJob, str]]:
    """Every fine-tune shared with this user, with its owner's name, newest first."""
    query = (
        select(FineTuningJob, User.name)
        .join(User, User.id == FineTuningJob.owner_id)
        .where(shared_with(user_id))
        .order_by(FineTuningJob.id.desc())
    )
    return [(job, name) for job, name in session.execute(query)]


def shared_evaluation(session: Session, user_id: int, evaluation_id: str) -> Evaluation | None:
    """The automatic evaluation of a fine-tune shared with this user (the
    owner's evaluations of it made by hand are theirs alone)."""
    return session.scalar(
        select(Evaluation)
        .join(FineTuningJob, FineTuningJob.id == Evaluation.fine_tuning_job_id)
        .where(
            Evaluation.id == evaluation_id,
            Evaluation.owner_id == FineTuningJob.owner_id,
            FineTuningJob.evaluation_id == Evaluation.id,
            shared_with(user_id),
        )
    )
