"""Sharing a fine-tune inside a deployment, read-only.

An owner shares the model of one of their succeeded jobs with a named user
or with everyone; a share can be revoked, and every check is made at the
request (domain/sharing/repository.py), so both take effect at once.

What a sharee gets: the fine-tune in /v1/models (owned_by stays the owner,
`shared_by` says so), chat, batches and evaluations with it, its job read
through `readable_job` (the job object, events, metrics, recipe and the
downloads), and the job's automatic evaluation through `readable_evaluation`.
What they do not: its checkpoint models (the owner's intermediate work; a
share is of the finished fine-tune), its checkpoints list, the evaluation's
predictions (they quote the owner's held-out examples), any of the owner's
files, other jobs or evaluations, and every change: deleting the model,
managing its shares, cancelling, pausing or resuming its job.

Answers: what a sharee can read but not change is a 403 that says it is
shared read-only (they know it exists anyway); for everyone else it does not
exist: the same 404 as any other user's object, shares or not.

Sharing with an unknown user name is a 400 that names it: the owner must
learn of a typo. That tells whether a user name exists, and nothing else,
and only to a user who owns a fine-tune (ownership is checked first), under
the API's rate limits; user names are no secret between the users of one
deployment, whose shared models are named after their owners.
"""

import time

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.auth.repository import UserRepository
from domain.errors import Forbidden, InvalidRequest, NotFound, model_not_found
from domain.evaluations.models import Evaluation
from domain.evaluations.repository import EvaluationRepository
from domain.ids import new_id
from domain.jobs.lineage import find_fine_tune
from domain.jobs.models import FineTuningJob
from domain.jobs.repository import JobRepository
from domain.sharing.models import ModelShare
from domain.sharing.repository import ShareRepository, shared_evaluation, shared_job, shared_job_by_model
from domain.sharing.schemas import CreateShareRequest, ShareObject


def read_only(what: str, object_id: str, *, param: str | None = None) -> Forbidden:
    """The answer to a sharee who asks to change what was shared with them."""
    return Forbidden(
        f"The {what} '{object_id}' was shared with you read-only; only its owner can do this.",
        param=param, code="read_only_share",
    )


def readable_job(session: Session, user: User, job_id: str) -> FineTuningJob:
    """A job the user may read: their own, or one whose fine-tune is shared
    with them. For read-only endpoints (the job, its downloads); anything that
    changes a job goes through domain.jobs.service.get_job (owner only)."""
    job = JobRepository(session, user.id).get(job_id) or shared_job(session, user.id, job_id)
    if job is None:
        raise NotFound.of("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


def readable_evaluation(session: Session, user: User, evaluation_id: str) -> Evaluation:
    """The user's evaluation, or the automatic evaluation of a fine-tune shared with them."""
    evaluation = EvaluationRepository(session, user.id).get(evaluation_id) or shared_evaluation(
        session, user.id, evaluation_id
    )
    if evaluation is None:
        raise NotFound.of("evaluation", evaluation_id, param="evaluation_id")
    return evaluation


def owner_name(session: Session, job: FineTuningJob) -> str:
    owner = session.get(User, job.owner_id)
    return owner.name if owner is not None else ""


def refuse_sharee_job(session: Session, user: User, job_id: str) -> None:
    """Raise read_only when the job is shared with the user (they asked to change it)."""
    if shared_job(session, user.id, job_id) is not None:
        raise read_only("fine-tuning job", job_id, param="fine_tuning_job_id")


def refuse_sharee_model(session: Session, user: User, model: str) -> None:
    if shared_job_by_model(session, user.id, model) is not None:
        raise read_only("model", model, param="model")


def refuse_sharee_evaluation(session: Session, user: User, evaluation_id: str) -> None:
    if shared_evaluation(session, user.id, evaluation_id) is not None:
        raise read_only("evaluation", evaluation_id, param="evaluation_id")


def _owned_fine_tune(session: Session, user: User, model: str) -> FineTuningJob:
    fine_tune = find_fine_tune(session, user.id, model)
    if fine_tune is not None and fine_tune.step is not None:
        raise InvalidRequest(
            f"'{model}' is a checkpoint model; checkpoints are not shared. Share its fine-tune "
            f"('{model.rsplit(':', 1)[0]}') once its job has succeeded.",
            param="model", code="model_not_shareable",
        )
    if fine_tune is None:
        refuse_sharee_model(session, user, model)
        raise model_not_found(model)
    return fine_tune.job


def list_shares(session: Session, user: User, model: str) -> list[ShareObject]:
    job = _owned_fine_tune(session, user, model)
    return [ShareObject.of(share, model, name) for share, name in ShareRepository(session, user.id).list(job.id)]


def create_share(session: Session, user: User, model: str, request: CreateShareRequest) -> ShareObject:
    """Sharing again with the same grantee returns the share that exists."""
    job = _owned_fine_tune(session, user, model)
    grantee: User | None = None
    if request.user is not None:
        grantee = UserRepository(session).get_by_name(request.user)
        if grantee is None:
            raise InvalidRequest(f"No user named '{request.user}' in this deployment.", param="user",
                                 code="user_not_found")
        if grantee.id == user.id:
            raise InvalidRequest(f"'{model}' is yours already; share it with another user.", param="user",
                                 code="invalid_share")
    shares = ShareRepository(session, user.id)
    grantee_id = grantee.id if grantee is not None else None
    share = shares.find(job.id, grantee_id)
    if share is None:
        try:
            share = shares.add(ModelShare(id=new_id("share_"), job_id=job.id, owner_id=user.id,
                                          grantee_user_id=grantee_id, created_at=int(time.time())))
            session.commit()
        except IntegrityError:  # the same share, made by a request at this very moment
            session.rollback()
            share = shares.find(job.id, grantee_id)
            assert share is not None
    return ShareObject.of(share, model, grantee.name if grantee is not None else None)


def revoke_share(session: Session, user: User, model: str, share_id: str) -> None:
    job = _owned_fine_tune(session, user, model)
    shares = ShareRepository(session, user.id)
    share = shares.get(job.id, share_id)
    if share is None:
        raise NotFound.of("share", share_id, param="share_id")
    session.delete(share)
    session.commit()
