"""The web UI end to end in headless Chromium: a real API serving web/dist,
a training worker and an inference worker, the tiny Llama. The tests run in
file order and build on each other's data (one user, one dataset, one job),
as a person would use the UI; each test still checks its own page."""

import io
import json
import re
import zipfile

import pytest
from playwright.sync_api import expect

from domain.settings import Settings
from tests.conftest import running_service
from tests.web.conftest import REPO, sign_in
from tests.e2e import TINY, Workers, tiny_chat_jsonl

pytestmark = pytest.mark.slow

JOB_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    if not (REPO / "web" / "dist" / "index.html").exists():
        pytest.fail("web/dist is not built: `make setup` builds it")
    tmp = tmp_path_factory.mktemp("ui")
    settings = Settings(
        data_dir=tmp / "data",
        base_models={TINY: f"path:{tiny_model_dir}"},
        max_completion_tokens=16,  # the random tiny model never stops on its own
        inference_batch_size=8,
    )
    with running_service("ui", settings) as service:
        workers = Workers(settings)
        workers.start("default,train")
        workers.start("inference")
        try:
            user = service.make_user("browser")
            yield {"url": service.base_url, "key": user.key, "tmp": tmp, "state": {}}
        finally:
            workers.stop_all()


def upload(page, site, name: str, content: bytes, purpose: str = "fine-tune") -> None:
    path = site["tmp"] / name
    path.write_bytes(content)
    page.goto(site["url"] + "/datasets")
    page.get_by_test_id("purpose-select").select_option(purpose)
    page.get_by_test_id("file-input").set_input_files(str(path))
    page.get_by_test_id("upload-submit").click()


def select_file(select, filename: str) -> None:
    option = select.locator("option", has_text=filename).first
    expect(option).to_be_attached()
    select.select_option(option.get_attribute("value"))


def test_a_wrong_key_is_refused_and_the_right_one_signs_in(page, site, console_errors):
    console_errors.allow_status(401)
    page.goto(site["url"] + "/")
    page.get_by_test_id("api-key-input").fill("sk-not-a-real-key")
    page.get_by_test_id("sign-in-submit").click()
    expect(page.get_by_test_id("sign-in-error")).to_contain_text("not accepted")
    page.get_by_test_id("api-key-input").fill(site["key"])
    page.get_by_test_id("sign-in-submit").click()
    expect(page.get_by_test_id("sign-out")).to_be_visible()
    # A reload keeps the session (the key is in local storage); signing out ends it.
    page.reload()
    expect(page.get_by_test_id("sign-out")).to_be_visible()
    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("api-key-input")).to_be_visible()


def test_a_bad_file_shows_every_bad_line(page, site, console_errors):
    console_errors.allow_status(400)
    sign_in(page, site)
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    bad = "\n".join([good, "{not json", good, json.dumps({"messages": [{"role": "wizard", "content": "x"}]})]) + "\n"
    upload(page, site, "bad.jsonl", bad.encode())
    expect(page.get_by_test_id("upload-error")).to_be_visible()
    lines = page.get_by_test_id("line-errors").locator("li")
    expect(lines).to_have_count(2)
    expect(lines.nth(0)).to_contain_text("2")
    expect(lines.nth(1)).to_contain_text("wizard")


def test_a_good_file_shows_its_report_and_preview(page, site):
    sign_in(page, site)
    upload(page, site, "animals.jsonl", tiny_chat_jsonl(24))
    expect(page.get_by_test_id("upload-success")).to_be_visible()
    report = page.get_by_test_id("file-report")
    expect(report).to_be_visible()
    expect(page.get_by_test_id("report-train-count")).to_contain_text(re.compile(r"\d"))
    expect(page.get_by_test_id("report-split-description")).not_to_be_empty()
    expect(page.get_by_test_id("report-preview")).to_contain_text("What sound does a")
    # The token-length histogram is drawn (one bar per non-empty length bucket).
    expect(page.get_by_test_id("report-tokens").locator(".recharts-bar-rectangle").first).to_be_visible()
    expect(page.get_by_test_id("files-table").get_by_test_id("file-row")).to_have_count(1)


def test_a_job_trains_with_live_curves_and_its_adapter_downloads(page, site):
    sign_in(page, site)
    page.goto(site["url"] + "/jobs/new")
    select_file(page.get_by_test_id("training-file"), "animals.jsonl")
    page.get_by_test_id("base-model").select_option(TINY)
    page.get_by_test_id("hp-n_epochs").fill("2")
    # Before anything is created, the form shows what every "auto" resolves to, and why.
    preview = page.get_by_test_id("hyperparameter-preview")
    expect(preview.locator("[data-name='n_epochs']")).to_contain_text("user")
    expect(preview.locator("[data-name='n_epochs'] td").nth(1)).to_have_text("2")
    expect(preview.locator("[data-name='batch_size']")).to_contain_text("auto")
    expect(preview.locator("[data-name='adapter']")).to_contain_text("lora")
    page.get_by_test_id("create-job-submit").click()
    expect(page).to_have_url(re.compile(r"/jobs/ftjob-"))
    site["state"]["job_id"] = page.url.rsplit("/", 1)[-1]
    # The page updates by itself: the curve appears while the job runs, then the status ends.
    expect(page.get_by_test_id("loss-chart").locator("svg .recharts-line").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_test_id("hyperparameters-table")).to_contain_text("n_epochs")
    with page.expect_download() as download:
        page.get_by_test_id("download-adapter").click()
    archive = zipfile.ZipFile(io.BytesIO(open(download.value.path(), "rb").read()))
    assert "adapter_model.safetensors" in archive.namelist()
    expect(page.get_by_test_id("evaluation-link")).to_be_visible()


def test_compare_base_and_fine_tune_on_the_test_split(page, site):
    sign_in(page, site)
    page.goto(site["url"] + "/compare")
    select_file(page.get_by_test_id("eval-file"), "animals.jsonl")
    picker = page.get_by_test_id("eval-models")
    for checkbox in picker.get_by_role("checkbox").all():
        checkbox.check()
    page.get_by_test_id("run-evaluation").click()
    table = page.get_by_test_id("metrics-table")
    expect(table).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("[data-best='true']").first).to_be_visible()
    items = page.get_by_test_id("items-table")
    expect(items.get_by_test_id("item-row").first).to_be_visible()
    # Each model's answer is marked as matching the reference or not.
    expect(items.locator("td.answer-matches, td.answer-differs").first).to_be_visible()


def test_the_playground_asks_several_models_at_once(page, site):
    sign_in(page, site)
    page.goto(site["url"] + "/compare")
    page.get_by_test_id("tab-playground").click()
    page.get_by_test_id("playground-prompt").fill("What sound does a cow make?")
    page.get_by_label("max_tokens").fill("8")
    for checkbox in page.get_by_test_id("playground-models").get_by_role("checkbox").all():
        checkbox.check()
    page.get_by_test_id("playground-send").click()
    answers = page.get_by_test_id("playground-answer")
    expect(answers).to_have_count(2)
    for index in range(2):
        # The random tiny model may answer only whitespace: an answer box (not
        # an error, not "Generating…") with its timing is what must appear.
        expect(answers.nth(index).locator(".pre")).to_be_attached(timeout=120_000)
        expect(answers.nth(index)).to_contain_text(re.compile(r"\d s"))
        expect(answers.nth(index).get_by_role("alert")).to_have_count(0)


def test_a_narrow_window_still_shows_the_navigation(page, site):
    page.set_viewport_size({"width": 420, "height": 900})
    sign_in(page, site)
    page.goto(site["url"] + "/jobs")
    expect(page.get_by_test_id("jobs-table").get_by_test_id("job-row")).to_have_count(1)
    expect(page.get_by_test_id("sign-out")).to_be_in_viewport()


def test_a_preference_file_trains_a_dpo_job_with_its_reward_charts(page, site):
    from tests.chat_data import preference_jsonl

    sign_in(page, site)
    upload(page, site, "pairs.jsonl", preference_jsonl(16))
    expect(page.get_by_test_id("upload-success")).to_be_visible()
    page.goto(site["url"] + "/jobs/new")
    select_file(page.get_by_test_id("training-file"), "pairs.jsonl")
    # The detected format picks the method; DPO's beta appears with it.
    expect(page.get_by_test_id("file-format")).to_contain_text("preference pairs")
    expect(page.get_by_test_id("method")).to_have_value("dpo")
    page.get_by_test_id("base-model").select_option(TINY)
    page.get_by_test_id("hp-beta").fill("0.5")
    page.get_by_test_id("hp-n_epochs").fill("1")
    preview = page.get_by_test_id("hyperparameter-preview")
    expect(preview.locator("[data-name='beta'] td").nth(1)).to_have_text("0.5")
    page.get_by_test_id("create-job-submit").click()
    expect(page).to_have_url(re.compile(r"/jobs/ftjob-"))
    expect(page.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_test_id("dpo-reward-chart").locator("svg .recharts-line").first).to_be_visible()
    expect(page.get_by_test_id("dpo-accuracy-chart").locator("svg .recharts-line").first).to_be_visible()
    expect(page.get_by_test_id("hyperparameters-table")).to_contain_text("beta")
