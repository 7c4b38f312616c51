"""A chat request on an inference worker: the request travels whole in its
message; its rows (one per choice) join the worker's decode loop (loop.py)
beside whatever else it runs, ahead of batch lines; the answer goes back,
piece by piece, on the request's stream (domain/inference/streams.py), which
the API relays to the client. This task's thread publishes; the loop's thread
never waits on the broker."""

import logging
import threading
import time

from domain.connections.client import ConnectionClient, ExternalCallError
from domain.connections.service import call_error_status, external_model_of, finish_reason, is_external_target
from domain.inference.streams import streams_for
from domain.settings import get_settings
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
    model = external_model_of(request["target"], settings)
    client = ConnectionClient(model.endpoint, settings)
    n = request.get("n") or 1
    params = dict(max_tokens=request.get("max_tokens") or settings.max_completion_tokens,
                  temperature=request.get("temperature", 1.0), top_p=request.get("top_p"),
                  stop=request.get("stop") or None)
    if isinstance(params["stop"], str):
        params["stop"] = [params["stop"]]
    seed = request.get("seed")
    try:
        if request.get("stream"):
            texts, finish_reasons, usage = [""] * n, [None] * n, None
            for chunk in client.stream_chat(model.remote_model, request["messages"], seed=seed, n=n, **params):
                for choice in chunk.get("choices") or []:
                    index = choice.get("index") or 0
                    if not 0 <= index < n:
                        continue
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        texts[index] += text
                        streams.publish(request_id, {"type": "delta", "index": index, "text": text})
                    finish_reasons[index] = choice.get("finish_reason") or finish_reasons[index]
                usage = chunk.get("usage") or usage
            choices = [{"index": i, "text": texts[i], "finish_reason": finish_reason(finish_reasons[i])} for i in range(n)]
            prompt_tokens = int((usage or {}).get("prompt_tokens") or 0)
            completion_tokens = int((usage or {}).get("completion_tokens") or 0)
        else:
            # One call per choice: n choices from one seed differ, and repeat with the same seed (as local models do).
            completions = [
                client.chat(model.remote_model, request["messages"],
                            seed=None if seed is None else (seed + index) % 2**63, **params)
                for index in range(n)
            ]
            choices = [{"index": i, "text": c.text, "finish_reason": finish_reason(c.finish_reason)}
                       for i, c in enumerate(completions)]
            prompt_tokens = completions[0].prompt_tokens
            completion_tokens = sum(c.completion_tokens for c in completions)
    except ExternalCallError as error:
        log.info("chat request %s: the connection's endpoint failed (%s)", request_id, error.code)
        raise RequestError(call_error_status(error), error.message, param="model", code=error.code) from None
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    streams.publish(request_id, {"type": "done", "choices": choices, "usage": usage})
