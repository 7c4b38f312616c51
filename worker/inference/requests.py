"""A request as the engine runs it: its model resolved to a loaded base and
an adapter, its parameters turned into generation rows (one per choice),
and the results turned back into choices and usage. What cannot run is a
RequestError with the HTTP status it deserves, which travels back to the
API in the request's stream or into a batch's error file."""

from collections.abc import Iterator
from contextlib import contextmanager

from worker.inference.engine import AdapterNotFound, AdapterNotSupported, context_length
from worker.inference.generation import GenerationRequest, render_prompt


class RequestError(Exception):
    """A request that cannot run, with the HTTP status it deserves."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def as_event(self) -> dict:
        return {"type": "error", "status": self.status, "message": self.message, "param": self.param, "code": self.code}


@contextmanager
def acquired(engine, target: dict) -> Iterator[tuple]:
    """(loaded base, adapter name or None) for a target from
    domain/inference/targets.py, kept loaded until the block ends."""
    try:
        adapter_id = target.get("adapter_id") or target["job_id"]
        with engine.acquire(target["base_id"], adapter_id, target.get("adapter_key")) as (loaded, adapter):
            yield loaded, adapter
    except AdapterNotFound as exc:
        raise RequestError(
            404, f"The model '{target['model']}' has no adapter files any more.", param="model", code="model_not_found"
        ) from exc
    except AdapterNotSupported as exc:
        raise RequestError(400, f"The model '{target['model']}': {exc}", param="model", code="model_not_supported") from exc


def prompt_ids(loaded, messages: list[dict]) -> list[int]:
    """The rendered prompt (many task threads share one tokenizer)."""
    with loaded.tokenizer_lock:
        return render_prompt(loaded.tokenizer, messages)


def generation_requests(loaded, adapter, prompt_ids: list[int], params: dict, max_tokens_cap: int) -> list:
    """One GenerationRequest per choice (n), checked against the context length."""
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
    """OpenAI's choices (index, text, finish reason) and token usage."""
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

