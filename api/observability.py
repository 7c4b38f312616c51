"""The API's observability: GET /metrics (Prometheus text exposition, no API
key), request timing, and the request id every log line of a request carries.

It exposes aggregate numbers only (queue depths, how many jobs, batches and
evaluations are in each status, training throughput, request latencies by
route template), never an id, a user or any content; restrict it at the
network level (reverse proxy, firewall) if even those are private.

Each app has its own CollectorRegistry (tests run several apps in one
process). The queue and database gauges are read when Prometheus scrapes, by a
custom collector; what cannot be read then (database or broker down) is left
out and counted in `tunehouse_scrape_errors{source}`, the scrape never fails.
"""

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from functools import cached_property

from celery import Celery
from fastapi import FastAPI
from fastapi.responses import Response
from kombu.exceptions import ChannelError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from domain.observability.logs import log_context
from domain.queue import ALL_QUEUES, create_celery
from domain.settings import Settings
from domain.observability.stats import (
    batch_counts_by_status,
    evaluation_counts_by_status,
    job_counts_by_status,
    running_tokens_per_second,
)

log = logging.getLogger("tunehouse.metrics")

# Requests range from a /healthz (ms) to an upload or a streamed chat answer (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNMATCHED_ROUTE = "unmatched"
# A scrape waits at most about this long for the broker to answer (connect, read).
BROKER_TIMEOUT_SECONDS = 2.0


def queue_depths(celery: Celery, queues: Iterable[str] = ALL_QUEUES,
                 timeout: float = BROKER_TIMEOUT_SECONDS) -> dict[str, int]:
    """Messages waiting per queue, read through kombu's public API: a passive
    `queue_declare` answers the queue's `message_count` (on Redis the sum over
    its priority lists, on the filesystem transport its message files) and
    creates nothing. A queue that does not exist (no message sent yet, or
    Redis dropped its emptied list) counts 0. Raises when the broker cannot be
    reached: one try, `timeout` seconds, never kombu's usual retrying."""
    with celery.connection_for_read(
        connect_timeout=timeout,
        transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout},
    ) as connection:
        connection.ensure_connection(max_retries=0)
        channel = connection.channel()
        try:
            depths = {}
            for queue in queues:
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except ChannelError:  # NOT_FOUND: nothing waits there
                    depths[queue] = 0
            return depths
        finally:
            channel.close()


class ServiceCollector(Collector):
    """The gauges read at scrape time from the broker and the database."""

    def __init__(self, settings: Settings, sessionmaker: Callable):
        self.settings = settings
        self.sessionmaker = sessionmaker

    @cached_property
    def _celery(self) -> Celery:
        # The broker connection settings the API sends tasks with (transport,
        # folders of the filesystem transport); made at the first scrape.
        return create_celery(self.settings)

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not touch the database.
        return [self._family(name, help_, labels) for name, help_, labels in _SERVICE_METRICS]

    @staticmethod
    def _family(name: str, help_: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, help_, labels=labels or None)

    def collect(self) -> Iterable[Metric]:
        errors = {"broker": 0, "database": 0}
        families: list[Metric] = []
        try:
            depths = queue_depths(self._celery)
        except Exception as exc:  # the broker is away: leave the gauge out, count the error
            log.warning("metrics: cannot read queue depths: %s: %s", type(exc).__name__, exc)
            errors["broker"] += 1
            depths = None
        if depths is not None:
            family = self._family(*_SERVICE_METRICS[0])
            for queue, depth in depths.items():
                family.add_metric([queue], depth)
            families.append(family)

        readers = [
            (_SERVICE_METRICS[1], job_counts_by_status),
            (_SERVICE_METRICS[2], batch_counts_by_status),
            (_SERVICE_METRICS[3], evaluation_counts_by_status),
            (_SERVICE_METRICS[4], running_tokens_per_second),
        ]
        try:
            session = self.sessionmaker()
        except Exception as exc:
            log.warning("metrics: no database session: %s", exc)
            errors["database"] += len(readers)
            session = None
        if session is not None:
            with session:
                for spec, read in readers:
                    try:
                        value = read(session)
                    except Exception as exc:  # one failed read does not hide the others
                        log.warning("metrics: %s unreadable: %s: %s", spec[0], type(exc).__name__, exc)
                        errors["database"] += 1
                        session.rollback()
                        continue
                    family = self._family(*spec)
                    if isinstance(value, dict):
                        for status, count in value.items():
                            family.add_metric([status], count)
                    else:
                        family.add_metric([], value)
                    families.append(family)

        scrape_errors = self._family(*_SERVICE_METRICS[5])
        for source, count in errors.items():
            scrape_errors.add_metric([source], count)
        families.append(scrape_errors)
        return families


_SERVICE_METRICS: list[tuple[str, str, tuple[str, ...]]] = [
    ("tunehouse_queue_depth", "Messages waiting in each task queue of the broker.", ("queue",)),
    ("tunehouse_jobs", "Fine-tuning jobs in each status.", ("status",)),
    ("tunehouse_batches", "Batches in each status.", ("status",)),
    ("tunehouse_evaluations", "Evaluations in each status.", ("status",)),
    (
        "tunehouse_training_tokens_per_second",
        "Training throughput: the sum over running jobs of each one's latest tokens per second.",
        (),
    ),
    (
        "tunehouse_scrape_errors",
        "Reads that failed in this scrape, by source (the gauges they feed are left out of it).",
        ("source",),
    ),
]


class RequestMetricsMiddleware:
    """Times every HTTP request (pure ASGI: streaming responses stay streamed).

    The time runs from the request's arrival to the end of the response, i.e.
    until the app returns after sending the last body chunk: for a streamed chat
    answer that is the whole stream, not just the time to the headers. Labels:
    method, route template (`/v1/files/{file_id}`, never the raw path, so the
    number of series stays bounded; "unmatched" when no route matched) and
    status code."""

    def __init__(self, app, histogram: Histogram):
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app sends a response start

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = scope.get("method", "")
            self.histogram.labels(method, template, str(status)).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI, settings: Settings, sessionmaker: Callable) -> CollectorRegistry:
    """Add the timing middleware and GET /metrics; register before the web UI's
    catch-all route."""
    registry = CollectorRegistry()
    histogram = Histogram(
        "tunehouse_http_request_duration_seconds",
        "HTTP request duration, to the end of the response (streamed bodies included).",
        ("method", "route", "status"),
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    registry.register(ServiceCollector(settings, sessionmaker))
    app.add_middleware(RequestMetricsMiddleware, histogram=histogram)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        # A plain def: FastAPI runs it in its thread pool, the database and
        # broker reads do not block the event loop.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics_registry = registry
    return registry


_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class RequestContextMiddleware:
    """Pure ASGI: every record logged while a request is handled (uvicorn's
    access line included) carries its `request_id`: the client's X-Request-ID
    when it is a plain token of at most 128 characters, else a new one. The
    response echoes it in `x-request-id`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if 0 < len(candidate) <= 128 and set(candidate) <= _REQUEST_ID_CHARS:
                    request_id = candidate
                break
        if request_id is None:
            request_id = f"req_{uuid.uuid4().hex}"

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", ()) if n.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)
