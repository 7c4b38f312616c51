"""Memory in the UI, in headless Chromium against a real API serving web/dist
with a training and an inference worker (the tiny Llama): the New job form
shows the estimate and whether it fits the worker's device, and the job page
puts the measured peak per step beside the estimate."""

import pytest
from playwright.sync_api import expect

from tests.api.files.test_endpoints import upload
from tests.conftest import wait_for
from tests.e2e import TINY, tiny_chat_jsonl
from tests.web.conftest import sign_in
from tests.web.test_ui import JOB_TIMEOUT_MS, select_file, site  # noqa: F401  (the same site: API, web/dist, a training and an inference worker)

pytestmark = pytest.mark.slow


def test_the_new_job_form_and_the_job_page_show_memory(page, site, api):
    file_id = upload(api, tiny_chat_jsonl(), filename="memory.jsonl").json()["id"]
    # The training worker reports its device when it starts.
    wait_for(lambda: api.post("/v1/fine_tuning/jobs/preview", json={"model": TINY, "training_file": file_id})
             .json()["memory"]["devices"], 120, "the training worker's device report")

    sign_in(page, site)
    page.goto(site["url"] + "/jobs/new")
    select_file(page.get_by_test_id("training-file"), "memory.jsonl")
    page.get_by_test_id("base-model").select_option(TINY)
    page.get_by_test_id("advanced-hyperparameters").locator("summary").click()
    page.get_by_test_id("hp-adapter").select_option("full")
    estimate = page.get_by_test_id("hyperparameter-preview").get_by_test_id("memory-estimate")
    expect(estimate).to_have_attribute("data-fits", "true")
    expect(estimate).to_contain_text("fits")
    expect(estimate).to_contain_text("MiB")

    job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "seed": 1,
                                                 "hyperparameters": {"n_epochs": 1, "batch_size": 4}}).json()
    page.goto(f"{site['url']}/jobs/{job['id']}")
    expect(page.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    card = page.get_by_test_id("memory-card")
    expect(card.get_by_test_id("memory-summary")).to_contain_text("Measured peak")
    expect(card.get_by_test_id("memory-summary")).to_contain_text("estimate / measured")
    expect(card.get_by_test_id("memory-chart").locator("svg .recharts-line").first).to_be_visible()


def test_a_full_fine_tune_s_page_offers_the_model_not_an_adapter(page, site, api):
    file_id = upload(api, tiny_chat_jsonl(), filename="full.jsonl").json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "seed": 1, "hyperparameters": {
        "n_epochs": 1, "batch_size": 4, "extra": {"adapter": "full"}}}).json()
    sign_in(page, site)
    page.goto(f"{site['url']}/jobs/{job['id']}")
    expect(page.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_test_id("download-merged")).to_be_visible()
    expect(page.get_by_test_id("download-adapter")).to_have_count(0)
    expect(page.get_by_test_id("memory-card").get_by_test_id("memory-summary")).to_contain_text("Measured peak")
