"""Connections in the UI, in headless Chromium against a real API serving
web/dist with a training and an inference worker (the tiny Llama), and a
second tunehouse instance (tests/peer.py) as the external endpoint: a refused
address is refused with the API's error, the peer is added (its key typed
once, never shown again), tested (its models and latency), its model is
compared with a local fine-tune in an evaluation (labelled external) and
asked in the playground, then the connection is removed."""

import re
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect

from domain.settings import Settings
from tests.api.files.test_endpoints import upload
from tests.conftest import running_service
from tests.e2e import TINY, Workers, tiny_chat_jsonl, wait_until_done
from tests.peer import running_peer
from tests.web.conftest import REPO, sign_in
from tests.web.test_ui import JOB_TIMEOUT_MS, select_file

pytestmark = pytest.mark.slow

EXTERNAL = f"conn:peer/{TINY}"


@contextmanager
def ui_service(name: str, tmp: Path, base_models: dict[str, str], queues=("default,train", "inference"), **settings_values):
    """The API serving web/dist, with a worker per entry of `queues` and a user: yields (service, user)."""
    if not (REPO / "web" / "dist" / "index.html").exists():
        pytest.fail("web/dist is not built: `make setup` builds it")
    settings = Settings(data_dir=tmp / "data", base_models=base_models, **settings_values)
    with running_service(name, settings) as service:
        workers = Workers(settings)
        try:
            for queue in queues:
                workers.start(queue)
            yield service, service.make_user("browser")
        finally:
            workers.stop_all()


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("ui-connections")
    with ui_service("ui-connections", tmp, {TINY: f"path:{tiny_model_dir}"}, max_completion_tokens=8) as (service, user), \
            service.client(user.key) as api:
        # The local fine-tune trains while the peer starts.
        file_id = upload(api, tiny_chat_jsonl(12), filename="sounds.jsonl").json()["id"]
        job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "seed": 1,
                                                     "hyperparameters": {"n_epochs": 1, "batch_size": 4}}).json()
        with running_peer(tmp, tiny_model_dir) as peer:
            done = wait_until_done(api, job["id"])
            assert done["status"] == "succeeded", done
            yield {"url": service.base_url, "key": user.key, "peer": peer, "fine_tune": done["fine_tuned_model"]}


def nav(page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()


def add_connection(page, name: str, base_url: str, key: str) -> None:
    page.get_by_test_id("connection-name").fill(name)
    page.get_by_test_id("connection-base-url").fill(base_url)
    page.get_by_test_id("connection-api-key").fill(key)
    page.get_by_test_id("add-connection-submit").click()


def test_add_test_and_compare_a_peer_model_with_a_local_fine_tune_then_remove_it(page, site, console_errors):
    console_errors.allow_status(400)  # the cloud-metadata address, refused on purpose
    peer = site["peer"]
    sign_in(page, site)
    nav(page, "Connections")
    expect(page.get_by_test_id("connections-table")).to_have_count(0)

    add_connection(page, "metadata", "http://169.254.169.254/v1", "sk-anything")
    expect(page.get_by_test_id("add-connection-error")).to_contain_text("refused")
    expect(page.get_by_test_id("connection-api-key")).to_have_value("")  # the key leaves the form either way

    add_connection(page, "peer", peer.base_url, peer.api_key)
    row = page.get_by_test_id("connection-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(peer.base_url)
    expect(page.get_by_test_id("connection-api-key")).to_have_value("")
    row.get_by_test_id("test-connection").click()
    result = row.get_by_test_id("connection-test-result")
    expect(result).to_have_attribute("data-ok", "true")
    expect(result).to_contain_text(re.compile(r"OK in \d+ ms: 1 model"))
    expect(result.get_by_test_id("connection-test-models")).to_have_text(TINY)
    assert peer.api_key not in page.content()

    # The peer's model beside the local ones, labelled external; an evaluation compares it with the fine-tune.
    nav(page, "Compare")
    select_file(page.get_by_test_id("eval-file"), "sounds.jsonl")
    picker = page.get_by_test_id("eval-models")
    external = picker.locator("label", has=page.get_by_role("checkbox", name=EXTERNAL, exact=True))
    expect(external.get_by_test_id("external-badge")).to_have_text("external")
    external.get_by_role("checkbox").check()
    picker.get_by_role("checkbox", name=site["fine_tune"], exact=True).check()
    page.get_by_test_id("eval-split").select_option("all")
    page.get_by_test_id("eval-limit").fill("2")
    expect(page.get_by_test_id("evaluation-estimate")).to_contain_text("2 items · 4 generation calls · 2 calls to external endpoints")
    page.get_by_test_id("run-evaluation").click()
    metrics = page.get_by_test_id("metrics-table")
    expect(metrics.locator("tbody tr")).to_have_count(2, timeout=JOB_TIMEOUT_MS)
    expect(metrics.locator("tbody tr", has_text=EXTERNAL)).to_contain_text("external")
    expect(page.get_by_test_id("evaluation-view").get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    items = page.get_by_test_id("items-table").get_by_test_id("item-row")
    expect(items).to_have_count(2)
    # The peer answered each item (its latency is recorded), no item failed.
    expect(items.first.locator(f"[data-testid='item-output'][data-model='{EXTERNAL}']")).to_contain_text(re.compile(r"\d+ ms"))
    expect(page.get_by_test_id("item-output-error")).to_have_count(0)

    # The playground asks it too.
    page.get_by_test_id("tab-playground").click()
    page.get_by_test_id("playground-prompt").fill("What sound does a cow make?")
    page.get_by_label("max_tokens").fill("4")
    page.get_by_test_id("playground-models").get_by_role("checkbox", name=EXTERNAL, exact=True).check()
    page.get_by_test_id("playground-send").click()
    answer = page.locator(f"[data-testid='playground-answer'][data-model='{EXTERNAL}']")
    expect(answer).to_contain_text(re.compile(r"\d s"))
    expect(answer.get_by_role("alert")).to_have_count(0)

    nav(page, "Connections")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Remove peer").click()
    expect(page.get_by_test_id("connection-row")).to_have_count(0)
