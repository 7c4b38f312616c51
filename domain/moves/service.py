"""Moving fine-tuning jobs from a hosted OpenAI-compatible provider, reached
through one of the user's connections (domain/connections/):

1. plan: the provider's jobs, their files (downloadable, needing the user's
   copy, or already here) and the mapping of every field (mapping.py);
2. move: the files into tunehouse through the upload path (validated as any
   upload), then the jobs, created and queued as the jobs endpoint does; the
   origin goes into each job's metadata, so a second move finds the first;
3. compare: the provider's fine-tune (through the connection) against the new
   one on the job's held-out items, an evaluation like any other.

Docs: docs/moving.md.
"""

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from domain.auth.models import User
from domain.connections.client import ConnectionClient, ExternalCallError
from domain.connections.repository import ConnectionRepository
from domain.connections.service import call_failure, endpoint_of
from domain.errors import Conflict, InvalidRequest, NotFound, ServiceError, UpstreamFailed
from domain.evaluations import service as evaluations
from domain.evaluations.models import Evaluation
from domain.evaluations.schemas import CreateEvaluationRequest
from domain.files.models import File
from domain.files.repository import FileRepository
from domain.files.service import IncomingFile, delete_file, record_file, usable_file
from domain.jobs import service as jobs
from domain.jobs.hyperparameters import stats_from_report
from domain.jobs.models import FineTuningJob
from domain.jobs.schemas import CreateJobRequest
from domain.moves.mapping import ORIGIN_CONNECTION, ORIGIN_JOB, ORIGIN_MODEL, MappedJob, map_job
from domain.moves.repository import COMPARES_KEY, MoveRepository
from domain.moves.schemas import (
    CompareRequest, MoveListItem, MovedFrom, MovedJob, MoveObject, MoveRequest, PlannedFile, PlannedJob,
    PlanObject, PlanRequest,
)
from domain.queue_client import TaskQueue
from domain.settings import Settings
from domain.storage import Storage

log = logging.getLogger("tunehouse.moves")

PAGE = 100  # provider jobs per list request
MAX_PROVIDER_JOBS = 1000  # a plan of every job stops here (a provider paging for ever)
# Jobs in these states are kept by a second move; a failed or cancelled move is made again.
_REPLACEABLE = ("failed", "cancelled")


@dataclass(frozen=True)
class Parts:
    """What a move uses beside the request's session: the upload path records
    files in sessions of its own, and jobs and evaluations are queued."""

    db: sessionmaker
    storage: Storage
    settings: Settings
    queue: TaskQueue


# ----------------------------------------------------------------- the provider


def provider_client(session: Session, settings: Settings, user: User, connection: str) -> ConnectionClient:
    """The user's connection `connection` as a client; 404 when it is not theirs."""
    found = ConnectionRepository(session, user.id).get_by_name(connection)
    if found is None:
        raise NotFound.of("connection", connection, param="connection")
    return ConnectionClient(endpoint_of(found, settings), settings, interactive=True)


def _upstream(error: ExternalCallError, what: str) -> ServiceError:
    return call_failure(error, f"{what}: {error.message}", f"provider_{error.code}")


def _provider_job(client: ConnectionClient, job_id: str, param: str) -> dict:
    try:
        job = client.get_json(f"/fine_tuning/jobs/{job_id}")
    except ExternalCallError as exc:
        if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, 429):
            raise NotFound(f"The provider has no fine-tuning job '{job_id}' ({exc.message})", param=param,
                           code="provider_job_not_found") from None
        raise _upstream(exc, f"Reading the provider's job '{job_id}'") from None
    if not isinstance(job.get("training_file"), str):
        raise UpstreamFailed(f"The provider's job '{job_id}' has no training file.", code="provider_bad_response")
    return job | {"id": job_id}


def provider_jobs(client: ConnectionClient) -> list[dict]:
    """Every fine-tuning job of the provider, page by page (OpenAI's after/has_more)."""
    found: list[dict] = []
    after: str | None = None
    while len(found) < MAX_PROVIDER_JOBS:
        params = {"limit": PAGE} | ({"after": after} if after else {})
        try:
            page = client.get_json("/fine_tuning/jobs", params=params)
        except ExternalCallError as exc:
            raise _upstream(exc, "Listing the provider's fine-tuning jobs") from None
        listed = page.get("data")
        data = [job for job in (listed if isinstance(listed, list) else [])
                if isinstance(job, dict) and isinstance(job.get("id"), str)]
        # A job without a training file (another kind of job, a malformed one) has nothing to move.
        found.extend(job for job in data if isinstance(job.get("training_file"), str))
        if not page.get("has_more") or not data or data[-1]["id"] == after:
            break
        after = data[-1]["id"]
    return found[:MAX_PROVIDER_JOBS]


@dataclass
class ProviderFile:
    role: str
    id: str
    filename: str | None = None
    bytes: int | None = None
    lines: int | None = None
    sha256: str | None = None
    downloadable: bool = False

    @classmethod
    def read(cls, client: ConnectionClient, role: str, file_id: str) -> "ProviderFile":
        """Its metadata, and whether the provider hands its content back
        (it is asked for the content and answers with its first bytes or a 4xx)."""
        try:
            meta = client.get_json(f"/files/{file_id}")
        except ExternalCallError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                return cls(role, file_id)  # gone from the provider: nothing to match or download
            raise _upstream(exc, f"Reading the provider's file '{file_id}'") from None
        report = meta.get("report") if isinstance(meta.get("report"), dict) else {}
        found = cls(role, file_id, filename=_text(meta.get("filename")), bytes=_count(meta.get("bytes")),
                    lines=_count(report.get("lines")), sha256=_text(meta.get("sha256")))
        content = client.iter_bytes(f"/files/{file_id}/content")
        try:
            next(content, None)
            found.downloadable = True
        except ExternalCallError as exc:
            if exc.status is None or not 400 <= exc.status < 500:
                raise _upstream(exc, f"Reading the content of the provider's file '{file_id}'") from None
        finally:
            content.close()
        return found

    def matches(self, file: File) -> bool:
        """A file here holds this one: same name and size, and the line count
        and sha256 where the provider says them."""
        if self.filename is None or self.bytes is None:
            return False
        if (file.filename, file.bytes) != (self.filename, self.bytes):
            return False
        if self.lines is not None and (file.report or {}).get("lines") != self.lines:
            return False
        return self.sha256 is None or file.sha256 == self.sha256

    def describe(self) -> str:
        said = [f"name '{self.filename}'", f"{self.bytes} bytes"] + ([f"{self.lines} lines"] if self.lines else [])
        return ", ".join(said)


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _job_files(client: ConnectionClient, job: dict) -> list[ProviderFile]:
    files = [ProviderFile.read(client, "training", job["training_file"])]
    if isinstance(job.get("validation_file"), str) and job["validation_file"]:
        files.append(ProviderFile.read(client, "validation", job["validation_file"]))
    return files


def _local_match(session: Session, user: User, provider_file: ProviderFile) -> File | None:
    if provider_file.filename is None or provider_file.bytes is None:
        return None
    candidates = MoveRepository(session, user.id).files_like(provider_file.filename, provider_file.bytes)
    return next((file for file in candidates if provider_file.matches(file)), None)


# ----------------------------------------------------------------- planning


def _check_base_model(settings: Settings, base_model: str) -> None:
    if base_model not in settings.base_models:
        offered = ", ".join(sorted(settings.base_models))
        raise InvalidRequest(f"Model '{base_model}' is not a base model offered here. Base models offered: {offered}.",
                             param="base_model", code="model_not_found")


def _earlier_move(session: Session, user: User, connection: str, provider_job_id: str) -> FineTuningJob | None:
    return next((job for job in MoveRepository(session, user.id).moves_of(connection, provider_job_id)
                 if job.status not in _REPLACEABLE), None)


def _split_sizes(file: File | None) -> tuple[int | None, int | None]:
    if file is None or not file.report:
        return None, None
    stats = stats_from_report(file.report)
    return stats.train_examples, stats.eval_examples


def _mapped(job: dict, connection: str, base_model: str, training: File | None) -> MappedJob:
    train, held_out = _split_sizes(training)
    return map_job(job, base_model=base_model, connection=connection, train_examples=train, held_out=held_out)


def plan(session: Session, settings: Settings, user: User, request: PlanRequest) -> PlanObject:
    _check_base_model(settings, request.base_model)
    client = provider_client(session, settings, user, request.connection)
    if request.jobs:
        found = [_provider_job(client, job_id, f"jobs[{i}]") for i, job_id in enumerate(request.jobs)]
    else:
        found = provider_jobs(client)
    planned = []
    for job in found:
        files, problems, local = [], [], {}
        for provider_file in _job_files(client, job):
            match = _local_match(session, user, provider_file)
            local[provider_file.role] = match
            state = "matched" if match else "downloadable" if provider_file.downloadable else "needs_upload"
            if provider_file.filename is None and match is None:
                problems.append(f"the provider no longer has its {provider_file.role} file '{provider_file.id}'")
            elif state == "needs_upload":
                problems.append(f"the provider refuses the content of its {provider_file.role} file "
                                f"'{provider_file.id}': upload your copy ({provider_file.describe()})")
            files.append(PlannedFile(role=provider_file.role, provider_file_id=provider_file.id,
                                     filename=provider_file.filename, bytes=provider_file.bytes,
                                     lines=provider_file.lines, state=state, file_id=match.id if match else None))
        mapped = _mapped(job, request.connection, request.base_model, local.get("training"))
        if mapped.problem:
            problems.insert(0, mapped.problem)
        earlier = _earlier_move(session, user, request.connection, job["id"])
        if earlier is not None:
            problems = []  # a move keeps the job made before
        planned.append(PlannedJob(
            provider_job_id=job["id"], provider_model=_text(job.get("fine_tuned_model")), status=_text(job.get("status")),
            files=files, mapping=mapped.mapping, movable=not problems, problem="; ".join(problems) or None,
            fine_tuning_job_id=earlier.id if earlier else None))
    return PlanObject(connection=request.connection, base_model=request.base_model, jobs=planned)


def ready(job: PlannedJob, uploads: Collection[str] = ()) -> bool:
    """Whether a planned job can move, given copies of these provider files."""
    if job.fine_tuning_job_id:
        return True
    if any(entry.field == "method" and entry.value is None for entry in job.mapping):
        return False
    return all(file.state != "needs_upload" or (file.provider_file_id in uploads and file.filename is not None)
               for file in job.files)


# ----------------------------------------------------------------- moving


@dataclass
class _Pending:
    """One provider job on its way here."""

    job: dict
    files: list[ProviderFile]
    local: dict[str, File] = field(default_factory=dict)  # role -> the file here
    earlier: FineTuningJob | None = None


def _uploaded(session: Session, storage: Storage, user: User, pending: list[_Pending],
              uploads: dict[str, str]) -> dict[str, File]:
    """The user's copies named in `uploads`, each checked against its provider file."""
    by_id = {provider_file.id: provider_file for item in pending for provider_file in item.files}
    chosen = {}
    for provider_file_id, file_id in uploads.items():
        param = f"uploads.{provider_file_id}"
        provider_file = by_id.get(provider_file_id)
        if provider_file is None:
            raise InvalidRequest(f"'{provider_file_id}' is not a training or validation file of the jobs moved.",
                                 param=param, code="unknown_provider_file")
        file = usable_file(session, user, file_id, purpose="fine-tune", param=param, storage=storage)
        if not provider_file.matches(file):
            theirs = f"name '{file.filename}', {file.bytes} bytes, {(file.report or {}).get('lines')} lines"
            raise InvalidRequest(
                f"File '{file_id}' ({theirs}) does not match the provider's file '{provider_file_id}' "
                f"({provider_file.describe()}).", param=param, code="upload_mismatch")
        chosen[provider_file_id] = file
    return chosen


def store_file(parts: Parts, user: User, chunks: Iterable[bytes], filename: str) -> File:
    """A fine-tune file into tunehouse by the upload path (domain/files/service.py):
    streamed, size-limited, validated, stored; nothing kept if it is refused."""
    incoming = IncomingFile(parts.storage, user.id, parts.settings.max_upload_bytes)
    incoming.expect("fine-tune")
    try:
        for chunk in chunks:
            incoming.feed(chunk)
        file = incoming.finish("fine-tune", filename)
    except BaseException:
        incoming.abort()
        raise
    record_file(parts.db, parts.storage, file)
    return file


def _download(parts: Parts, client: ConnectionClient, user: User, provider_file: ProviderFile) -> File:
    try:
        return store_file(parts, user, client.iter_bytes(f"/files/{provider_file.id}/content"),
                          provider_file.filename or f"{provider_file.id}.jsonl")
    except ExternalCallError as exc:
        raise _upstream(exc, f"Downloading the provider's file '{provider_file.id}'") from None
    except ServiceError as exc:  # invalid or too large: said as the provider's file
        raise type(exc)(f"The provider's file '{provider_file.id}' was refused here: {exc.message}",
                        param="jobs", code=exc.code, details=exc.details) from None


def _job_request(item: _Pending, mapped: MappedJob) -> CreateJobRequest:
    validation = item.local.get("validation")
    return CreateJobRequest.model_validate(
        {**mapped.request, "training_file": item.local["training"].id}
        | ({"validation_file": validation.id} if validation else {}))


def move(session: Session, parts: Parts, user: User, request: MoveRequest) -> MoveObject:
    """Everything is checked before anything changes: the connection, the
    provider's jobs, the copies in `uploads`, files the provider refuses
    without a copy here, and each job as the jobs endpoint would. Then the
    files are downloaded (all removed again if one is refused) and the jobs
    created and queued. A provider job moved before (and not failed or
    cancelled here) keeps its job."""
    _check_base_model(parts.settings, request.base_model)
    client = provider_client(session, parts.settings, user, request.connection)
    if len(set(request.jobs)) != len(request.jobs):
        raise InvalidRequest("A provider job is named twice.", param="jobs", code="duplicate_job")
    pending = [_Pending(job, []) for job in
               (_provider_job(client, job_id, f"jobs[{i}]") for i, job_id in enumerate(request.jobs))]
    for index, item in enumerate(pending):
        item.earlier = _earlier_move(session, user, request.connection, item.job["id"])
        mapped = map_job(item.job, base_model=request.base_model, connection=request.connection)
        if mapped.problem and item.earlier is None:
            raise InvalidRequest(f"Job '{item.job['id']}': {mapped.problem}.", param=f"jobs[{index}]",
                                 code="unsupported_method")
        if item.earlier is None:
            item.files = _job_files(client, item.job)
    uploads = _uploaded(session, parts.storage, user, pending, request.uploads or {})

    to_download: dict[str, ProviderFile] = {}
    for item in (item for item in pending if item.earlier is None):
        for provider_file in item.files:
            local = uploads.get(provider_file.id) or _local_match(session, user, provider_file)
            if local is not None:
                item.local[provider_file.role] = local
            elif provider_file.downloadable:
                to_download[provider_file.id] = provider_file
            else:
                what = ("is gone from the provider" if provider_file.filename is None else
                        f"cannot be downloaded from the provider ({provider_file.describe()}): upload your copy "
                        "and name it in uploads, or upload it under the same name and it is matched")
                raise InvalidRequest(f"The {provider_file.role} file '{provider_file.id}' of job "
                                     f"'{item.job['id']}' {what}.", param="uploads", code="file_needs_upload")
    session.commit()  # ends the reads; the downloads record their files in sessions of their own

    downloaded: list[File] = []
    try:
        for provider_file in to_download.values():
            downloaded.append(_download(parts, client, user, provider_file))
        by_provider_id = dict(zip(to_download, downloaded))
        requests = []
        for item in (item for item in pending if item.earlier is None):
            for provider_file in item.files:
                if provider_file.id in by_provider_id:
                    item.local[provider_file.role] = by_provider_id[provider_file.id]
            mapped = _mapped(item.job, request.connection, request.base_model, item.local["training"])
            job_request = _job_request(item, mapped)
            jobs.preview_hyperparameters(session, parts.storage, parts.settings, user, job_request)
            requests.append((item, job_request))
    except BaseException:
        session.rollback()
        for file in downloaded:  # a refused move leaves nothing behind
            delete_file(session, parts.storage, user, file.id)
        raise

    for item, job_request in requests:
        item.earlier = jobs.create_job(session, parts.storage, parts.settings, user, job_request)
        jobs.enqueue(session, parts.queue, item.earlier)
        log.info("moved provider job %s of connection %s to %s", item.job["id"], request.connection, item.earlier.id)
    created = {id(item) for item, _ in requests}
    return MoveObject(jobs=[
        MovedJob(provider_job_id=item.job["id"], fine_tuning_job_id=item.earlier.id,
                 training_file=item.earlier.training_file_id, validation_file=item.earlier.validation_file_id,
                 created=id(item) in created)
        for item in pending])


# ----------------------------------------------------------------- after the move


def moved_from(job: FineTuningJob) -> MovedFrom | None:
    metadata = job.user_metadata or {}
    if ORIGIN_CONNECTION not in metadata:
        return None
    return MovedFrom(connection=metadata[ORIGIN_CONNECTION], provider_job_id=metadata.get(ORIGIN_JOB, ""),
                     provider_model=metadata.get(ORIGIN_MODEL) or None)


def list_moves(session: Session, user: User, *, after: str | None, limit: int) -> list[MoveListItem]:
    """`limit` + 1 items at most (the list page's extra row)."""
    repository = MoveRepository(session, user.id)
    moved = repository.moved_jobs(after=after, limit=limit)
    comparisons = repository.comparisons([job.id for job in moved])
    return [MoveListItem(id=job.id, status=job.status, fine_tuned_model=job.fine_tuned_model,
                         moved_from=moved_from(job), comparison_evaluation_id=comparisons.get(job.id),
                         created_at=job.created_at)
            for job in moved]


def compare(session: Session, parts: Parts, user: User, request: CompareRequest) -> Evaluation:
    """An evaluation of the provider's fine-tune (through the connection) and
    the moved job's fine-tune on the job's held-out items: its validation file,
    else its training file's TEST split (as the job's own evaluation)."""
    job = jobs.get_job(session, user, request.fine_tuning_job_id)
    origin = moved_from(job)
    if origin is None:
        raise InvalidRequest(f"Job '{job.id}' was not moved from a provider.", param="fine_tuning_job_id",
                             code="not_a_moved_job")
    if job.status != "succeeded" or not job.fine_tuned_model:
        raise Conflict(f"Job '{job.id}' is {job.status}; it is compared once it has succeeded.",
                       param="fine_tuning_job_id", code="job_not_succeeded")
    if not origin.provider_model:
        raise Conflict(f"The provider's job '{origin.provider_job_id}' had no fine-tuned model when it was moved: "
                       "nothing to compare with.", param="fine_tuning_job_id", code="no_provider_model")
    file_id, split = (job.validation_file_id, "all") if job.validation_file_id else (job.training_file_id, "test")
    evaluation_request = CreateEvaluationRequest.model_validate({
        "file_id": file_id, "split": split,
        "models": [f"conn:{origin.connection}/{origin.provider_model}", job.fine_tuned_model],
        "max_tokens": request.max_tokens, "limit": request.limit, "seed": job.seed,
        "metadata": {COMPARES_KEY: job.id} | {key: value for key, value in (job.user_metadata or {}).items()
                                              if key in (ORIGIN_CONNECTION, ORIGIN_JOB, ORIGIN_MODEL)},
        "judges": request.judges,
    })
    evaluation = evaluations.create_evaluation(session, parts.storage, parts.settings, user, evaluation_request)
    evaluations.enqueue(session, parts.queue, evaluation)
    return evaluation
