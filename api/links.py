"""Signed download links, so a browser can stream a large download to disk:
a browser's own download cannot send the API key header.

`POST /v1/downloads` with the API path of a download (`/v1/fine_tuning/jobs/
{id}/adapter`, `.../gguf?quantization=q4_k_m`, ...) asks that download as the
caller, reading no more than its status: ready, it answers a link
(`GET /v1/downloads/{token}`) valid for a few minutes; being made (202) or
refused (4xx), it answers just what the download answered, so a client polls
here without fetching the bytes. Opening the link runs that same download,
as the user who signed it, through the same endpoint (domain/links.py signs
it): ownership, sharing and readiness are checked again at that moment, the
object streams from disk, or on S3 the endpoint's redirect to a presigned URL
is followed by the browser.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.types import Message, Receive, Scope, Send

from api.deps import SIGNED_LINK_USER, CurrentUserAlone
from api.downloads import download_response
from api.errors import COMMON_ERROR_RESPONSES, APIError, ErrorResponse, error_responses
from domain.links import LINK_SECONDS, ExpiredLink, InvalidLink, SignedLink, link_secret, sign_link, verify_link

router = APIRouter(prefix="/v1/downloads", tags=["downloads"], responses=COMMON_ERROR_RESPONSES)

# The downloads a link may stand for (path only; the query is kept as given).
_ID = r"[A-Za-z0-9_-]+"
DOWNLOAD_PATHS = re.compile(
    rf"^/v1/(?:fine_tuning/jobs/{_ID}/(?:adapter|merged|gguf|bundle|recipe|metrics|model_card"
    rf"|model_card/training_curves\.png)|files/{_ID}/content|evaluations/{_ID}/predictions)$"
)
# Headers of the download's own answer that a refusal or a 202 passes on.
_PASSED_ON = {"content-type", "retry-after"}


class DownloadLinkRequest(BaseModel):
    path: str = Field(
        description="The API path of a download, with its query: e.g. `/v1/fine_tuning/jobs/ftjob-abc/gguf?quantization=q8_0`.",
        max_length=2000,
        examples=["/v1/fine_tuning/jobs/ftjob-abc/adapter"],
    )


class DownloadLink(BaseModel):
    object: str = "download_link"
    url: str = Field(description="Opens the download without an API key, as the user who asked for the link.")
    path: str
    expires_at: int = Field(description="Unix seconds; afterwards the link answers 410.")


@router.post(
    "",
    response_model=DownloadLink,
    responses={
        202: {"description": "The download is being prepared (its own 202 body); ask again after Retry-After seconds."},
        **error_responses(403, 404, 409),
    },
)
async def create_download_link(body: DownloadLinkRequest, request: Request, user: CurrentUserAlone) -> Response:
    """Extension: a short-lived link to one download of yours, which a
    browser opens without the API key (and streams to disk)."""
    path, query = _download_path(body.path)
    status, headers, content = await _probe(request, user.id, path, query)
    if status == 200 or 300 <= status < 400:
        signed = SignedLink(user_id=user.id, path=body.path, expires_at=int(time.time()) + LINK_SECONDS)
        token = sign_link(link_secret(request.app.state.tunehouse.settings), signed)
        url = str(request.url_for("open_download_link", token=token))
        return JSONResponse(DownloadLink(url=url, path=body.path, expires_at=signed.expires_at).model_dump())
    passed = {name: value for name, value in headers if name in _PASSED_ON}
    return Response(content, status_code=status, headers=passed)


@router.get(
    "/{token}",
    response_class=Response,
    responses={
        200: download_response("The download the link was signed for, as its endpoint sends it.", "application/octet-stream"),
        307: {"description": "On S3 storage: the download's redirect to a presigned URL."},
        **error_responses(403, 404, 409),
        410: {"model": ErrorResponse, "description": "The link has expired: ask for a new one."},
    },
)
async def open_download_link(token: str, request: Request) -> Response:
    """Extension: the download a signed link stands for; no API key."""
    try:
        link = verify_link(link_secret(request.app.state.tunehouse.settings), token, time.time())
    except ExpiredLink:
        raise APIError(410, "This download link has expired; ask for a new one (POST /v1/downloads).", code="link_expired") from None
    except InvalidLink:
        raise APIError(403, "This is not a valid download link (changed, or not signed here).", code="invalid_link") from None
    path, query = _download_path(link.path)
    return _Forwarded(_as_link_user(request.scope, link.user_id, path, query))


def _download_path(given: str) -> tuple[str, str]:
    parts = urlsplit(given)
    if parts.scheme or parts.netloc or parts.fragment or not DOWNLOAD_PATHS.match(parts.path):
        raise APIError(
            400,
            f"'{given}' is not the API path of a download (e.g. /v1/fine_tuning/jobs/{{id}}/adapter, "
            "/v1/files/{id}/content, /v1/evaluations/{id}/predictions).",
            param="path",
            code="not_a_download",
        )
    return parts.path, parts.query


def _as_link_user(scope: Scope, user_id: int, path: str, query: str) -> Scope:
    """A GET of `path?query` as the link's user: no key, no cookie, no body."""
    headers = [(name, value) for name, value in scope["headers"]
               if name not in (b"authorization", b"cookie", b"content-type", b"content-length")]
    inner = {key: value for key, value in scope.items() if key not in ("route", "endpoint", "path_params")}
    inner.update(method="GET", path=path, raw_path=path.encode(), query_string=query.encode(), headers=headers)
    inner[SIGNED_LINK_USER] = user_id
    return inner


class _Forwarded(Response):
    """Answers with the app's own answer to another request (streamed as it comes)."""

    def __init__(self, scope: Scope):
        super().__init__()
        self.inner = scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"].router(self.inner, receive, send)


class _Answered(BaseException):
    # BaseException: the endpoint's own handlers (which catch Exception) let it through.
    pass


async def _probe(request: Request, user_id: int, path: str, query: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The download's status and headers, and its body only when it is not
    the download itself (a 202 or an error): a ready one is cut off at its start."""
    started = asyncio.Event()
    answer: dict = {"body": b""}

    async def receive() -> Message:
        if not answer.get("asked"):
            answer["asked"] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await started.wait()  # then the client "leaves": a streaming answer stops
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in message.get("headers", [])]
            started.set()
            if message["status"] == 200 or 300 <= message["status"] < 400:
                raise _Answered
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = _as_link_user(request.scope, user_id, path, query)
    try:
        await request.app.router(scope, receive, send)
    except _Answered:
        pass
    except BaseExceptionGroup as group:  # a streaming answer raises it from its task group
        rest = group.subgroup(lambda error: not isinstance(error, _Answered))
        if rest is not None:
            raise rest from None
    return answer["status"], answer["headers"], answer["body"]
