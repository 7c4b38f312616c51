"""Judges and error analysis in the UI, in headless Chromium against a real
API serving web/dist with an inference worker and two tiny Llamas (no
training): the New-evaluation form's pairwise judge with its estimate, the
ratings leaderboard and the pairwise table (a deterministic judge through a connection), the tag chips and filters, a
user's own tag on an item, and the filtered items' download."""

import re

import pytest
from playwright.sync_api import expect

from tests.api.files.test_endpoints import upload
from tests.e2e import TINY, tiny_chat_jsonl
from tests.web.conftest import sign_in
from tests.web.test_connections_ui import ui_service
from tests.web.test_ui import JOB_TIMEOUT_MS, select_file
from tests.worker.evaluation.judge_server import MODEL as REFEREE
from tests.worker.evaluation.judge_server import running_judge

pytestmark = pytest.mark.slow

OTHER = "tiny-llama-b"
JUDGE = f"conn:judge/{REFEREE}"  # a deterministic judge (a tiny random model's judgments are unreadable)


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir, smollm2_tokenizer_dir):
    from tests.tiny_model import build_tiny_llama

    tmp = tmp_path_factory.mktemp("ui-analysis")
    other = build_tiny_llama(tmp / "other", smollm2_tokenizer_dir, seed=1)
    models = {TINY: f"path:{tiny_model_dir}", OTHER: f"path:{other}"}
    # max_completion_tokens: the random models never stop, every answer is cut off.
    with ui_service("ui-analysis", tmp, models, queues=["inference,default"], max_completion_tokens=6) as (service, user), \
            running_judge() as judge, service.client(user.key) as api:
        upload(api, tiny_chat_jsonl(12), filename="judged.jsonl")
        response = api.post("/v1/connections", json={"name": "judge", "base_url": judge["base_url"], "api_key": judge["api_key"]})
        assert response.status_code == 200, response.text
        yield {"url": service.base_url, "key": user.key}


def test_a_pairwise_judge_rates_the_models_and_the_items_are_tagged_filtered_and_downloaded(page, site):
    sign_in(page, site)
    page.goto(site["url"] + "/compare")
    select_file(page.get_by_test_id("eval-file"), "judged.jsonl")
    picker = page.get_by_test_id("eval-models")
    picker.get_by_role("checkbox", name=TINY, exact=True).check()
    picker.get_by_role("checkbox", name=OTHER, exact=True).check()
    page.get_by_test_id("eval-split").select_option("all")
    page.get_by_test_id("eval-limit").fill("2")
    estimate = page.get_by_test_id("evaluation-estimate")
    expect(estimate).to_have_text("Estimated: 2 items · 4 generation calls")
    page.get_by_test_id("judge-pairwise").check()
    page.get_by_test_id("judge-model").select_option(JUDGE)
    # Both orders of the one pair, per item: 4 judge calls, shown before the run.
    expect(estimate).to_contain_text(re.compile(r"4 judge calls \(~[\d,]+ judge prompt tokens\) · 4 calls to external endpoints"))
    page.get_by_test_id("run-evaluation").click()

    expect(page.get_by_test_id("evaluation-view").get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_test_id("evaluation-judges")).to_have_text(f"Judges: pairwise by {JUDGE}")
    ratings = page.get_by_test_id("ratings-table").get_by_test_id("rating-row")
    expect(ratings).to_have_count(2)
    expect(ratings.first.locator("td").nth(3)).to_have_text(re.compile(r"^\d+–\d+$"))
    expect(page.get_by_test_id("pairwise-table").get_by_test_id("pairwise-row")).to_have_count(1)

    # Every answer is cut off at max_tokens: the chip counts both items, and picking it filters by it.
    tags = page.locator(f"[data-testid='model-tags'][data-model='{TINY}']")
    cut_off = tags.locator("[data-testid='tag-chip'][data-tag='cut_off']")
    expect(cut_off).to_contain_text("2")
    cut_off.click()
    expect(page.get_by_test_id("filter-tag")).to_have_value("cut_off")
    expect(page.get_by_test_id("filter-model")).to_have_value(TINY)
    rows = page.get_by_test_id("items-table").get_by_test_id("item-row")
    expect(rows).to_have_count(2)

    # A tag of the user's own on one output: shown, counted, and a filter of its own.
    first = rows.first.locator(f"[data-testid='item-output'][data-model='{OTHER}']")
    first.get_by_test_id("edit-user-tags").click()
    first.get_by_test_id("user-tags-input").fill("Wrong sound")
    first.get_by_test_id("save-user-tags").click()
    expect(first.get_by_test_id("user-tag")).to_have_text("wrong-sound")
    page.get_by_test_id("filter-model").select_option(OTHER)
    page.get_by_test_id("filter-tag").select_option("wrong-sound")
    expect(rows).to_have_count(1)

    with page.expect_download() as download:
        page.get_by_test_id("download-items-jsonl").click()
    lines = open(download.value.path()).read().splitlines()
    assert len(lines) == 1 and "wrong-sound" in lines[0]
