"""A fine-tune's model page in headless Chromium, against a real API serving
web/dist and real workers training the tiny Llama: the model card rendered
(its heading, the hyperparameter table, the curves PNG fetched with the key),
and downloads through signed links that the browser saves itself: the
adapter zip carrying the card, and the merged weights after "preparing"."""

import io
import re
import zipfile

import pytest
from playwright.sync_api import expect

from tests.api.files.test_endpoints import upload
from tests.e2e import TINY, tiny_chat_jsonl, wait_until_done
from tests.web.conftest import sign_in
from tests.web.test_ui import site  # noqa: F401  (the same site: API, web/dist, a training and an inference worker)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def succeeded_job(site):  # noqa: F811
    import httpx

    with httpx.Client(base_url=site["url"], headers={"Authorization": f"Bearer {site['key']}"}, timeout=60) as api:
        file_id = upload(api, tiny_chat_jsonl()).json()["id"]
        job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "seed": 5, "suffix": "card",
                                                     "hyperparameters": {"n_epochs": 1, "batch_size": 4}}).json()
        done = wait_until_done(api, job["id"])
        assert done["status"] == "succeeded", done
        return done


def test_the_model_page_shows_the_card_and_downloads_through_signed_links(page, site, succeeded_job):  # noqa: F811
    sign_in(page, site)
    page.goto(site["url"] + "/models")
    page.get_by_test_id("model-page-link").filter(has_text=succeeded_job["id"]).click()
    expect(page).to_have_url(re.compile(rf"/models/{succeeded_job['id']}$"))
    expect(page.get_by_test_id("model-name")).to_have_text(succeeded_job["fine_tuned_model"])

    card = page.get_by_test_id("model-card")
    expect(card.get_by_role("heading", name="Hyperparameters")).to_be_visible()
    hyperparameters = card.locator("table", has=page.locator("th", has_text="origin"))
    expect(hyperparameters.locator("tr", has_text="n_epochs")).to_contain_text("user")
    expect(hyperparameters.locator("tr", has_text="batch_size")).to_contain_text("4")
    expect(page.get_by_test_id("model-card-meta")).to_contain_text("library_name: peft")
    # The curves: the card's own PNG, fetched with the key, decoded by the browser.
    image = page.get_by_test_id("model-card-image")
    expect(image).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("document.querySelector('[data-testid=model-card-image]').naturalWidth > 0")

    # The adapter through a signed link: the browser saves the answer itself.
    with page.expect_download() as download:
        page.get_by_test_id("export-adapter").click()
    assert re.search(r"/v1/downloads/[^/]+$", download.value.url)
    archive = zipfile.ZipFile(io.BytesIO(open(download.value.path(), "rb").read()))
    assert {"README.md", "training_curves.png", "adapter_model.safetensors"} <= set(archive.namelist())
    assert archive.read("README.md").decode().startswith("---\nbase_model: " + TINY)

    # Merged weights: "preparing" while a worker merges, then the download starts by itself.
    with page.expect_download(timeout=180_000) as merged:
        page.get_by_test_id("export-merged").click()
        expect(page.get_by_test_id("export-merged-state")).to_contain_text("Preparing")
    assert merged.value.suggested_filename == f"{succeeded_job['id']}-merged.zip"
    assert "model.safetensors" in zipfile.ZipFile(merged.value.path()).namelist()
