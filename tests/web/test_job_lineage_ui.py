"""The job page's lineage controls in headless Chromium, against a real API
serving web/dist, a training worker and an inference worker, the tiny Llama:
Pause then Resume a running job, and open one of its checkpoint models in the
playground."""

import re

import pytest
from playwright.sync_api import expect

from tests.api.files.test_endpoints import upload
from tests.e2e import TINY, tiny_chat_jsonl
from tests.web.conftest import sign_in
from tests.web.test_ui import JOB_TIMEOUT_MS, select_file, site  # noqa: F401  (the same site: API, web/dist, a training and an inference worker)

pytestmark = pytest.mark.slow


def test_pause_and_resume_a_running_job_then_open_a_checkpoint_in_the_playground(page, site, api):
    file_id = upload(api, tiny_chat_jsonl()).json()["id"]
    # Enough steps that the job still runs when the button is clicked.
    job = api.post(
        "/v1/fine_tuning/jobs",
        json={"model": TINY, "training_file": file_id, "seed": 1, "hyperparameters": {"n_epochs": 12, "batch_size": 1}},
    ).json()
    sign_in(page, site)
    page.goto(f"{site['url']}/jobs/{job['id']}")
    progress = page.locator(".muted.small", has_text=re.compile(r"step [1-9]\d* of \d+"))
    expect(progress.first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    page.get_by_test_id("pause-job").click()
    expect(page.get_by_test_id("status-chip")).to_have_text("paused", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_test_id("pause-job")).to_have_count(0)
    paused = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert paused["status"] == "paused" and paused["progress"]["checkpoint_step"] == paused["progress"]["step"]
    # The checkpoint saved at the pause is a model, listed with a link to the playground.
    step = paused["progress"]["step"]
    checkpoint = page.locator(f"[data-testid='checkpoint-model'][data-step='{step}']")
    expect(checkpoint).to_contain_text(f":ckpt-step-{step}")

    page.get_by_test_id("resume-job").click()
    expect(page.get_by_test_id("status-chip")).to_have_text(re.compile("queued|running|succeeded"))
    expect(page.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    messages = [e["message"] for e in api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]]
    assert f"Resumed from step {step}" in messages

    fine_tuned = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["fine_tuned_model"]
    model = f"{fine_tuned}:ckpt-step-{step}"
    page.locator(f"[data-testid='checkpoint-model'][data-step='{step}']").get_by_test_id("checkpoint-playground-link").click()
    expect(page).to_have_url(re.compile(r"/compare\?playground="))
    picker = page.get_by_test_id("playground-models")
    expect(picker.get_by_role("checkbox", name=model)).to_be_checked()
    page.get_by_test_id("playground-prompt").fill("What sound does a cow make?")
    page.get_by_label("max_tokens").fill("8")
    page.get_by_test_id("playground-send").click()
    answer = page.locator(f"[data-testid='playground-answer'][data-model='{model}']")
    expect(answer.locator(".pre")).to_be_attached(timeout=120_000)
    expect(answer.get_by_role("alert")).to_have_count(0)


def test_a_fine_tune_is_fine_tuned_further_from_its_job_page(page, site, api):
    file_id = upload(api, tiny_chat_jsonl(), filename="parent.jsonl").json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "hyperparameters": {"n_epochs": 1}}).json()
    sign_in(page, site)
    page.goto(f"{site['url']}/jobs/{job['id']}")
    expect(page.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    fine_tuned = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["fine_tuned_model"]
    page.get_by_test_id("fine-tune-further").click()
    expect(page).to_have_url(re.compile(r"/jobs/new\?model="))
    expect(page.get_by_test_id("base-model")).to_have_value(fine_tuned)
    select_file(page.get_by_test_id("training-file"), "parent.jsonl")
    page.get_by_test_id("hp-n_epochs").fill("1")
    page.get_by_test_id("create-job-submit").click()
    expect(page).to_have_url(re.compile(r"/jobs/ftjob-"))
    parent = page.get_by_test_id("job-parent")
    expect(parent).to_contain_text(fine_tuned)
    expect(parent.get_by_test_id("parent-job-link")).to_have_text(job["id"])
    expect(page.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    child = api.get(f"/v1/fine_tuning/jobs/{page.url.rsplit('/', 1)[-1]}").json()
    assert child["parent"]["fine_tuning_job"] == job["id"] and child["hyperparameter_details"]["lora_r"]["origin"] == "parent"
