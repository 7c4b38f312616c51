"""Queries of moves, every one scoped to the owner: moved jobs (a job's
metadata names its origin), their comparisons, and the owner's files that
match a provider's file."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.evaluations.models import Evaluation
from domain.files.models import File
from domain.jobs.models import FineTuningJob
from domain.moves.mapping import ORIGIN_CONNECTION, ORIGIN_JOB

# An evaluation comparing a moved job with the provider's fine-tune names the job here.
COMPARES_KEY = "moved_job"


class MoveRepository:
    def __init__(self, session: Session, owner_id: int):
        self.session = session
        self.owner_id = owner_id

    def moved_jobs(self, *, after: str | None, limit: int) -> list[FineTuningJob]:
        """Newest first."""
        query = select(FineTuningJob).where(
            FineTuningJob.owner_id == self.owner_id,
            FineTuningJob.user_metadata[ORIGIN_CONNECTION].as_string().is_not(None),
        )
        if after:
            query = query.where(FineTuningJob.id < after)
        return list(self.session.scalars(query.order_by(FineTuningJob.id.desc()).limit(limit)))

    def moves_of(self, connection: str, provider_job_id: str) -> list[FineTuningJob]:
        """The jobs moved here from this provider job, newest first."""
        query = select(FineTuningJob).where(
            FineTuningJob.owner_id == self.owner_id,
            FineTuningJob.user_metadata[ORIGIN_CONNECTION].as_string() == connection,
            FineTuningJob.user_metadata[ORIGIN_JOB].as_string() == provider_job_id,
        )
        return list(self.session.scalars(query.order_by(FineTuningJob.id.desc())))

    def comparisons(self, job_ids: list[str]) -> dict[str, str]:
        """{job id: its newest comparison's evaluation id}."""
        if not job_ids:
            return {}
        compared = Evaluation.user_metadata[COMPARES_KEY].as_string()
        query = (select(compared, Evaluation.id)
                 .where(Evaluation.owner_id == self.owner_id, compared.in_(job_ids))
                 .order_by(Evaluation.id))
        return {job_id: evaluation_id for job_id, evaluation_id in self.session.execute(query)}

    def files_like(self, filename: str, size: int) -> list[File]:
        """The owner's processed fine-tune files of this name and size, newest first."""
        query = select(File).where(
            File.owner_id == self.owner_id, File.filename == filename, File.bytes == size,
            File.purpose == "fine-tune", File.status == "processed",
        )
        return list(self.session.scalars(query.order_by(File.id.desc())))
