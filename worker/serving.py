"""Chat requests on an inference worker, and the engine every inference task
of this process shares.

An inference worker's process lives on between tasks (the CLI turns off
max-tasks-per-child for workers without the `train` queue), so the engine and
the base models it loaded stay in memory: the first request for a base pays
for loading it, later ones only attach their fine-tune's adapter.
"""

import logging
import time

from domain.inference.streams import streams_for
from domain.settings import get_settings
from domain.storage import storage_from_url

log = logging.getLogger("tunehouse.worker")

_engine = None
_streams = None


def shared_engine():
    global _engine
    if _engine is None:
        from worker.inference.engine import InferenceEngine

        settings = get_settings()
        storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        _engine = InferenceEngine(settings, storage)
    return _engine


def _shared_streams():
    global _streams
    if _streams is None:
        _streams = streams_for(get_settings())
    return _streams


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)


class RequestError(Exception):
    """A request that cannot run, with the HTTP status it deserves."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def as_event(self) -> dict:
        return {"type": "error", "status": self.status, "message": self.message, "param": self.param, "code": self.code}


def prepare(engine, target: dict):
    """(loaded base, adapter name or None) for a target from domain/inference/targets.py."""
    from worker.inference.engine import AdapterNotFound

    loaded = engine.base(target["base_id"])
    if target["job_id"] is None:
        return loaded, None
    try:
        return loaded, engine.adapter(loaded, target["job_id"])
    except AdapterNotFound as exc:
        raise RequestError(
            404, f"The model '{target['model']}' has no adapter files any more.", param="model", code="model_not_found"
        ) from exc


def generation_requests(loaded, adapter, prompt_ids: list[int], params: dict, max_tokens_cap: int) -> list:
    """One GenerationRequest per choice (n), checked against the context length."""
    from worker.inference.generation import GenerationRequest

    room = context_length(loaded.model) - len(prompt_ids)
    if room < 1:
        raise RequestError(
            400,
            f"The prompt is {len(prompt_ids)} tokens; this model's context is {context_length(loaded.model)} tokens.",
            param="messages",
            code="context_length_exceeded",
        )
    max_tokens = min(params.get("max_tokens") or max_tokens_cap, room)
    seed = params.get("seed")
    return [
        GenerationRequest(
            prompt_ids=prompt_ids,
            adapter=adapter,
            max_new_tokens=max_tokens,
            temperature=params.get("temperature", 1.0),
            top_p=params.get("top_p", 1.0),
            # n choices from one seed must differ, and repeat with the same seed.
            seed=None if seed is None else (seed + index) % 2**63,
            stop=tuple(params.get("stop") or ()),
        )
        for index in range(params.get("n", 1))
    ]


def choices_and_usage(prompt_ids: list[int], results: list) -> tuple[list[dict], dict]:
    choices = [
        {"index": index, "text": result.text, "finish_reason": result.finish_reason}
        for index, result in enumerate(results)
    ]
    completion_tokens = sum(len(result.token_ids) for result in results)
    usage = {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": completion_tokens,
        "total_tokens": len(prompt_ids) + completion_tokens,
    }
    return choices, usage


def run_chat_request(request: dict) -> None:
    from worker.inference.generation import generate, render_prompt

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
