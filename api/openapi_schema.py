"""Write the API's OpenAPI schema to a file, without starting a server.

    python -m api.openapi_schema web/openapi.json

The web UI's TypeScript types are generated from that file (`make web`), so a
change to the API that breaks the UI fails the UI's type check. Creating the
app connects to nothing; the data directory is a throwaway one. The output is
stable (sorted keys, fixed indentation) so that the committed copy diffs
cleanly and tests/web/test_openapi_schema.py can tell when it is stale.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def openapi_schema() -> dict[str, Any]:
    from api.app import create_app
    from domain.settings import Settings

    with tempfile.TemporaryDirectory(prefix="tunehouse-openapi-") as data_dir:
        return create_app(Settings(data_dir=Path(data_dir))).openapi()


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m api.openapi_schema OUTPUT.json", file=sys.stderr)
        return 2
    output = Path(args[0])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(openapi_schema()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
