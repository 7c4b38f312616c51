"""One batch on an inference worker: claim it, answer every input line, write
the output and error files, record all of it.

Lines are grouped by base model, so each base is loaded once per batch; the
lines of one base run together in padded generation batches whatever their
adapter (PEFT mixed-adapter batches), sorted by prompt length to waste little
on padding. Each answered chunk is committed (results + request_counts in one
transaction, fenced by the attempt), so a worker that dies loses at most the
chunk it was running: the next attempt skips lines already answered, and no
line is answered or written twice. A request that cannot run (unknown model,
bad parameter, prompt too long) becomes a line in the error file; it never
fails the batch.
"""

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from domain.batches.models import WORKING_STATUSES, Batch, BatchResult, failed_values
from domain.db import make_engine, make_sessionmaker
from domain.files.models import File
from domain.files.outputs import write_output_file
from domain.files.repository import FileRepository
from domain.files.validation import jsonl_objects
from domain.ids import new_id
from domain.inference.schemas import ChatCompletionRequest
from domain.inference.targets import resolve_target
from domain.runs.leases import Leases
from domain.settings import Settings, get_settings
from domain.storage import storage_from_url
from worker.leasing import lease_heartbeat, worker_name
from worker.serving import RequestError, choices_and_usage, generation_requests, prepare, shared_engine

log = logging.getLogger("tunehouse.worker")


class _Lost(Exception):
    """The batch is no longer ours (requeued after we were presumed dead)."""


class _Stop(Exception):
    """Stop answering and finalize (cancelled or expired)."""


@dataclass
class PendingLine:
    line_number: int
    custom_id: str
    request: ChatCompletionRequest
    target: object
    prompt_ids: list[int] = field(default_factory=list)
    rows: list = field(default_factory=list)  # GenerationRequests, one per choice


def error_record(custom_id: str, status: int, message: str, *, param=None, code=None) -> dict:
    error = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
             "param": param, "code": code}
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": new_id("req_"), "body": {"error": error}},
        "error": None,
    }


def success_record(line: PendingLine, results: list, created: int) -> dict:
    choices, usage = choices_and_usage(line.prompt_ids, results)
    body = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": created,
        "model": line.request.model,
        "choices": [
            {"index": c["index"], "message": {"role": "assistant", "content": c["text"], "refusal": None},
             "logprobs": None, "finish_reason": c["finish_reason"]}
            for c in choices
        ],
        "usage": usage,
        "system_fingerprint": None,
    }
    return {
        "id": new_id("batch_req_"),
        "custom_id": line.custom_id,
        "response": {"status_code": 200, "request_id": new_id("req_"), "body": body},
        "error": None,
    }


def parse_request(body: dict, settings: Settings) -> ChatCompletionRequest:
    """The same checks as POST /v1/chat/completions; RequestError names the parameter."""
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise RequestError(400, f"Invalid value for '{param}': {first.get('msg')}", param=param, code="invalid_value")
    if request.stream:
        raise RequestError(400, "stream is not supported in batches.", param="stream", code="unsupported_parameter")
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None and max_tokens > settings.max_completion_tokens:
        raise RequestError(
            400, f"max_tokens is {max_tokens}; this deployment allows at most {settings.max_completion_tokens}.",
            param="max_tokens",
        )
    return request


def request_params(request: ChatCompletionRequest) -> dict:
    return {
        "max_tokens": request.max_completion_tokens or request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "n": request.n,
        "stop": request.stop,
        "seed": request.seed,
    }


def chunks_of(lines: list[PendingLine], max_rows: int) -> list[list[PendingLine]]:
    """Consecutive lines whose rows (n per line) fit in one padded batch."""
    chunks, current, rows = [], [], 0
    for line in lines:
        if current and rows + len(line.rows) > max_rows:
            chunks.append(current)
            current, rows = [], 0
        current.append(line)
        rows += len(line.rows)
    if current:
        chunks.append(current)
    return chunks


class BatchRun:
    def __init__(self, settings: Settings, batch_id: str):
        self.settings = settings
        self.batch_id = batch_id
        self.engine = make_engine(settings.database_url)
        self.db = make_sessionmaker(self.engine)
        self.session = self.db()
        self.leases = Leases(self.session, Batch, working=WORKING_STATUSES)
        self.storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        self.attempt: int | None = None

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    def run(self) -> None:
        self.attempt = self.leases.claim(self.batch_id, worker_name(), self.settings.heartbeat_timeout)
        if self.attempt is None:
            log.info("batch %s is not claimable (duplicate delivery, finished or alive elsewhere)", self.batch_id)
            return
        if self.attempt > self.settings.max_job_attempts:
            self._fail("worker_lost", f"The batch was started {self.attempt - 1} times without finishing; giving up.")
            return
        self.heartbeat = lease_heartbeat(
            self.db, Batch, self.batch_id, self.attempt, self.settings.heartbeat_interval, WORKING_STATUSES
        )
        self.heartbeat.start()
        try:
            self._run()
        except _Lost:
            self.session.rollback()
            log.warning("batch %s was taken over by another worker; stopping", self.batch_id)
        except Exception as exc:
            log.exception("batch %s failed", self.batch_id)
            self.session.rollback()
            self._fail("batch_failed", f"The batch failed: {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            self.heartbeat.stop()

    # -- steps ---------------------------------------------------------------

    def _run(self) -> None:
        batch = self.leases.get(self.batch_id)
        file = FileRepository(self.session, batch.owner_id).get(batch.input_file_id)
        if file is None:
            self._fail("input_file_missing", f"The input file '{batch.input_file_id}' was deleted.")
            return
        lines = list(jsonl_objects(self.storage.iter_bytes(file.storage_key)))
        if batch.status == "validating":
            self._write(status="in_progress", in_progress_at=int(time.time()), request_total=len(lines))
        answered = set(
            self.session.scalars(select(BatchResult.line_number).where(BatchResult.batch_id == self.batch_id))
        )
        if self._status() == "in_progress":
            try:
                self._answer(batch, [(n, line) for n, line in lines if n not in answered])
            except _Stop:
                pass
        self._finalize(batch)

    def _answer(self, batch: Batch, lines: list[tuple[int, dict]]) -> None:
        targets: dict[str, object] = {}
        by_base: dict[str, list[PendingLine]] = defaultdict(list)
        refused: list[tuple[int, bool, dict]] = []
        for line_number, line in lines:
            custom_id = line["custom_id"]
            try:
                request = parse_request(line["body"], self.settings)
                if request.model not in targets:
                    targets[request.model] = resolve_target(self.session, batch.owner_id, self.settings, request.model)
                target = targets[request.model]
                if target is None:
                    raise RequestError(
                        404, f"The model '{request.model}' does not exist or you do not have access to it.",
                        param="model", code="model_not_found",
                    )
            except RequestError as error:
                refused.append((line_number, True, error_record(custom_id, error.status, error.message,
                                                                param=error.param, code=error.code)))
                continue
            by_base[target.base_id].append(PendingLine(line_number, custom_id, request, target))
        self.session.rollback()  # end the read transaction before the long part
        if refused:
            self._store(refused)
        for base_id, base_lines in by_base.items():
            self._answer_base(base_id, base_lines)

    def _answer_base(self, base_id: str, lines: list[PendingLine]) -> None:
        from worker.inference.generation import generate, render_prompt

        engine = shared_engine()
        ready: list[PendingLine] = []
        refused: list[tuple[int, bool, dict]] = []
        for line in lines:
            try:
                loaded, adapter = prepare(engine, line.target.as_dict())
                line.prompt_ids = render_prompt(loaded.tokenizer, [m.for_template() for m in line.request.messages])
                line.rows = generation_requests(loaded, adapter, line.prompt_ids, request_params(line.request),
                                                self.settings.max_completion_tokens)
                ready.append(line)
            except RequestError as error:
                refused.append((line.line_number, True, error_record(line.custom_id, error.status, error.message,
                                                                     param=error.param, code=error.code)))
        if refused:
            self._store(refused)
        loaded = engine.base(base_id)
        ready.sort(key=lambda line: len(line.prompt_ids))
        for chunk in chunks_of(ready, self.settings.inference_batch_size):
            self._check_still_running()
            rows = [row for line in chunk for row in line.rows]
            results = generate(loaded.model, loaded.tokenizer, rows, eos_ids=loaded.eos_ids, device=loaded.device)
            created, records, offset = int(time.time()), [], 0
            for line in chunk:
                records.append((line.line_number, False, success_record(line, results[offset : offset + len(line.rows)], created)))
                offset += len(line.rows)
            self._store(records)

    def _finalize(self, batch: Batch) -> None:
        status = self._status()
        if status is None:
            raise _Lost
        now = int(time.time())
        if status == "cancelling":
            final = "cancelled"
        elif now > batch.expires_at and self._unanswered(batch):
            final = "expired"
        else:
            final = "completed"
        if status == "in_progress":
            self._write(status="finalizing", finalizing_at=now)
        results = list(
            self.session.scalars(
                select(BatchResult).where(BatchResult.batch_id == self.batch_id).order_by(BatchResult.line_number)
            )
        )
        output = self._result_file(batch, [r.record for r in results if not r.is_error], "output")
        errors = self._result_file(batch, [r.record for r in results if r.is_error], "error")
        ended = self.leases.update(
            self.batch_id,
            self.attempt,
            status=final,
            output_file_id=output.id if output else None,
            error_file_id=errors.id if errors else None,
            **{f"{final}_at": int(time.time())},
        )
        if not ended:
            self.session.rollback()
            for file in (output, errors):
                if file is not None:
                    self.storage.delete(file.storage_key)
            raise _Lost
        if output:
            self.session.add(output)
        if errors:
            self.session.add(errors)
        # The answers now live in the files; the rows were only for resuming.
        self.session.execute(delete(BatchResult).where(BatchResult.batch_id == self.batch_id))
        self.session.commit()

    # -- helpers -------------------------------------------------------------

    def _status(self) -> str | None:
        return self.leases.status_if_ours(self.batch_id, self.attempt)

    def _unanswered(self, batch: Batch) -> bool:
        self.session.refresh(batch)
        return batch.request_completed + batch.request_failed < batch.request_total

    def _check_still_running(self) -> None:
        if self.heartbeat.lost.is_set():
            raise _Lost
        status = self._status()
        if status is None:
            raise _Lost
        if status != "in_progress":
            raise _Stop
        if time.time() > self.leases.get(self.batch_id).expires_at:
            raise _Stop

    def _write(self, **values) -> None:
        if not self.leases.update(self.batch_id, self.attempt, **values):
            self.session.rollback()
            raise _Lost
        self.session.commit()

    def _store(self, records: list[tuple[int, bool, dict]]) -> None:
        """Results and counts in one fenced transaction."""
        failed = sum(1 for _, is_error, _ in records if is_error)
        held = self.leases.update(
            self.batch_id,
            self.attempt,
            request_completed=Batch.request_completed + (len(records) - failed),
            request_failed=Batch.request_failed + failed,
            heartbeat_at=time.time(),
        )
        if not held:
            self.session.rollback()
            raise _Lost
        self.session.add_all(
            BatchResult(batch_id=self.batch_id, line_number=number, is_error=is_error, record=record)
            for number, is_error, record in records
        )
        try:
            self.session.commit()
        except IntegrityError as exc:  # another attempt stored these lines: it owns the batch now
            self.session.rollback()
            raise _Lost from exc

    def _result_file(self, batch: Batch, records: list[dict], kind: str) -> File | None:
        """Writes the JSONL to storage; returns the File row for the caller to add."""
        if not records:
            return None
        lines = ((json.dumps(record, ensure_ascii=False) + "\n").encode() for record in records)
        return write_output_file(self.storage, batch.owner_id, "batch_output", f"{batch.id}_{kind}.jsonl", lines)

    def _fail(self, code: str, message: str) -> None:
        if self.leases.update(self.batch_id, self.attempt, **failed_values(code, message)):
            self.session.commit()
        else:
            self.session.rollback()


def run_batch(batch_id: str) -> None:
    run = BatchRun(get_settings(), batch_id)
    try:
        run.run()
    finally:
        run.close()
