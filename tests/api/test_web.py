"""The built web UI served at / with the single-page app's fallback."""

import httpx
import pytest

from domain.settings import Settings
from tests.conftest import running_service


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    dist = tmp / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>tunehouse</title><div id=root></div>")
    (dist / "assets" / "app-1a2b.js").write_text("console.log('app')")
    (tmp / "secret.txt").write_text("not for the web")
    with running_service("web", Settings(data_dir=tmp / "data", web_dist=dist)) as service:
        with httpx.Client(base_url=service.base_url) as client:
            yield client


def test_the_app_is_served_at_the_root(site):
    response = site.get("/")
    assert response.status_code == 200 and "<div id=root>" in response.text
    assert response.headers["cache-control"] == "no-cache"


def test_the_apps_own_routes_fall_back_to_index(site):
    response = site.get("/jobs/ftjob-abc")
    assert response.status_code == 200 and "<div id=root>" in response.text


def test_hashed_assets_are_served_and_cached(site):
    response = site.get("/assets/app-1a2b.js")
    assert response.text == "console.log('app')"
    assert "immutable" in response.headers["cache-control"]


def test_unknown_api_routes_stay_json_404s(site):
    response = site.get("/v1/no-such-thing")
    assert response.status_code == 404
    assert "Unknown request URL" in response.json()["error"]["message"]


def test_api_routes_and_the_schema_still_answer(site):
    assert site.get("/healthz").json() == {"status": "ok"}
    assert site.get("/openapi.json").json()["info"]["title"] == "tunehouse"
    assert site.get("/v1/models").status_code == 401


def test_nothing_outside_the_build_is_served(site):
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/../../secret.txt"):
        assert "not for the web" not in site.get(path).text


def test_without_a_build_the_root_says_how_to_make_one(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", web_dist=tmp_path / "missing")
    with running_service("no-web", settings) as service, httpx.Client(base_url=service.base_url) as client:
        response = client.get("/")
    assert response.status_code == 503 and "make setup" in response.text
