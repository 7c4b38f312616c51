"""One decode loop per inference worker process, shared by everything it answers.

An inference worker runs several tasks at once in one process (Celery's
threads pool, api/cli.py): chat requests, batches, evaluations. None of them
runs a model itself. Each submits rows — one per choice of a chat request, per
batch line, per evaluation item — each with its own sampling settings, seed,
stop strings and adapter, and waits for its results (a chat request also reads
its text as it streams). One thread, the loop, owns the models: between two
decode steps it admits waiting rows (their prompts are run in a prefill of
their own, then the rows join the running batch: batching.py), takes a
token for every running row, and lets finished or cancelled rows go. So a
request starts within a step or two of arriving, whatever else is running,
and a thousand-line batch and three chat users share each forward pass.

Sizes come from the model's budget (budget.py, measured for the device): at
most `max_rows` rows decode together (on one CPU thread up to
`single_thread_rows`, where that measured faster), and a prefill runs at most
`prefill_tokens` prompt tokens per step, so a long prompt is run in slices
between the steps of the rows already decoding rather than stalling them.
Chat requests (INTERACTIVE) are admitted before batch lines and evaluation
items (BACKGROUND), and beyond `max_rows` by a margin, so a long batch does
not make a chat user wait for its rows to finish.

Anything else that must touch a model (loading a base or an adapter, reference
losses) runs on the loop's thread too, between two steps (`call`): nothing
changes a model while a forward pass uses it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import torch

from worker.inference.batching import Batch, Handle, Prefill, Row, finish, new_row
from worker.inference.budget import torch_threads
from worker.inference.generation import GenerationCancelled, GenerationRequest, GenerationResult, check_requests

log = logging.getLogger(__name__)

INTERACTIVE = 0  # chat requests
BACKGROUND = 1  # batch lines, evaluation items


class Submission:
    """Rows submitted together (a chat request's choices, a batch line, an
    evaluation item) and their results. The loop fills it in; the submitter
    waits on it, reads its streamed text, or cancels it."""

    def __init__(self, count: int, *, streams: bool, done_queue: queue.Queue | None = None, tag: Any = None):
        self.tag = tag  # the submitter's own reference (a batch line, an item)
        self.streams = streams
        self._results: list[GenerationResult | None] = [None] * count
        self._remaining = count
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._texts: queue.Queue | None = queue.Queue() if streams else None
        self._done_queue = done_queue
        if count == 0:
            self._end()

    # -- the loop's side (RowOwner) ---------------------------------------------

    def on_text(self, index: int, text: str) -> None:
        self._texts.put((index, text))

    def on_result(self, index: int, result: GenerationResult) -> None:
        if self._results[index] is None:
            self._results[index] = result
            self._remaining -= 1
            if self._remaining == 0:
                self._end()

    def cancelled(self) -> bool:
        return self._cancelled.is_set() or self._done.is_set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._end()

    def _end(self) -> None:
        self._done.set()
        if self._texts is not None:
            self._texts.put(None)
        if self._done_queue is not None:
            self._done_queue.put(self)

    # -- the submitter's side ----------------------------------------------------

    def cancel(self) -> None:
        """Its rows leave the batch at the next step; nobody else's do."""
        self._cancelled.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def texts(self, poll_seconds: float = 1.0) -> Iterator[tuple[int, str]]:
        """(row index, text) as each row's text becomes final, until every row ended."""
        while True:
            try:
                item = self._texts.get(timeout=poll_seconds)
            except queue.Empty:
                if self._cancelled.is_set():
                    return
                continue
            if item is None:
                return
            yield item

    def results(self) -> list[GenerationResult]:
        """The rows' results, in order, once done; the loop's error if it failed them."""
        if self._error is not None:
            raise self._error
        if not self._done.is_set():
            raise GenerationCancelled("cancelled before it finished") if self._cancelled.is_set() else RuntimeError(
                "results() before the submission ended"
            )
        return list(self._results)  # type: ignore[arg-type]


class DecodeLoop:
    """The thread that runs every model of this process; see the module doc."""

    def __init__(self, budget_of: Callable[[Handle], Any], name: str = "decode-loop"):
        self._budget_of = budget_of
        self._name = name
        self._condition = threading.Condition()
        self._incoming: list[tuple[Handle, int, list[Row]]] = []
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._models: dict[int, _ModelRows] = {}
        self._thread: threading.Thread | None = None

    # -- other threads ---------------------------------------------------------------

    def submit(
        self,
        handle: Handle,
        requests: list[GenerationRequest],
        *,
        priority: int = BACKGROUND,
        streams: bool = False,
        done_queue: queue.Queue | None = None,
        tag: Any = None,
    ) -> Submission:
        """Rows for `requests` on `handle`'s model, generated with whatever else runs."""
        check_requests(handle.model, requests)
        submission = Submission(len(requests), streams=streams, done_queue=done_queue, tag=tag)
        rows = [new_row(request, submission, index, handle.device) for index, request in enumerate(requests)]
        for row in rows:
            if row.request.max_new_tokens == 0:
                finish(handle, row, "length")
        rows = [row for row in rows if not row.done]
        if rows:
            with self._condition:
                self._incoming.append((handle, priority, rows))
                self._start()
                self._condition.notify()
        return submission

    def call(self, function: Callable[[], Any]) -> Any:
        """function() on the loop's thread, between two steps; its result or its exception."""
        if threading.current_thread() is self._thread:
            return function()
        future: Future = Future()
        with self._condition:
            self._calls.append((function, future))
            self._start()
            self._condition.notify()
        return future.result()

    def budget(self, handle: Handle):
        """The batch budget of `handle`'s model (measured on first use)."""
        return self.call(lambda: self._budget_of(handle))

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    # -- the loop's thread -----------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._condition:
                    while not (self._incoming or self._calls or any(m.busy for m in self._models.values())):
                        # Models nobody uses any more are let go (an evicted base is freed).
                        self._models.clear()
                        self._condition.wait()
                    incoming, self._incoming = self._incoming, []
                    calls, self._calls = self._calls, deque()
                for function, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(function())
                        except BaseException as exc:  # handed to the caller
                            future.set_exception(exc)
                for handle, priority, rows in incoming:
                    model_rows = self._models.get(id(handle))
                    if model_rows is None or model_rows.handle is not handle:
                        model_rows = self._models[id(handle)] = _ModelRows(handle)
                    model_rows.waiting[priority].extend(rows)
                for model_rows in list(self._models.values()):
                    if model_rows.busy:
                        model_rows.iterate(self._budget_of)


class _ModelRows:
    """One model's rows: waiting, being prefilled, decoding."""

    def __init__(self, handle: Handle):
        self.handle = handle
        self.waiting: dict[int, deque[Row]] = {INTERACTIVE: deque(), BACKGROUND: deque()}
        self.prefill: Prefill | None = None
        self.batch = Batch(handle)
        self.budget = None

    @property
    def busy(self) -> bool:
        return bool(self.batch.rows or self.prefill is not None or any(self.waiting.values()))

    def iterate(self, budget_of) -> None:
        """One step: admit, prefill a slice, decode a token, retire."""
        try:
            if self.budget is None:
                self.budget = budget_of(self.handle)
            self._drop_cancelled()
            self._admit()
            if self.prefill is not None:
                self.prefill.run_slice()
                if self.prefill.finished:
                    prefill, self.prefill = self.prefill, None
                    self.batch.merge(prefill)
            if self.batch.live:
                with torch_threads(self.budget.decode_threads(len(self.batch.rows))):
                    self.batch.step()
            # Finished rows leave when enough of them are done; the next merge
            # drops the others in the copy it makes anyway.
            self.batch.retire()
        except Exception as error:  # the rows in flight fail; the loop and the waiting rows go on
            log.exception("generation failed for %d rows", len(self.batch.rows) + (len(self.prefill.rows) if self.prefill else 0))
            rows = self.batch.rows + (self.prefill.rows if self.prefill else [])
            if not rows:  # failed before any row ran (the budget): the waiting rows fail too
                rows = [row for waiting in self.waiting.values() for row in waiting]
                for waiting in self.waiting.values():
                    waiting.clear()
            for row in rows:
                row.owner.fail(error)
            self.prefill, self.batch = None, Batch(self.handle)
            if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _drop_cancelled(self) -> None:
        self.batch.drop_cancelled()
        if self.prefill is not None:
            for row in self.prefill.rows:
                if not row.done and row.owner.cancelled():
                    row.dropped = True
            if all(row.done for row in self.prefill.rows):
                self.prefill = None

    def _admit(self) -> None:
        """Waiting rows into a new prefill, within the budget: interactive rows first."""
        if self.prefill is not None or not self.batch.joinable:
            return
        budget = self.budget
        live = self.batch.live
        # Joining copies the running batch's cache: background rows wait until
        # a few can join at once (a chat request never waits for that), unless
        # all that waits fits now (the last lines of a batch would otherwise
        # start only when others end, and run on alone at the end).
        if not self.waiting[INTERACTIVE] and live >= budget.max_rows // 2:
            room = budget.max_rows - live
            if room < max(1, budget.max_rows // 8) and len(self.waiting[BACKGROUND]) > room:
                return
        group: list[Row] = []
        width = 0
        full = False
        for priority, limit in ((INTERACTIVE, budget.max_rows + budget.interactive_margin), (BACKGROUND, budget.max_rows)):
            waiting = self.waiting[priority]
            while waiting and not full:
                row = waiting[0]
                if row.owner.cancelled():
                    waiting.popleft()
                    row.dropped = True
                    continue
                if live + len(group) >= limit:
                    break
                length = len(row.request.prompt_ids)
                # One slice for the whole group, or a row alone (then sliced by its own length only,
                # so how its prompt is cut never depends on its batch mates).
                if group and (len(group) + 1) * max(width, length) > budget.prefill_tokens:
                    full = True
                    break
                group.append(waiting.popleft())
                width = max(width, length)
                full = len(group) * width >= budget.prefill_tokens
        if group:
            self.prefill = Prefill(self.handle, group, slice_tokens=budget.prefill_tokens)


class Feeder:
    """Many submissions (batch lines, evaluation items) fed to the loop a
    little ahead of what it runs, so it always has rows to admit without a
    thousand-line batch holding all of its rows in the queue at once.

        with Feeder(loop, handle, lines, rows_of=..., lookahead_rows=...) as feeder:
            while feeder.pending:
                for submission in feeder.ended(timeout):
                    ...  # submission.tag is the item

    Leaving the block cancels what is still in flight (a stop, a failure)."""

    def __init__(self, loop: DecodeLoop, handle: Handle, items, *, rows_of: Callable[[Any], list[GenerationRequest]],
                 lookahead_rows: int, priority: int = BACKGROUND):
        self._loop, self._handle, self._priority = loop, handle, priority
        self._rows_of = rows_of
        self._lookahead_rows = lookahead_rows
        self._waiting = deque(items)
        self._in_flight: dict[Submission, int] = {}  # submission -> its rows
        self._rows_in_flight = 0
        self._finished: queue.Queue = queue.Queue()

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc_info) -> None:
        for submission in self._in_flight:
            submission.cancel()

    @property
    def pending(self) -> bool:
        """Items not yet submitted, or submitted and not ended."""
        return bool(self._waiting or self._in_flight)

    def ended(self, timeout: float) -> list[Submission]:
        """Submits items up to the lookahead (at least one in flight, however
        many rows it has), then the submissions that ended within `timeout`
        (maybe none), in the order they ended."""
        while self._waiting and (self._rows_in_flight < self._lookahead_rows or not self._in_flight):
            item = self._waiting.popleft()
            requests = self._rows_of(item)
            submission = self._loop.submit(self._handle, requests, priority=self._priority,
                                           done_queue=self._finished, tag=item)
            self._in_flight[submission] = len(requests)
            self._rows_in_flight += len(requests)
        ended = []
        try:
            ended.append(self._finished.get(timeout=timeout))
            while True:
                ended.append(self._finished.get_nowait())
        except queue.Empty:
            pass
        for submission in ended:
            self._rows_in_flight -= self._in_flight.pop(submission)
        return ended
