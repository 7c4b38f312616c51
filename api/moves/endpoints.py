"""Moving fine-tuning jobs from a hosted OpenAI-compatible provider (extension):
plan, move, list the moved jobs, compare (domain/moves/service.py, docs/moving.md)."""

from typing import Annotated

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import COMMON_ERROR_RESPONSES, error_responses
from api.pagination import LimitQuery, after_query, check_cursor, list_page
from domain.evaluations.schemas import EvaluationObject
from domain.moves import service
from domain.moves.schemas import CompareRequest, MoveList, MoveObject, MoveRequest, PlanObject, PlanRequest

router = APIRouter(prefix="/v1/moves", tags=["moves"], responses=COMMON_ERROR_RESPONSES)

# 404: the connection or a provider job is unknown; 502: the provider failed to answer.
_PROVIDER_ERRORS = error_responses(404, 502)
_PROVIDER_ERRORS[502] = {**_PROVIDER_ERRORS[502],
                         "description": "The provider did not answer, or answered with an error (after the connection's "
                                        "retries); `code` is `provider_` and the connection's error code."}


def _parts(state) -> service.Parts:
    return service.Parts(db=state.sessionmaker, storage=state.storage, settings=state.settings, queue=state.queue)


@router.post("/plan", response_model=PlanObject, responses=_PROVIDER_ERRORS)
def plan_move(body: PlanRequest, user: CurrentUser, session: SessionDep, state: StateDep) -> PlanObject:
    """The provider's fine-tuning jobs (all, or those named), their files (downloadable, needing your
    copy, or already here) and what every field of each job becomes here, with the reason. Changes nothing."""
    return service.plan(session, state.settings, user, body)


@router.post("", response_model=MoveObject, responses={**_PROVIDER_ERRORS, **error_responses(409, 413)})
def move_jobs(body: MoveRequest, user: CurrentUser, session: SessionDep, state: StateDep) -> MoveObject:
    """The files into tunehouse (validated as uploads), then the jobs, created and queued. A provider
    job moved before keeps its job (`created: false`); a refused move leaves nothing behind."""
    return service.move(session, _parts(state), user, body)


@router.get("", response_model=MoveList)
def list_moves(
    user: CurrentUser,
    session: SessionDep,
    limit: LimitQuery = 20,
    after: Annotated[str | None, after_query("ftjob-")] = None,
) -> dict:
    """The jobs moved here, newest first, each with its origin and newest comparison."""
    items = service.list_moves(session, user, after=check_cursor("ftjob-", after), limit=limit + 1)
    return list_page(items, limit, lambda item: item)


@router.post("/compare", response_model=EvaluationObject, responses=error_responses(404, 409))
def compare_move(body: CompareRequest, user: CurrentUser, session: SessionDep, state: StateDep) -> EvaluationObject:
    """An evaluation of the provider's fine-tune (through the connection) beside the moved job's
    fine-tune on the job's held-out items; judges as in POST /v1/evaluations."""
    return EvaluationObject.of(service.compare(session, _parts(state), user, body))
