"""One batch on an inference worker: claim it, answer every input line, write
the output and error files, record all of it.

Lines are grouped by base model, so each base is loaded once per batch. The
lines of one base are fed to the worker's decode loop (loop.py), ordered by
adapter and then prompt length, a few batches' worth ahead of what it runs:
each line joins the running batch as soon as there is room, whatever its
adapter, beside any chat request or other batch the worker serves, and
leaves it when done, so the batch stays full until the last lines. Grouping by
adapter makes runs of one adapter where the lines allow it. Answered lines
are committed every STORE_SECONDS (results + request_counts in one
transaction, fenced by the attempt), so a worker that dies loses at most the
lines of the last moments: the next attempt skips lines already answered,
and no line is answered or written twice. A request that cannot run (unknown
model, bad parameter, prompt too long) becomes a line in the error file; it
never fails the batch.

Lines for a connection's model (`conn:{name}/{model}`, domain/connections/)
are answered by its endpoint instead (worker/inference/external.py), after
the local ones, several at once (up to TUNEHOUSE_CONNECTION_CONCURRENCY per
connection), committed and checked for a cancel the same way; a call that
fails (timeout, endpoint down, refused address) is that line's error record.
"""

import json
import logging
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from domain.batches.models import Batch, BatchResult
from domain.errors import ServiceError, model_not_found, status_of
from domain.files.models import File
from domain.files.outputs import write_output_file
from domain.files.repository import FileRepository
from domain.files.split import jsonl_objects
from domain.ids import new_id
from domain.inference.schemas import ChatCompletionRequest
from domain.inference.service import chat_completion, chat_request
from domain.connections.client import ExternalModel
from domain.inference.targets import resolve_model
from domain.runs.kinds import BATCH
from domain.settings import Settings
from worker.runs import FailureWords, HandBack, LeasedRun, RunLost, run_leased
from worker.inference import external
from worker.inference.engine import shared_engine
from worker.inference.loop import Feeder
from worker.inference.requests import RequestError, acquired, choices_and_usage, generation_requests, prompt_ids

# Answered lines are committed at least this often (and when the batch stops).
STORE_SECONDS = 1.0
# While its lines generate, the batch looks for a cancel or a shutdown this often.
CHECK_SECONDS = 0.5
# Rows fed to the decode loop ahead of what it runs, in batch budgets.
LOOKAHEAD_BUDGETS = 2
# Calls to connections' endpoints at once for one batch, whatever their limits.
MAX_EXTERNAL_CALLS = 64

log = logging.getLogger("tunehouse.worker")


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


def _record(custom_id: str, status: int, body: dict) -> dict:
    """One line of the output or error file, in OpenAI's shape."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": new_id("req_"), "body": body},
        "error": None,
    }


def error_record(custom_id: str, status: int, message: str, *, param=None, code=None) -> dict:
    error = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
             "param": param, "code": code}
    return _record(custom_id, status, {"error": error})


def success_record(line: PendingLine, results: list, created: int) -> dict:
    """The chat endpoint's answer (the same response model) to this line."""
    choices, usage = choices_and_usage(line.prompt_ids, results)
    completion = chat_completion(new_id("chatcmpl-"), created, line.request.model, choices, usage)
    return _record(line.custom_id, 200, completion.model_dump(mode="json"))


def request_error(error: ServiceError) -> RequestError:
    """A domain refusal as a line's RequestError, with the status its kind
    stands for (domain.errors.STATUS_OF_KIND, as the API answers it)."""
    return RequestError(status_of(error), error.message, param=error.param, code=error.code)


def parse_request(body: dict, settings: Settings) -> ChatCompletionRequest:
    """The checks of POST /v1/chat/completions (domain.inference.service.
    chat_request: the same function), and no streaming; RequestError names
    the parameter."""
    try:
        return chat_request(body, settings, in_batch=True)
    except ServiceError as error:
        raise request_error(error) from None


def request_params(request: ChatCompletionRequest) -> dict:
    return {
        "max_tokens": request.token_limit(),
        "temperature": request.temperature,
        "top_p": request.top_p,
        "n": request.n,
        "stop": request.stop,
        "seed": request.seed,
    }


class BatchRun(LeasedRun):
    kind = BATCH
    words = FailureWords(
        generic_code="batch_failed",
        generic_what="The batch failed",
        bad_data_code="invalid_batch_data",
        bad_data_what="The batch's input file",
        out_of_memory="The batch ran out of memory. Lower max_tokens or set TUNEHOUSE_INFERENCE_BATCH_SIZE.",
    )

    @property
    def batch_id(self) -> str:
        return self.row_id

    def work(self) -> None:
        self._run()

    # -- steps ---------------------------------------------------------------

    def _run(self) -> None:
        def read():
            batch = self.leases.get(self.batch_id)
            file = FileRepository(self.session, batch.owner_id).get(batch.input_file_id)
            return batch, file

        batch, file = self.transaction(read, "reading the batch")
        # Plain values: a rollback (a retried write) expires ORM rows.
        self._owner_id, self._expires_at = batch.owner_id, batch.expires_at
        if file is None:
            self.fail("input_file_missing", f"The input file '{batch.input_file_id}' was deleted.")
            return
        lines = list(jsonl_objects(self.storage.iter_bytes(file.storage_key)))
        if batch.status == "validating":
            self.write("starting", status="in_progress", in_progress_at=int(time.time()), request_total=len(lines))
        answered = self.transaction(
            lambda: set(
                self.session.scalars(select(BatchResult.line_number).where(BatchResult.batch_id == self.batch_id))
            ),
            "reading the lines already answered",
        )
        if self._status() == "in_progress":
            try:
                self._answer([(n, line) for n, line in lines if n not in answered])
            except _Stop:
                pass
        self._finalize(batch)

    def _answer(self, lines: list[tuple[int, dict]]) -> None:
        def sort_out() -> tuple[list, dict, list]:
            targets: dict[str, object] = {}
            by_base: dict[str, list[PendingLine]] = defaultdict(list)
            external_lines: list[PendingLine] = []  # for connections' models
            refused: list[tuple[int, bool, dict]] = []
            for line_number, line in lines:
                custom_id = line["custom_id"]
                try:
                    request = parse_request(line["body"], self.settings)
                    if request.model not in targets:
                        try:
                            targets[request.model] = resolve_model(self.session, self._owner_id, self.settings, request.model)
                        # A model not served here (a full fine-tune), a connection whose key is unreadable here.
                        except ServiceError as refusal:
                            raise request_error(refusal) from None
                    target = targets[request.model]
                    if target is None:
                        raise request_error(model_not_found(request.model))
                except RequestError as error:
                    refused.append((line_number, True, error_record(custom_id, error.status, error.message,
                                                                    param=error.param, code=error.code)))
                    continue
                pending = PendingLine(line_number, custom_id, request, target)
                if isinstance(target, ExternalModel):
                    external_lines.append(pending)
                else:
                    by_base[target.base_id].append(pending)
            self.session.rollback()  # end the read transaction before the long part
            return refused, by_base, external_lines

        refused, by_base, external_lines = self.transaction(sort_out, "resolving the models")
        if refused:
            self._store(refused)
        for base_id, base_lines in by_base.items():
            self._answer_base(base_id, base_lines)
        if external_lines:
            self._answer_external(external_lines)

    def _answer_base(self, base_id: str, lines: list[PendingLine]) -> None:
        engine = shared_engine()
        ready: list[PendingLine] = []
        refused: list[tuple[int, bool, dict]] = []
        with ExitStack() as held:
            models: dict[str | None, tuple | RequestError] = {}  # adapter id -> (loaded, adapter), held to the end
            for line in lines:
                target = line.target.as_dict()
                adapter_id = target["adapter_id"]
                try:
                    if adapter_id not in models:
                        try:
                            models[adapter_id] = held.enter_context(acquired(engine, target))
                        except RequestError as error:
                            models[adapter_id] = error
                    model = models[adapter_id]
                    if isinstance(model, RequestError):
                        raise model
                    loaded, adapter = model
                    line.prompt_ids = prompt_ids(loaded, [m.for_template() for m in line.request.messages])
                    line.rows = generation_requests(loaded, adapter, line.prompt_ids, request_params(line.request),
                                                    self.settings.max_completion_tokens)
                    ready.append(line)
                except RequestError as error:
                    refused.append((line.line_number, True, error_record(line.custom_id, error.status, error.message,
                                                                         param=error.param, code=error.code)))
            if refused:
                self._store(refused)
            if ready:
                # Runs of one adapter, and in them similar prompt lengths (less padding per prefill).
                ready.sort(key=lambda line: (line.rows[0].adapter or "", len(line.prompt_ids)))
                self._generate(engine.loop, loaded, ready)

    def _generate(self, loop, loaded, lines: list[PendingLine]) -> None:
        """Every line through the decode loop; answers committed as they come."""
        with Feeder(loop, loaded, lines, rows_of=lambda line: line.rows,
                    lookahead_rows=LOOKAHEAD_BUDGETS * loop.budget(loaded).max_rows) as feeder:
            self._collect(feeder, lambda submission, created: (
                submission.tag.line_number, False, success_record(submission.tag, submission.results(), created)))

    def _answer_external(self, lines: list[PendingLine]) -> None:
        """Lines for connections' models: each answered by its endpoint,
        as many at once as the connections' limits allow."""
        connections = len({line.target.endpoint.connection_id for line in lines})
        workers = min(MAX_EXTERNAL_CALLS, self.settings.connection_concurrency * connections)
        with _ExternalCalls(lines, self._external_record, workers) as calls:
            self._collect(calls, lambda record, _created: record)

    def _external_record(self, line: PendingLine) -> tuple[int, bool, dict]:
        try:
            choices, usage = external.complete(line.target, [m.for_template() for m in line.request.messages],
                                               request_params(line.request), self.settings)
        except RequestError as error:
            return line.line_number, True, error_record(line.custom_id, error.status, error.message,
                                                        param=error.param, code=error.code)
        completion = chat_completion(new_id("chatcmpl-"), int(time.time()), line.request.model, choices, usage)
        return line.line_number, False, _record(line.custom_id, 200, completion.model_dump(mode="json"))

    def _collect(self, source, record_of) -> None:
        """Answers from `source` (a Feeder or _ExternalCalls: `pending`,
        `ended(timeout)`) committed as they come, every STORE_SECONDS, with
        a look for a cancel, an expiry or a shutdown every CHECK_SECONDS."""
        answered: list[tuple[int, bool, dict]] = []
        last_store = last_check = time.monotonic()
        try:
            while source.pending:
                ended = source.ended(CHECK_SECONDS)
                created = int(time.time())
                answered.extend(record_of(item, created) for item in ended)
                now = time.monotonic()
                if answered and (now - last_store >= STORE_SECONDS or not source.pending):
                    self._store(answered)
                    answered, last_store = [], now
                if now - last_check >= CHECK_SECONDS:
                    last_check = now
                    self._check_still_running()
        except (_Stop, HandBack):
            if answered:  # what is answered is kept (cancelled: in the output; handed back: not redone)
                self._store(answered)
            raise

    def _finalize(self, batch: Batch) -> None:
        status = self._status()
        if status is None:
            raise RunLost
        now = int(time.time())
        if status == "cancelling":
            final = "cancelled"
        elif now > self._expires_at and self._unanswered():
            final = "expired"
        else:
            final = "completed"
        if status == "in_progress":
            self.write("finalizing", status="finalizing", finalizing_at=now)
        results = self.transaction(
            lambda: list(
                self.session.scalars(
                    select(BatchResult).where(BatchResult.batch_id == self.batch_id).order_by(BatchResult.line_number)
                )
            ),
            "reading the answers",
        )
        output = self._result_file([r.record for r in results if not r.is_error], "output")
        errors = self._result_file([r.record for r in results if r.is_error], "error")

        def end() -> bool:
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
                return False
            self.session.add_all(file for file in (output, errors) if file is not None)
            # The answers now live in the files; the rows were only for resuming.
            self.session.execute(delete(BatchResult).where(BatchResult.batch_id == self.batch_id))
            self.session.commit()
            return True

        if not self.transaction(end, "ending the batch"):
            for file in (output, errors):
                if file is not None:
                    self.storage.delete(file.storage_key)
            raise RunLost

    # -- helpers -------------------------------------------------------------

    def _status(self) -> str | None:
        return self.status()

    def _unanswered(self) -> bool:
        def read() -> bool:
            batch = self.leases.get(self.batch_id)
            self.session.refresh(batch)
            return batch.request_completed + batch.request_failed < batch.request_total

        return self.transaction(read, "reading its counts")

    def _check_still_running(self) -> None:
        if self.heartbeat.lost.is_set():
            raise RunLost
        status = self._status()
        if status is None:
            raise RunLost
        if status != "in_progress" or time.time() > self._expires_at:
            raise _Stop
        if self.should_pause():
            raise HandBack("the lines not yet answered")  # every answered chunk is committed


    def _store(self, records: list[tuple[int, bool, dict]]) -> None:
        """Results and counts in one fenced transaction."""
        failed = sum(1 for _, is_error, _ in records if is_error)

        def store() -> None:
            held = self.leases.update(
                self.batch_id,
                self.attempt,
                request_completed=Batch.request_completed + (len(records) - failed),
                request_failed=Batch.request_failed + failed,
            )
            if not held:
                self.session.rollback()
                raise RunLost
            self.session.add_all(
                BatchResult(batch_id=self.batch_id, line_number=number, is_error=is_error, record=record)
                for number, is_error, record in records
            )
            try:
                self.session.commit()
            except IntegrityError as exc:  # another attempt stored these lines: it owns the batch now
                self.session.rollback()
                raise RunLost from exc

        self.transaction(store, "storing answers")

    def _result_file(self, records: list[dict], kind: str) -> File | None:
        """Writes the JSONL to storage; returns the File row for the caller to add."""
        if not records:
            return None
        lines = ((json.dumps(record, ensure_ascii=False) + "\n").encode() for record in records)
        return write_output_file(self.storage, self._owner_id, "batch_output", f"{self.batch_id}_{kind}.jsonl", lines)


class _ExternalCalls:
    """Lines answered by `answer` in a thread pool, with a Feeder's
    `pending` and `ended(timeout)`. Leaving the block drops the lines not
    yet started (a stop); those in flight end on their own."""

    def __init__(self, lines: list[PendingLine], answer, workers: int):
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="batch-external")
        self._futures = {self._pool.submit(answer, line) for line in lines}

    def __enter__(self) -> "_ExternalCalls":
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> bool:
        return bool(self._futures)

    def ended(self, timeout: float) -> list:
        done, self._futures = wait(self._futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return [future.result() for future in done]


def run_batch(batch_id: str) -> None:
    run_leased(BatchRun, batch_id)
