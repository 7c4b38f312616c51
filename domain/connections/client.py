"""Calls to an external OpenAI-compatible endpoint (a connection), sync
httpx, for workers (chat requests, batch lines, evaluations) and for the
API's test action.

- Every request goes to an address checked by the SSRF guard
  (domain/connections/addresses.py) at the time of the request: the URL's
  host is resolved, every address checked, and the connection made to the
  checked address (Host header and TLS name stay the host's). Redirects are
  followed by hand, each hop checked the same way, GETs only (and 307/308),
  at most MAX_REDIRECTS; the key is not sent to another origin. Proxies from
  the environment are ignored (they would connect in our place).
- Timeouts: TUNEHOUSE_CONNECTION_CONNECT_TIMEOUT to connect,
  TUNEHOUSE_CONNECTION_READ_TIMEOUT for each next piece of an answer.
- Retries: 429, 5xx and connection errors (not a read timeout: the endpoint
  may still be generating, at the caller's cost) are tried again up to
  TUNEHOUSE_CONNECTION_MAX_ATTEMPTS times, pausing 0.5 s, 1 s, 2 s, ... or
  what Retry-After asks, never longer than TUNEHOUSE_CONNECTION_RETRY_MAX_WAIT.
  A stream is retried only before its first byte.
- At most TUNEHOUSE_CONNECTION_CONCURRENCY calls per connection at once in
  this process; the others wait for a turn.
- Calls a person waits for in an API request (`interactive`: the test and
  models actions, moves) hold one of the API's threads while the endpoint
  answers, so they never wait for a turn (a busy connection, or
  INTERACTIVE_CALLS such calls already under way in the process, is answered
  `busy` at once), read for at most INTERACTIVE_READ_TIMEOUT and pause at most
  INTERACTIVE_RETRY_WAIT between tries: a stalled endpoint cannot take the
  API's threads from everyone else.
- The key is never in an error message, a log line or a repr: errors name
  the status and the endpoint's own message with the key cut out, and a
  401/403 says only that the key was refused.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from domain.connections.addresses import RefusedAddress, pin
from domain.settings import Settings

MAX_REDIRECTS = 5
FIRST_RETRY_DELAY = 0.5
# Statuses tried again: rate limited, and the endpoint (or a proxy before it) failing.
RETRIED_STATUSES = {429, 500, 502, 503, 504}
_ERROR_TEXT_CHARS = 300


@dataclass(frozen=True)
class Endpoint:
    connection_id: str
    name: str
    base_url: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class ExternalModel:
    model: str  # the public id, "conn:{name}/{remote_model}"
    remote_model: str
    endpoint: Endpoint

    def as_dict(self) -> dict:
        """For a worker's message: no key (the worker reads it from the
        connection, domain/connections/service.py external_model_of)."""
        return {"kind": "external", "model": self.model, "remote_model": self.remote_model,
                "connection_id": self.endpoint.connection_id}


@dataclass
class ExternalCompletion:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int  # of the attempt that answered (retries and their pauses not counted)
    attempts: int


class ExternalCallError(Exception):
    """code: timeout | rate_limited | connection_error | upstream_error |
    refused_address | bad_response | busy (an interactive call found no free turn). `status`: the endpoint's HTTP status, if any."""

    def __init__(self, code: str, message: str, *, status: int | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# -------------------------------------------------------------- concurrency

INTERACTIVE_CALLS = 4
INTERACTIVE_READ_TIMEOUT = 15.0
INTERACTIVE_RETRY_WAIT = 2.0
_interactive_calls = threading.BoundedSemaphore(INTERACTIVE_CALLS)
_turns: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_turns_lock = threading.Lock()


@contextmanager
def _turn(connection_id: str, size: int, busy: ExternalCallError | None) -> Iterator[None]:
    """A turn at the connection; with `busy` (an interactive call) none is
    waited for: `busy` is raised instead."""
    with _turns_lock:
        semaphore = _turns.setdefault((connection_id, size), threading.BoundedSemaphore(max(1, size)))
    if busy is None:
        with semaphore:
            yield
        return
    if not _interactive_calls.acquire(blocking=False):
        raise busy
    try:
        if not semaphore.acquire(blocking=False):
            raise busy
        try:
            yield
        finally:
            semaphore.release()
    finally:
        _interactive_calls.release()


# -------------------------------------------------------------- the client


class ConnectionClient:
    def __init__(self, endpoint: Endpoint, settings: Settings, *, max_attempts: int | None = None,
                 interactive: bool = False):
        """`max_attempts`: instead of TUNEHOUSE_CONNECTION_MAX_ATTEMPTS (1: no retries).
        `interactive`: a call made inside an API request (see the module's docstring)."""
        self.endpoint = endpoint
        self.settings = settings
        self.interactive = interactive
        self.max_attempts = max_attempts or settings.connection_max_attempts
        self._read_timeout = settings.connection_read_timeout
        self._retry_max_wait = settings.connection_retry_max_wait
        if interactive:
            self._read_timeout = min(self._read_timeout, INTERACTIVE_READ_TIMEOUT)
            self._retry_max_wait = min(self._retry_max_wait, INTERACTIVE_RETRY_WAIT)
        self._timeout = httpx.Timeout(self._read_timeout, connect=settings.connection_connect_timeout)

    def __repr__(self) -> str:
        return f"ConnectionClient({self.endpoint!r})"

    # -- the OpenAI calls ----------------------------------------------------

    def chat(self, model: str, messages: list[dict], *, max_tokens: int, temperature: float,
             seed: int | None = None, stop: list[str] | None = None, top_p: float | None = None) -> ExternalCompletion:
        body = _chat_body(model, messages, max_tokens, temperature, seed, stop, top_p, n=1)
        with self._chat_call(body) as (response, attempts, started):
            answer = self._json(response)
        latency_ms = int((time.monotonic() - started) * 1000)
        try:
            choice = answer["choices"][0]
            usage = answer.get("usage") or {}
            return ExternalCompletion(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                latency_ms=latency_ms,
                attempts=attempts,
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise ExternalCallError("bad_response", f"{self._where()} answered a chat completion in an unknown shape.")

    def stream_chat(self, model: str, messages: list[dict], *, max_tokens: int, temperature: float,
                    seed: int | None = None, stop: list[str] | None = None, top_p: float | None = None,
                    n: int = 1) -> Iterator[dict]:
        """OpenAI's chunk dicts as they come (the last with `usage` where
        the endpoint sends it); errors in the stream raise ExternalCallError."""
        body = _chat_body(model, messages, max_tokens, temperature, seed, stop, top_p, n=n)
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        with self._chat_call(body) as (response, _, _):
            with self._reading("the stream"):
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise ExternalCallError("bad_response", f"{self._where()} sent a stream chunk that is not JSON.")
                    if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
                        raise ExternalCallError("upstream_error", f"{self._where()} ended the stream with an error: "
                                                f"{self._scrub(str(chunk['error'].get('message')))}")
                    if not isinstance(chunk, dict):
                        raise ExternalCallError("bad_response", f"{self._where()} sent a stream chunk in an unknown shape.")
                    yield chunk

    def list_models(self) -> list[str]:
        data = self.get_json("/models").get("data")
        if not isinstance(data, list):
            raise ExternalCallError("bad_response", f"{self._where()} answered /models in an unknown shape.")
        return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]

    def get_json(self, path: str, params: dict | None = None) -> dict:
        with self._call("GET", path, params=params) as (response, _, _):
            answer = self._json(response)
        if not isinstance(answer, dict):
            raise ExternalCallError("bad_response", f"{self._where()} answered {path} with JSON that is not an object.")
        return answer

    def iter_bytes(self, path: str) -> Iterator[bytes]:
        with self._call("GET", path) as (response, _, _):
            with self._reading("the download"):
                yield from response.iter_bytes()

    # -- one call: a turn, tries, redirects ------------------------------------

    @contextmanager
    def _chat_call(self, body: dict):
        """_call for a chat completion. OpenAI's reasoning models refuse
        `max_tokens` (400, "use max_completion_tokens"), which most other
        servers still need: asked again once with the newer name."""
        with ExitStack() as stack:
            try:
                opened = stack.enter_context(self._call("POST", "/chat/completions", json_body=body))
            except ExternalCallError as error:
                if not (error.status == 400 and "max_completion_tokens" in error.message and "max_tokens" in body):
                    raise
                body = {("max_completion_tokens" if k == "max_tokens" else k): v for k, v in body.items()}
                opened = stack.enter_context(self._call("POST", "/chat/completions", json_body=body))
            yield opened

    @contextmanager
    def _call(self, method: str, path: str, *, json_body: dict | None = None, params: dict | None = None):
        """(response, attempts, monotonic start of the answering attempt):
        a 2xx response whose body is still to be read, inside the turn."""
        url = self.endpoint.base_url.rstrip("/") + "/" + path.lstrip("/")
        settings = self.settings
        busy = ExternalCallError(
            "busy", f"{self._where()} is answering as many calls from this API process as it may at once; "
            "try again in a moment.") if self.interactive else None
        with _turn(self.endpoint.connection_id, settings.connection_concurrency, busy), \
                httpx.Client(timeout=self._timeout, trust_env=False, follow_redirects=False) as http:
            attempt = 0
            while True:
                attempt += 1
                started = time.monotonic()
                retry_after: float | None = None
                try:
                    response = self._send(http, method, url, json_body, params)
                except httpx.ConnectTimeout:
                    error = ExternalCallError("timeout", f"{self._where()} did not accept a connection within "
                                              f"{settings.connection_connect_timeout:g} s.")
                except httpx.TimeoutException:
                    raise self._timeout_error() from None
                except (httpx.TransportError, OSError) as exc:
                    error = ExternalCallError("connection_error", f"{self._where()} cannot be reached "
                                              f"({type(exc).__name__}: {self._scrub(str(exc))[:200]}).")
                else:
                    if response.is_success:
                        try:
                            yield response, attempt, started
                        finally:
                            response.close()
                        return
                    error = self._status_error(response)
                    retry_after = _retry_after(response.headers.get("retry-after"))
                    response.close()
                    if response.status_code not in RETRIED_STATUSES:
                        raise error
                if attempt >= self.max_attempts:
                    raise error
                pause = FIRST_RETRY_DELAY * 2 ** (attempt - 1) if retry_after is None else retry_after
                time.sleep(min(max(pause, 0.0), self._retry_max_wait))

    def _send(self, http: httpx.Client, method: str, url: str, json_body: dict | None, params: dict | None):
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = pin(url, self.settings)
            except RefusedAddress as exc:
                raise ExternalCallError("refused_address", str(exc)) from None
            headers = {"Host": target.host_header, "Accept": "application/json"}
            if self.endpoint.api_key and _origin(url) == origin:
                headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
            request = http.build_request(
                method, target.url, headers=headers, json=json_body, params=params,
                extensions={"sni_hostname": target.host} if url.startswith("https:") else {},
            )
            response = http.send(request, stream=True)
            if not response.is_redirect:
                return response
            location = response.headers.get("location", "")
            response.close()
            if not (method == "GET" or response.status_code in (307, 308)):
                raise ExternalCallError("upstream_error", f"{self._where()} redirected a {method}; "
                                        "redirects are followed for GETs only.", status=response.status_code)
            url = urljoin(url, location)
            params = None  # the Location holds the whole URL
        raise ExternalCallError("upstream_error", f"{self._where()} redirected more than {MAX_REDIRECTS} times.")

    # -- errors -----------------------------------------------------------------

    def _where(self) -> str:
        return f"The connection '{self.endpoint.name}'"

    def _scrub(self, text: str) -> str:
        key = self.endpoint.api_key
        return text.replace(key, "[key]") if key else text

    def _timeout_error(self) -> ExternalCallError:
        return ExternalCallError("timeout", f"{self._where()} sent nothing for "
                                 f"{self._read_timeout:g} s (read timeout).")

    def _status_error(self, response: httpx.Response) -> ExternalCallError:
        status = response.status_code
        if status in (401, 403):
            return ExternalCallError("upstream_error", f"{self._where()} refused the API key (HTTP {status}).",
                                     status=status)
        try:
            body = response.read()
        except httpx.HTTPError:
            body = b""
        try:
            detail = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):  # not OpenAI's error shape: its text, briefly
            detail = body.decode("utf-8", "replace")
        detail = self._scrub(" ".join(str(detail or "").split()))[:_ERROR_TEXT_CHARS]
        code = "rate_limited" if status == 429 else "upstream_error"
        suffix = f": {detail}" if detail else "."
        return ExternalCallError(code, f"{self._where()} answered HTTP {status}{suffix}", status=status)

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Reading a response's body: its transport errors as ExternalCallErrors."""
        try:
            yield
        except httpx.TimeoutException:
            raise self._timeout_error() from None
        except httpx.TransportError as exc:
            raise ExternalCallError("connection_error", f"{self._where()} broke off {what} "
                                    f"({type(exc).__name__}).") from None

    def _json(self, response: httpx.Response):
        with self._reading("its answer"):
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            raise ExternalCallError("bad_response", f"{self._where()} answered with something that is not JSON.") from None


def _chat_body(model, messages, max_tokens, temperature, seed, stop, top_p, *, n) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if seed is not None:
        body["seed"] = seed
    if stop:
        body["stop"] = stop
    if top_p is not None and top_p != 1.0:
        body["top_p"] = top_p
    if n != 1:
        body["n"] = n
    return body


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, or as an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()
