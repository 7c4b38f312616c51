"""The "Move from a provider" page, in headless Chromium against a real API
serving web/dist with a training and an inference worker: a second tunehouse
(tests/peer.py) plays the provider, with a fine-tune of its own, behind a
proxy that refuses files' content (as OpenAI does for fine-tune files). The
page plans (the job, its files needing an upload, the settings carried over
with their reasons), takes the user's local copies, moves, and once the new
job has trained compares the provider's fine-tune with it."""

import pytest
from playwright.sync_api import expect

from tests.api.moves.test_moves import TRAIN, VALIDATION, provider, refusing_proxy  # noqa: F401  (the provider fixture)
from tests.e2e import TINY
from tests.web.conftest import sign_in
from tests.web.test_connections_ui import ui_service
from tests.web.test_ui import JOB_TIMEOUT_MS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir, provider):  # noqa: F811
    peer, job, _, _ = provider
    tmp = tmp_path_factory.mktemp("ui-move")
    with ui_service("ui-move", tmp, {TINY: f"path:{tiny_model_dir}"}, max_completion_tokens=8) as (service, user), \
            refusing_proxy(peer.service.base_url) as proxy, service.client(user.key) as api:
        response = api.post("/v1/connections", json={"name": "provider", "base_url": f"{proxy}/v1", "api_key": peer.api_key})
        assert response.status_code == 200, response.text
        # The user's local copies, under the names they had at the provider.
        (tmp / "support-train.jsonl").write_bytes(TRAIN)
        (tmp / "support-valid.jsonl").write_bytes(VALIDATION)
        yield {"url": service.base_url, "key": user.key, "tmp": tmp, "provider_job": job}


def test_plan_upload_move_and_compare(page, site):
    job = site["provider_job"]
    sign_in(page, site)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Move from a provider").click()
    expect(page.get_by_test_id("move-connection")).to_have_value("provider")
    page.get_by_test_id("move-base-model").select_option(TINY)
    page.get_by_test_id("move-plan").click()

    planned = page.locator(f"[data-testid='plan-job'][data-job='{job['id']}']")
    expect(planned.get_by_test_id("plan-job-choose")).to_be_checked()
    # The provider refuses the files' content: both need the user's copy.
    expect(planned.locator("[data-testid='plan-file'][data-state='needs_upload']")).to_have_count(2)
    epochs = planned.locator("[data-testid='plan-mapping-row'][data-field='n_epochs']")
    expect(epochs.locator("td").nth(2)).to_have_text("1")
    expect(epochs.locator("td").nth(3)).not_to_be_empty()
    expect(page.get_by_test_id("move-submit")).to_be_disabled()

    for name in ("support-train.jsonl", "support-valid.jsonl"):
        page.get_by_label(f"Your copy of {name}").set_input_files(str(site["tmp"] / name))
        expect(page.get_by_label(f"Your copy of {name}")).to_have_count(0)  # taken: no longer asked for
    expect(page.get_by_test_id("move-nothing-to-upload")).to_be_visible()
    page.get_by_test_id("move-submit").click()
    created = page.get_by_test_id("move-created-job")
    expect(created).to_have_count(1)
    new_job = created.inner_text()

    moved = page.locator(f"[data-testid='moved-job'][data-job='{new_job}']")
    expect(moved).to_contain_text(job["id"])
    expect(moved.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    # The comparison chats with the provider's model through the same connection (the proxy refuses only files' content).
    moved.get_by_test_id("compare-moved").click()
    view = page.get_by_test_id("evaluation-view")
    expect(view.get_by_test_id("status-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    rows = view.get_by_test_id("metrics-table").locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text=f"conn:provider/{job['fine_tuned_model']}")).to_contain_text("external")
    # The provider's fine-tune answered every item through the connection.
    expect(view.get_by_test_id("item-row").first).to_be_visible()
    expect(view.get_by_test_id("item-output-error")).to_have_count(0)
