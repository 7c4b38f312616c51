"""The UI's lists and actions that tests/web/test_ui.py does not walk through:
the shared paginated table ("Load more", delete), the models page, a batch
from creation to its output, cancelling a job, and polling that stops once
everything shown is final. Headless Chromium against a real API with an
inference worker (no training worker: the job stays queued until cancelled)."""

import json
import re

import pytest
from playwright.sync_api import expect

from domain.settings import Settings
from tests.conftest import running_service
from tests.web.conftest import REPO, sign_in
from tests.e2e import TINY, Workers, tiny_chat_jsonl

pytestmark = pytest.mark.slow

BATCH_TIMEOUT_MS = 180_000
PAGE_SIZE = 20  # web/src/queries.ts


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    if not (REPO / "web" / "dist" / "index.html").exists():
        pytest.fail("web/dist is not built: `make setup` builds it")
    tmp = tmp_path_factory.mktemp("ui-lists")
    settings = Settings(
        data_dir=tmp / "data",
        base_models={TINY: f"path:{tiny_model_dir}"},
        max_completion_tokens=4,
        inference_batch_size=8,
    )
    with running_service("ui-lists", settings) as service:
        workers = Workers(settings)
        workers.start("inference")
        try:
            user = service.make_user("browser-lists")
            with service.client(user.key) as api:
                yield {"url": service.base_url, "key": user.key, "api": api}
        finally:
            workers.stop_all()


def upload(site, name: str, content: bytes, purpose: str = "fine-tune") -> dict:
    response = site["api"].post("/v1/files", data={"purpose": purpose}, files={"file": (name, content)})
    assert response.status_code == 200, response.text
    return response.json()


def api_requests(page, path: str) -> list[str]:
    """The GETs of `path` (and its pages) that the page makes from now on."""
    seen: list[str] = []
    pattern = re.compile(rf"{re.escape(path)}(\?|$)")
    page.on("request", lambda request: seen.append(request.url) if request.method == "GET" and pattern.search(request.url) else None)
    return seen


def test_the_files_table_loads_more_and_deletes(page, site):
    for i in range(PAGE_SIZE + 2):
        upload(site, f"set-{i:02d}.jsonl", tiny_chat_jsonl(12))
    sign_in(page, site)
    page.goto(site["url"] + "/datasets")
    rows = page.get_by_test_id("files-table").get_by_test_id("file-row")
    expect(rows).to_have_count(PAGE_SIZE)
    page.get_by_test_id("load-more").click()
    expect(rows).to_have_count(PAGE_SIZE + 2)
    expect(page.get_by_test_id("load-more")).to_have_count(0)
    # The newest file is first; its report opens from the row.
    expect(rows.first).to_contain_text(f"set-{PAGE_SIZE + 1:02d}.jsonl")
    rows.first.get_by_role("button", name="Report").click()
    expect(page.get_by_test_id("file-report")).to_contain_text(f"set-{PAGE_SIZE + 1:02d}.jsonl")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete set-00.jsonl").click()
    expect(rows).to_have_count(PAGE_SIZE + 1)
    expect(page.get_by_test_id("files-table")).not_to_contain_text("set-00.jsonl")
    page.reload()
    expect(rows).to_have_count(PAGE_SIZE)
    expect(page.get_by_test_id("load-more")).to_be_visible()


def test_the_models_page_lists_base_models_and_no_fine_tunes_yet(page, site):
    sign_in(page, site)
    page.goto(site["url"] + "/models")
    expect(page.get_by_test_id("base-models")).to_contain_text(TINY)
    expect(page.get_by_text("No fine-tuned models yet.")).to_be_visible()
    expect(page.get_by_test_id("fine-tunes-table")).to_have_count(0)


def test_a_batch_runs_to_its_output_and_polling_stops(page, site):
    lines = [
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": TINY, "messages": [{"role": "user", "content": f"Hi {i}"}], "max_tokens": 2}}
        for i in range(3)
    ]
    upload(site, "requests.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode(), purpose="batch")
    sign_in(page, site)
    page.goto(site["url"] + "/batches")
    select = page.get_by_test_id("batch-file")
    expect(select.locator("option", has_text="requests.jsonl")).to_be_attached()
    page.get_by_test_id("create-batch").click()
    row = page.get_by_test_id("batches-table").get_by_test_id("batch-row")
    expect(row).to_have_count(1)
    expect(row.get_by_test_id("status-chip")).to_have_text("completed", timeout=BATCH_TIMEOUT_MS)
    expect(row).to_contain_text("3 ok, 0 failed of 3")
    with page.expect_download() as download:
        row.get_by_role("button", name="Output").click()
    assert len(open(download.value.path(), "rb").read().splitlines()) == 3
    # Nothing is active any more: the list is not fetched again.
    polls = api_requests(page, "/v1/batches")
    page.wait_for_timeout(4500)
    assert polls == []


def test_a_queued_job_is_cancelled_from_its_page(page, site):
    training = upload(site, "train.jsonl", tiny_chat_jsonl(24))
    response = site["api"].post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training["id"]})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    sign_in(page, site)
    page.goto(site["url"] + "/jobs")
    job_row = page.get_by_test_id("jobs-table").get_by_test_id("job-row")
    expect(job_row).to_have_count(1)
    expect(job_row.get_by_test_id("status-chip")).not_to_have_text("cancelled")
    page.get_by_role("link", name=job_id).click()
    expect(page).to_have_url(re.compile(f"/jobs/{job_id}$"))
    page.get_by_test_id("cancel-job").click()
    expect(page.get_by_test_id("status-chip")).to_have_text("cancelled")
    expect(page.get_by_test_id("cancel-job")).to_have_count(0)
    # The list shows it too, and stops polling. The cancel marked the cached
    # list stale, so it is fetched once when it mounts: wait for that fetch
    # (which may start after the cached row already shows "cancelled").
    with page.expect_response(lambda r: r.request.method == "GET" and "/v1/fine_tuning/jobs?" in r.url):
        page.get_by_role("link", name="Jobs", exact=True).click()
    expect(job_row.get_by_test_id("status-chip")).to_have_text("cancelled")
    polls = api_requests(page, "/v1/fine_tuning/jobs")
    page.wait_for_timeout(4500)
    assert polls == []
