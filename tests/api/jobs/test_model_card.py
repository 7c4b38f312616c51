"""The model card endpoints and the adapter download that carries the card
(both backends): the owner gets them once the job has succeeded, nobody else
ever."""

import io
import zipfile

from domain.jobs.model_card import CARD_NAME, CURVES_NAME
from tests.api.jobs.test_endpoints import create, training_file
from tests.domain.jobs.test_model_card import PNG_SIGNATURE, front_matter, recorded_job


def test_the_card_and_its_curves_are_served(service, alice, alice_user):
    job = recorded_job(service, alice_user)
    card = alice.get(f"/v1/fine_tuning/jobs/{job.id}/model_card")
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert front_matter(card.text)["library_name"] == "peft"
    assert "| n_epochs | 3 | auto |" in card.text
    png = alice.get(f"/v1/fine_tuning/jobs/{job.id}/model_card/training_curves.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_SIGNATURE)


def test_the_adapter_zip_carries_the_current_card(service, alice, alice_user):
    job = recorded_job(service, alice_user)
    response = alice.get(f"/v1/fine_tuning/jobs/{job.id}/adapter")
    assert response.status_code == 200
    assert f'filename="{job.id}-adapter.zip"' in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == sorted(["adapter_config.json", "adapter_model.safetensors", CARD_NAME, CURVES_NAME])
    assert archive.read(CARD_NAME).decode() == alice.get(f"/v1/fine_tuning/jobs/{job.id}/model_card").text
    assert archive.read(CURVES_NAME) == alice.get(f"/v1/fine_tuning/jobs/{job.id}/model_card/training_curves.png").content
    assert archive.read("adapter_model.safetensors") == b"weights" * 100


def test_no_card_before_the_job_succeeds_and_none_for_another_user(service, alice, bob, alice_user):
    queued = create(alice, training_file=training_file(alice)).json()["id"]
    for path in ("model_card", "model_card/training_curves.png"):
        refused = alice.get(f"/v1/fine_tuning/jobs/{queued}/{path}")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_card_not_ready"
    job = recorded_job(service, alice_user)
    for path in ("model_card", "model_card/training_curves.png", "adapter"):
        assert bob.get(f"/v1/fine_tuning/jobs/{job.id}/{path}").status_code == 404
