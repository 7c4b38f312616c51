"""A request for a connection's model (domain/connections/): answered by
its endpoint through ConnectionClient instead of the decode loop, in the
same shapes (choices, usage, RequestError) a local model's answer takes, for
chat requests (chat.py) and batch lines (batch.py)."""

from collections.abc import Callable

from domain.connections.client import ConnectionClient, ExternalCallError, ExternalModel
from domain.connections.service import call_error_status, finish_reason
from domain.settings import Settings
from worker.inference.requests import RequestError


def _call_params(params: dict, settings: Settings) -> dict:
    """A request's parameters (the keys of a chat message or batch.request_params) for the endpoint."""
    stop = params.get("stop") or None
    return dict(max_tokens=params.get("max_tokens") or settings.max_completion_tokens,
                temperature=params.get("temperature", 1.0), top_p=params.get("top_p"),
                stop=[stop] if isinstance(stop, str) else stop)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def request_error(error: ExternalCallError) -> RequestError:
    return RequestError(call_error_status(error), error.message, param="model", code=error.code)


def complete(model: ExternalModel, messages: list[dict], params: dict, settings: Settings) -> tuple[list[dict], dict]:
    """(choices, usage) of a whole answer. One call per choice: n choices
    from one seed differ, and repeat with the same seed (as local models do)."""
    client = ConnectionClient(model.endpoint, settings)
    seed, n = params.get("seed"), params.get("n") or 1
    try:
        completions = [
            client.chat(model.remote_model, messages, seed=None if seed is None else (seed + index) % 2**63,
                        **_call_params(params, settings))
            for index in range(n)
        ]
    except ExternalCallError as error:
        raise request_error(error) from None
    choices = [{"index": i, "text": c.text, "finish_reason": finish_reason(c.finish_reason)}
               for i, c in enumerate(completions)]
    return choices, _usage(completions[0].prompt_tokens, sum(c.completion_tokens for c in completions))


def stream(model: ExternalModel, messages: list[dict], params: dict, settings: Settings,
           on_text: Callable[[int, str], None]) -> tuple[list[dict], dict]:
    """(choices, usage) of an answer streamed from the endpoint, each piece
    of text handed to `on_text(index, text)` as it comes."""
    client = ConnectionClient(model.endpoint, settings)
    n = params.get("n") or 1
    texts, reasons, usage = [""] * n, [None] * n, {}
    try:
        for chunk in client.stream_chat(model.remote_model, messages, seed=params.get("seed"), n=n,
                                        **_call_params(params, settings)):
            for choice in chunk.get("choices") or []:
                index = choice.get("index") or 0
                if not (isinstance(index, int) and 0 <= index < n):
                    continue
                text = (choice.get("delta") or {}).get("content")
                if text:
                    texts[index] += text
                    on_text(index, text)
                reasons[index] = choice.get("finish_reason") or reasons[index]
            usage = chunk.get("usage") or usage
    except ExternalCallError as error:
        raise request_error(error) from None
    choices = [{"index": i, "text": texts[i], "finish_reason": finish_reason(reasons[i])} for i in range(n)]
    return choices, _usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
