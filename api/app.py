"""The FastAPI application: /v1 (OpenAI-compatible plus extensions), /healthz."""

import asyncio
import logging

import anyio
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.startup import freeze_startup_objects
from api.errors import error_body, install_error_handlers
from api.batches.endpoints import router as batches_router
from api.bundles.endpoints import router as bundles_router
from api.connections.endpoints import router as connections_router
from domain.connections.crypto import connection_secret
from api.catalog.endpoints import router as models_router
from api.evaluations.endpoints import router as evaluations_router
from api.exports.endpoints import router as exports_router
from api.files.endpoints import router as files_router
from api.inference.endpoints import router as chat_router
from domain.inference.streams import sweep_streams
from api.jobs.endpoints import router as jobs_router
from api.jobs.model_card import router as model_card_router
from api.links import router as links_router
from api.moves.endpoints import router as moves_router
from api.sharing.endpoints import router as sharing_router

from api.observability import RequestContextMiddleware, install_metrics
from api.rate_limit import RateLimits
from domain.runs.recovery import recover
from domain.settings import Settings, get_settings
from api.deps import AppState, threads_for
from api.web import install_web_ui


def create_app(settings: Settings | None = None) -> FastAPI:
    state = AppState.from_settings(settings or get_settings())
    connection_secret(state.settings)  # unset: made in the data dir on first start (domain/connections/crypto.py)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Plain-def endpoints and dependencies run in AnyIO's default thread
        # pool: sized with the database pool, so that every request with a
        # database turn finds a thread (api/deps.py).
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads_for(state.settings)
        recovery = asyncio.create_task(_recovery_loop(state))
        freeze_startup_objects()  # the last step of start-up: garbage collections stay short
        yield
        recovery.cancel()
        with suppress(asyncio.CancelledError):
            await recovery
        state.streams.close()
        state.engine.dispose()

    app = FastAPI(title="tunehouse", version="0.1.0", lifespan=lifespan)
    app.state.tunehouse = state
    # Request limits (counted in Redis with a Redis broker, else in memory), read by api/deps.py.
    app.state.rate_limits = RateLimits.from_settings(state.settings)
    install_error_handlers(app)
    app.include_router(files_router)
    app.include_router(jobs_router)
    app.include_router(model_card_router)
    app.include_router(links_router)
    app.include_router(exports_router)
    app.include_router(sharing_router)  # before models_router: its {model_id:path} would take /shares
    app.include_router(models_router)
    app.include_router(evaluations_router)
    app.include_router(chat_router)
    app.include_router(batches_router)
    app.include_router(bundles_router)
    app.include_router(connections_router)
    app.include_router(moves_router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        try:
            with state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach the database means "not healthy"
            body = error_body(f"database unreachable: {type(exc).__name__}", "server_error", None, "database_unavailable")
            return JSONResponse(status_code=503, content=body)
        return JSONResponse({"status": "ok"})

    # GET /metrics (no key: aggregate numbers only) and request timing; before
    # the web UI's catch-all route.
    install_metrics(app, state.settings, state.sessionmaker)
    # Added last, so outermost: the request id is set for all the rest.
    app.add_middleware(RequestContextMiddleware)
    install_web_ui(app, state.settings.web_dist)
    return app


async def _recovery_loop(state: AppState) -> None:
    """Requeue leased work whose worker died (domain/runs/recovery.py)."""
    interval = min(15.0, state.settings.heartbeat_timeout / 2)
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(recover, state.sessionmaker, state.settings, state.queue)
            await asyncio.to_thread(sweep_streams, state.settings)
        except Exception:  # the database may be away for a moment; try next round
            logging.getLogger("tunehouse.recovery").exception("recovery pass failed")
