from collections.abc import AsyncIterator, Iterator
from functools import partial

import anyio
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.errors import COMMON_ERROR_RESPONSES, error_responses
from domain.inference import service
from domain.inference.schemas import ChatCompletion, ChatCompletionRequest
from api.deps import CurrentUser, SessionDep, StateDep

router = APIRouter(prefix="/v1/chat", tags=["inference"], responses=COMMON_ERROR_RESPONSES)

# A chat request waits for its worker's answer in a thread (the answer
# channel is read with blocking calls) for as long as the model generates. Those
# waits get threads of their own, so that many chats at once never take the
# threads every other request needs (the shared pool, api/deps.py).
CHAT_WAITING_THREADS = 256
_chat_waits = anyio.CapacityLimiter(CHAT_WAITING_THREADS)


async def _waiting(function, *args):
    return await anyio.to_thread.run_sync(partial(function, *args), limiter=_chat_waits)


async def _relayed(chunks: Iterator[str]) -> AsyncIterator[str]:
    """The SSE chunks, each read in a chat-waiting thread."""
    while (chunk := await _waiting(next, chunks, None)) is not None:
        yield chunk


_SSE = {
    "description": "The completion; with stream=true, OpenAI's server-sent events: `data: {chunk}` ... `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


# 503 also when no inference worker takes the request within TUNEHOUSE_INFERENCE_QUEUE_TIMEOUT.
@router.post("/completions", response_model=ChatCompletion, responses={200: _SSE, **error_responses(404, 502)})
async def create_chat_completion(body: ChatCompletionRequest, user: CurrentUser, session: SessionDep, state: StateDep):
    # The checks a batch line gets too (worker/inference/batch.py), then the model.
    request = service.chat_request(body, state.settings)
    target = await run_in_threadpool(service.resolve_or_404, session, user, state.settings, request.model)
    payload = service.worker_request(request, target, state.settings)
    session.close()  # do not hold a database connection while the model generates
    run = await _waiting(service.ChatRun, state.settings, state.queue, state.streams, payload)
    events = run.events()
    # The first event decides between an HTTP error and a 200: errors found
    # before any text (unknown adapter, prompt too long) get their own status.
    first = await _waiting(service.next_event, events)
    if not request.stream:
        while first["type"] != "done":
            first = await _waiting(service.next_event, events)
        return service.completion(payload, first)
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return StreamingResponse(
        _relayed(service.sse_chunks(payload, first, events, include_usage)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
