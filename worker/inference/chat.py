"""A chat request on an inference worker: the request travels whole in its
message; its rows (one per choice) join the worker's decode loop (loop.py)
beside whatever else it runs, ahead of batch lines; the answer goes back,
piece by piece, on the request's stream (domain/inference/streams.py), which
the API relays to the client. This task's thread publishes; the loop's thread
never waits on the broker."""

import logging
import threading
import time

from domain.connections.service import external_model_of, is_external_target
from domain.errors import ServiceError, status_of
from domain.inference.streams import streams_for
from domain.settings import get_settings
from worker.inference import external
from worker.inference.engine import shared_engine
from worker.inference.loop import INTERACTIVE
from worker.inference.requests import RequestError, acquired, choices_and_usage, generation_requests, prompt_ids

log = logging.getLogger("tunehouse.worker")

_streams = None
_streams_lock = threading.Lock()


def _shared_streams():
    global _streams
    with _streams_lock:  # tasks run in threads of one process
        if _streams is None:
            _streams = streams_for(get_settings())
        return _streams


def run_chat_request(request: dict) -> None:
    settings = get_settings()
    streams = _shared_streams()
    request_id = request["id"]
    if time.time() > request["expires_at"]:
        log.info("chat request %s expired in the queue; the client stopped waiting", request_id)
        return
    streams.publish(request_id, {"type": "started"})
    try:
        if is_external_target(request["target"]):
            _answer_external(request, streams, settings)
            return
        engine = shared_engine()
        with acquired(engine, request["target"]) as (loaded, adapter):
            prompt = prompt_ids(loaded, request["messages"])
            rows = generation_requests(loaded, adapter, prompt, request, settings.max_completion_tokens)
            submission = engine.loop.submit(loaded, rows, priority=INTERACTIVE, streams=True)
            try:
                for index, text in submission.texts():
                    if text:
                        streams.publish(request_id, {"type": "delta", "index": index, "text": text})
                results = submission.results()
            finally:
                submission.cancel()  # a no-op once done; else (the stream failed) its rows stop
        choices, usage = choices_and_usage(prompt, results)
        streams.publish(request_id, {"type": "done", "choices": choices, "usage": usage})
    except RequestError as error:
        streams.publish(request_id, error.as_event())
    except Exception as exc:
        log.exception("chat request %s failed", request_id)
        streams.publish(
            request_id,
            RequestError(500, f"Inference failed: {type(exc).__name__}: {str(exc)[:300]}", code="inference_error").as_event(),
        )



def _answer_external(request: dict, streams, settings) -> None:
    """A connection's model: the same events, from its endpoint's answer
    (streamed from the endpoint when the client streams)."""
    request_id = request["id"]
    try:
        model = external_model_of(request["target"], settings)
    except ServiceError as error:  # its key is unreadable here (another connection secret)
        raise RequestError(status_of(error), error.message, param=error.param, code=error.code) from None
    if request.get("stream"):
        choices, usage = external.stream(
            model, request["messages"], request, settings,
            lambda index, text: streams.publish(request_id, {"type": "delta", "index": index, "text": text}),
        )
    else:
        choices, usage = external.complete(model, request["messages"], request, settings)
    streams.publish(request_id, {"type": "done", "choices": choices, "usage": usage})
