"""A chat request on an inference worker: the request travels whole in its
message; the answer goes back, piece by piece, on the request's stream
(domain/inference/streams.py), which the API relays to the client."""

import logging
import time

from domain.inference.streams import streams_for
from domain.settings import get_settings
from worker.inference.engine import shared_engine
from worker.inference.generation import generate, render_prompt
from worker.inference.requests import RequestError, choices_and_usage, generation_requests, prepare

log = logging.getLogger("tunehouse.worker")

_streams = None


def _shared_streams():
    global _streams
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
        loaded, adapter = prepare(shared_engine(), request["target"])
        prompt_ids = render_prompt(loaded.tokenizer, request["messages"])
        rows = generation_requests(loaded, adapter, prompt_ids, request, settings.max_completion_tokens)

        def on_text(index: int, text: str) -> None:
            if text:
                streams.publish(request_id, {"type": "delta", "index": index, "text": text})

        results = generate(loaded.model, loaded.tokenizer, rows, eos_ids=loaded.eos_ids, device=loaded.device, on_text=on_text)
        choices, usage = choices_and_usage(prompt_ids, results)
        streams.publish(request_id, {"type": "done", "choices": choices, "usage": usage})
    except RequestError as error:
        streams.publish(request_id, error.as_event())
    except Exception as exc:
        log.exception("chat request %s failed", request_id)
        streams.publish(
            request_id,
            RequestError(500, f"Inference failed: {type(exc).__name__}: {str(exc)[:300]}", code="inference_error").as_event(),
        )
