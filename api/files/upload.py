"""Receiving an upload: multipart parsed as it streams in, each chunk of the file
hashed, validated and written to storage before the next is read.

Starlette's own form parsing would first spool the whole file to a temporary
file and make us read it back; a 1 GB upload would then cost two extra passes.
Here the request body is consumed once, in ~1 MiB steps, and the file's bytes
are counted against the limit as they arrive, with or without Content-Length.

A refused upload is answered at once, as soon as the limit is crossed (before
the body is read at all when Content-Length already says too much), and with
"Connection: close", so the server does not go on reading and discarding the
rest. An upload whose body stops arriving for `idle_timeout` seconds gets a
408; either way the caller aborts the storage writer, so nothing stays.
"""

import asyncio
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from api.errors import APIError, api_error, bad_request
from domain.errors import ServiceError
from domain.files.service import IncomingFile, check_purpose, file_too_large

STEP_BYTES = 1 << 20  # how much body to gather before one hop to the worker thread
MAX_FIELD_BYTES = 4096  # plain form fields (purpose, …) are tiny
BODY_OVERHEAD_BYTES = 1 << 20  # multipart framing and fields allowed beyond the file limit


def upload_timeout(seconds: float) -> APIError:
    return APIError(
        408,
        f"The upload stalled: no data arrived for {seconds:g} seconds.",
        param="file",
        code="upload_timeout",
    )


def clean_filename(raw: bytes | None) -> str:
    """The client's file name as metadata: last path component, no control characters."""
    name = (raw or b"").decode("utf-8", errors="replace")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:255] or "upload"


@dataclass
class _Part:
    name: str = ""
    filename: bytes | None = None
    is_file: bool = False
    value: bytearray = field(default_factory=bytearray)


class MultipartUpload:
    """Parses one multipart body fed in chunks. The single `file` part goes to
    the incoming file (limit, hash, validation, storage); other fields are kept."""

    def __init__(self, boundary: bytes, incoming: IncomingFile):
        self.incoming = incoming
        self.max_file_bytes = incoming.max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._seen_file = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    # Runs in a worker thread: parsing, hashing, validation and storage writes
    # are all CPU or blocking I/O.
    def write(self, body_chunk: bytes) -> None:
        try:
            self._parser.write(body_chunk)
        except MultipartParseError as exc:
            raise bad_request(f"Malformed multipart body: {exc}", param="file", code="invalid_multipart") from exc

    def finish(self) -> None:
        self._parser.finalize()
        if not self._seen_file:
            raise bad_request("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self._header_value))
            self._part.name = options.get(b"name", b"").decode("utf-8", errors="replace")
            self._part.filename = options.get(b"filename")
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        part = self._part
        if part.name != "file":
            return
        if self._seen_file:
            raise bad_request("Send exactly one 'file' part.", param="file", code="invalid_multipart")
        self._seen_file = True
        part.is_file = True
        self.filename = clean_filename(part.filename)
        self.incoming.expect(self.fields.get("purpose"))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        chunk = data[start:end]
        if not part.is_file:
            if len(part.value) + len(chunk) > MAX_FIELD_BYTES:
                raise bad_request(f"Form field '{part.name}' is too long.", param=part.name or None)
            part.value += chunk
            return
        self.incoming.feed(chunk)

    def _on_part_end(self) -> None:
        part = self._part
        if part.is_file or not part.name:
            return
        self.fields[part.name] = part.value.decode("utf-8", errors="replace").strip()
        if part.name == "purpose" and not self._seen_file:
            check_purpose(self.fields["purpose"])  # fail before reading a large file for nothing


def multipart_boundary(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise bad_request(
            "Upload files as multipart/form-data with the fields 'file' and 'purpose'.",
            param="file",
            code="invalid_content_type",
        )
    return boundary


def check_declared_length(request: Request, max_file_bytes: int) -> None:
    """Refuse a body whose Content-Length is already over the limit, unread."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_file_bytes + BODY_OVERHEAD_BYTES:
        raise _closing(api_error(file_too_large(max_file_bytes)))


def _closing(error: APIError) -> APIError:
    # Answering before the body is all read: without this header the server
    # would keep the connection and read (and drop) the rest of the body.
    error.headers = {**(error.headers or {}), "Connection": "close"}
    return error


async def receive(request: Request, upload: MultipartUpload, idle_timeout: float) -> None:
    """Feed the request body to `upload` in ~1 MiB steps, each in a worker thread.

    Waits at most `idle_timeout` seconds for each next piece of the body (the
    time spent processing a step does not count), so a slow but steady upload
    goes through and a stalled one gets a 408."""
    check_declared_length(request, upload.max_file_bytes)
    max_body = upload.max_file_bytes + BODY_OVERHEAD_BYTES
    received = 0
    pending: list[bytes] = []
    pending_bytes = 0
    more_body = True
    try:
        while more_body:
            try:
                message = await asyncio.wait_for(request.receive(), idle_timeout)
            except TimeoutError:
                raise upload_timeout(idle_timeout) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            more_body = message.get("more_body", False)
            chunk = message.get("body", b"")
            if not chunk:
                continue
            received += len(chunk)
            if received > max_body:
                raise file_too_large(upload.max_file_bytes)
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= STEP_BYTES:
                await run_in_threadpool(upload.write, b"".join(pending))
                pending, pending_bytes = [], 0
    except ClientDisconnect as exc:
        raise bad_request("The upload was interrupted.", param="file", code="upload_interrupted") from exc
    except ServiceError as exc:
        raise _closing(api_error(exc)) from exc  # too large, or refused part-way (bad purpose, …)
    except APIError as exc:
        _closing(exc)  # stalled
        raise
    if pending:
        await run_in_threadpool(upload.write, b"".join(pending))
    await run_in_threadpool(upload.finish)
