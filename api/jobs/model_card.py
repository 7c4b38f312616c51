"""A succeeded fine-tune's model card (README.md in Hugging Face's form) and
its training curves (domain/jobs/model_card.py), for the owner and those it
is shared with."""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.orm import Session

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import COMMON_ERROR_RESPONSES, APIError, error_responses
from domain.auth.models import User
from domain.jobs.model_card import model_card, training_curves_png
from domain.jobs.models import FineTuningJob
from domain.jobs.repository import JobRepository
from domain.jobs.training_metrics import metrics_by_step
from domain.sharing.service import readable_job

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=COMMON_ERROR_RESPONSES)


def succeeded_job(session: Session, user: User, job_id: str) -> FineTuningJob:
    job = readable_job(session, user, job_id)
    if job.status != "succeeded" or not job.recipe:
        raise APIError(409, f"Job '{job_id}' is {job.status}; its model card exists once it succeeds.", code="model_card_not_ready")
    return job


@router.get(
    "/{job_id}/model_card",
    response_class=Response,
    responses={
        200: {"content": {"text/markdown": {"schema": {"type": "string"}}}, "description": "The card, as Markdown."},
        **error_responses(404, 409),
    },
)
def get_model_card(job_id: str, user: CurrentUser, session: SessionDep, state: StateDep) -> PlainTextResponse:
    """Extension: the fine-tune's README.md (Hugging Face model-card form): the
    method, every hyperparameter with its origin, the data, the curves, the
    automatic evaluation beside the base model, lineage, libraries, hardware
    and how to load it. Its image is `model_card/training_curves.png`."""
    job = succeeded_job(session, user, job_id)
    return PlainTextResponse(model_card(session, state.settings, job), media_type="text/markdown; charset=utf-8")


@router.get(
    "/{job_id}/model_card/training_curves.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "The PNG."},
        **error_responses(404, 409),
    },
)
def get_training_curves(job_id: str, user: CurrentUser, session: SessionDep) -> Response:
    """Extension: the model card's loss (training, validation) and learning-rate curves by step."""
    job = succeeded_job(session, user, job_id)
    rows = metrics_by_step(JobRepository(session, job.owner_id).metrics_events(job.id))
    session.close()  # drawing needs no database turn
    return Response(training_curves_png(rows), media_type="image/png")
