"""web/openapi.json is the API's OpenAPI schema that the UI's TypeScript types
are generated from (`npm run build` runs openapi-typescript on it, then tsc).
It is committed so that the UI builds where there is no Python (the Docker
`web` stage); `make web` rewrites it before every build. This test fails when
the committed copy no longer matches the API."""

import json

from api.openapi_schema import main, openapi_schema, render
from tests.web.conftest import REPO

COMMITTED = REPO / "web" / "openapi.json"


def test_the_committed_schema_is_the_apis():
    assert COMMITTED.exists(), "web/openapi.json is missing: run `make web`"
    assert COMMITTED.read_text(encoding="utf-8") == render(openapi_schema()), (
        "web/openapi.json is stale: run `make web` (or `.venv/bin/python -m api.openapi_schema "
        "web/openapi.json`), check that the UI still builds, and commit it"
    )


def test_the_module_writes_the_schema_to_the_given_path(tmp_path):
    out = tmp_path / "nested" / "openapi.json"
    assert main([str(out)]) == 0
    schema = json.loads(out.read_text(encoding="utf-8"))
    assert schema["openapi"].startswith("3.")
    assert {"JobObject", "FileObject", "ListPage_JobObject_"} <= set(schema["components"]["schemas"])
    assert main([]) == 2
