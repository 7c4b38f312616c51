"""The web UI: the files Vite built into web/dist, served at `/`.

Any GET path that is not an API route and not a built file gets index.html,
so the single-page app's own routes (/jobs/ftjob-…) survive a reload. Paths
under /v1 never fall back: an unknown API route stays a JSON 404. The API
never needs Node at run time; without a build, `/` says how to make one.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

DEFAULT_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"
# Vite puts a content hash in every asset's name: they may be cached for good.
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>tunehouse</title>
<p>The web UI is not built. Run <code>make setup</code> (it runs <code>npm ci</code> and
<code>npm run build</code> in <code>web/</code>), then reload. The API is at <a href="/docs">/docs</a>.</p>"""


def install_web_ui(app: FastAPI, dist: Path | None = None) -> None:
    """Register last: API routes match first."""
    root = (dist or DEFAULT_DIST).resolve()

    @app.get("/{path:path}", include_in_schema=False)
    def web_ui(path: str):
        if path == "v1" or path.startswith("v1/"):
            raise HTTPException(status_code=404, detail="Not Found")
        if path:
            candidate = (root / path).resolve()
            # resolve() folds any "..": only files inside the build are served.
            if candidate.is_relative_to(root) and candidate.is_file():
                headers = IMMUTABLE if candidate.parent.name == "assets" else None
                return FileResponse(candidate, headers=headers)
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, status_code=503)
        # Never cached: a new build must reach browsers at once.
        return FileResponse(index, headers={"Cache-Control": "no-cache"})
