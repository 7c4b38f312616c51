"""The FastAPI application: /v1 (OpenAI-compatible plus extensions), /healthz."""

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.errors import error_body, install_error_handlers
from api.files.endpoints import router as files_router
from api.settings import Settings, get_settings
from api.state import AppState


def create_app(settings: Settings | None = None) -> FastAPI:
    state = AppState.from_settings(settings or get_settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        state.engine.dispose()

    app = FastAPI(title="tunehouse", version="0.1.0", lifespan=lifespan)
    app.state.tunehouse = state
    # Kept on app.state too so request-scoped dependencies reach them directly.
    app.state.sessionmaker = state.sessionmaker
    install_error_handlers(app)
    app.include_router(files_router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        try:
            with state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach the database means "not healthy"
            body = error_body(f"database unreachable: {type(exc).__name__}", "server_error", None, "database_unavailable")
            return JSONResponse(status_code=503, content=body)
        return JSONResponse({"status": "ok"})

    return app
