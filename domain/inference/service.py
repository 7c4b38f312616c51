"""Chat completions: check the request, hand it to an inference worker, and
turn the worker's event stream into OpenAI's response or SSE chunks.

Latency path: API -> broker (queue `inference`) -> an inference worker's
long-lived process, which keeps the base model loaded and attaches the
fine-tune's adapter -> events back on a per-request channel
(domain/inference/streams.py) -> the client. One inference worker process
answers one request at a time; add processes or workers for concurrency.
"""

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.errors import (
    InvalidRequest,
    ServiceError,
    Unavailable,
    UpstreamFailed,
    error_for_status,
    invalid_request_of,
    model_not_found,
)
from domain.ids import new_id
from domain.inference.schemas import ChatCompletion, ChatCompletionRequest
from domain.inference.streams import FileStreams, RedisStreams, StreamTimeout
from domain.connections.client import ExternalModel
from domain.connections.service import external_target
from domain.inference.targets import InferenceTarget, resolve_model
from domain.queue_client import TaskQueue
from domain.settings import Settings


def no_worker_error(settings: Settings) -> Unavailable:
    return Unavailable(
        f"No inference worker answered within {settings.inference_queue_timeout:g} s; "
        "start one with `tunehouse worker --queues inference` or try again.",
        code="no_inference_worker",
        retry_after=10,
    )


def resolve_or_404(session: Session, user: User, settings: Settings, model: str) -> InferenceTarget | ExternalModel:
    target = resolve_model(session, user.id, settings, model)
    if target is None:
        raise model_not_found(model)
    return target


def check_max_tokens(max_tokens: int | None, settings: Settings, *, param: str) -> None:
    """A token limit a request asks for, against the deployment's cap."""
    if max_tokens is not None and max_tokens > settings.max_completion_tokens:
        raise InvalidRequest(
            f"{param} is {max_tokens}; this deployment allows at most {settings.max_completion_tokens}.", param=param
        )


def chat_request(
    body: Mapping[str, Any] | ChatCompletionRequest, settings: Settings, *, in_batch: bool = False
) -> ChatCompletionRequest:
    """The one check of a chat completion request on this deployment, for
    POST /v1/chat/completions and for each line of a batch (`in_batch`), so
    both accept and refuse the same bodies, with the same errors. Raises
    InvalidRequest naming the parameter.

    `body` is the raw JSON object (a batch line's), or the request the API has
    already validated with the same model (its validation errors become the
    same refusals there: domain.errors.invalid_request via api/errors.py).
    Whether the model exists is the caller's to check (resolve_or_404).
    """
    if isinstance(body, ChatCompletionRequest):
        request = body
    else:
        try:
            request = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            raise invalid_request_of(exc) from None
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        raise InvalidRequest("Give max_tokens or max_completion_tokens, not both.", param="max_tokens")
    check_max_tokens(
        request.token_limit(),
        settings,
        param="max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens",
    )
    if in_batch and request.stream:
        raise InvalidRequest("stream is not supported in batches.", param="stream", code="unsupported_parameter")
    return request


def worker_request(request: ChatCompletionRequest, target: InferenceTarget | ExternalModel, settings: Settings) -> dict:
    """What an inference worker gets for a request checked by chat_request.
    A connection's model (worker/inference/chat.py calls its endpoint) travels
    with its key encrypted; `stream` lets that worker ask the endpoint for the
    same kind of answer."""
    return {
        "id": new_id("chatcmpl-"),
        "created": int(time.time()),
        "target": external_target(target, settings) if isinstance(target, ExternalModel) else target.as_dict(),
        "stream": request.stream,
        "messages": [message.for_template() for message in request.messages],
        "max_tokens": request.token_limit(),
        "temperature": request.temperature,
        "top_p": request.top_p,
        "n": request.n,
        "stop": request.stop,
        "seed": request.seed,
        # A worker that gets the message after the API stopped waiting drops it.
        "expires_at": time.time() + settings.inference_queue_timeout,
    }


class ChatRun:
    """One request in flight: send it, then read its events."""

    def __init__(self, settings: Settings, queue: TaskQueue, streams: RedisStreams | FileStreams, payload: dict):
        self.settings = settings
        self.payload = payload
        try:
            queue.send_chat(payload)
        except Exception as exc:
            raise Unavailable(
                "The task queue is unavailable; try again shortly.", code="queue_unavailable", retry_after=5
            ) from exc
        self._events = streams.read(
            payload["id"], self.settings.inference_queue_timeout, self.settings.inference_idle_timeout
        )

    def events(self) -> Iterator[dict]:
        """The worker's events after `started`; errors become ServiceErrors."""
        try:
            for event in self._events:
                if event["type"] == "started":
                    continue
                if event["type"] == "error":
                    raise error_for_status(
                        event.get("status", 500), event["message"], param=event.get("param"), code=event.get("code")
                    )
                yield event
        except StreamTimeout as exc:
            raise no_worker_error(self.settings) from exc


def next_event(events: Iterator[dict]) -> dict:
    # StopIteration cannot cross a thread pool's future: say what ended instead.
    event = next(events, None)
    if event is None:
        raise UpstreamFailed("The inference worker ended the answer early.", code="worker_error")
    return event


def chat_completion(completion_id: str, created: int, model: str, choices: list[dict], usage: dict) -> ChatCompletion:
    """The answer to a chat request, from a worker's choices (index, text,
    finish_reason) and usage: the chat endpoint's body and a batch line's."""
    return ChatCompletion.model_validate(
        {
            "id": completion_id,
            "created": created,
            "model": model,
            "choices": [
                {"index": c["index"], "message": {"content": c["text"]}, "finish_reason": c["finish_reason"]}
                for c in choices
            ],
            "usage": usage,
        }
    )


def completion(payload: dict, done: dict) -> ChatCompletion:
    return chat_completion(payload["id"], payload["created"], payload["target"]["model"], done["choices"], done["usage"])


def sse_chunks(payload: dict, first: dict, events: Iterator[dict], include_usage: bool) -> Iterator[str]:
    """OpenAI's stream: a role chunk per choice, content chunks, a final chunk
    per choice with its finish_reason, optionally a usage chunk, then [DONE]."""

    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        body = {
            "id": payload["id"],
            "object": "chat.completion.chunk",
            "created": payload["created"],
            "model": payload["target"]["model"],
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def choice(index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    yield chunk([choice(i, {"role": "assistant", "content": ""}) for i in range(payload["n"])])
    event = first
    try:
        while True:
            if event["type"] == "delta":
                yield chunk([choice(event["index"], {"content": event["text"]})])
            elif event["type"] == "done":
                yield chunk([choice(c["index"], {}, c["finish_reason"]) for c in event["choices"]])
                if include_usage:
                    yield chunk([], event["usage"])
                break
            event = next_event(events)
    except ServiceError as error:
        # Headers are gone: the error travels in the stream, as OpenAI does it.
        yield f"data: {json.dumps({'error': {'message': error.message, 'type': error.type, 'param': error.param, 'code': error.code}})}\n\n"
    yield "data: [DONE]\n\n"
