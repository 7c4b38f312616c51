"""Lineage end to end: the API in this process, a real `tunehouse worker`, the
tiny Llama trained on the CPU. A job's checkpoints are models that answer
chat and evaluations; a job whose base is a fine-tune trains on from that
fine-tune's adapter, records the chain in its recipe, and re-runs offline
given the parent's adapter."""

import io
import subprocess
import sys
import zipfile

import openai
import pytest

from tests.api.files.test_endpoints import upload
from tests.conftest import wait_for
from tests.e2e import JOB_TIMEOUT, TINY, tiny_chat_jsonl, tiny_service_with_worker, wait_until_done
from tests.worker.inference.test_chat_and_batch_e2e import batch_lines, read_jsonl, run_batch, wait_for_batch
from tests.worker.training.test_job_e2e import loss_curve

pytestmark = pytest.mark.slow

DATA = tiny_chat_jsonl()
# A high rate, so the parent's loss falls far in a few steps.
PARENT_HYPERPARAMETERS = {"n_epochs": 4, "batch_size": 4, "extra": {"learning_rate": 1e-2, "lora_r": 4}}


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def service(request, tmp_path_factory, tiny_model_dir):
    with tiny_service_with_worker(request, tmp_path_factory, tiny_model_dir, "lineage", smollm2=False) as running:
        yield running


@pytest.fixture(scope="module")
def lineage_user(service):
    return service.make_user("lineage")


@pytest.fixture(scope="module")
def owner(service, lineage_user):
    with service.client(lineage_user.key, follow_redirects=True) as http:
        yield http


@pytest.fixture(scope="module")
def sdk(service, lineage_user):
    return openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=lineage_user.key, max_retries=0)


@pytest.fixture(scope="module")
def parent(owner) -> dict:
    file_id = upload(owner, DATA).json()["id"]
    response = owner.post(
        "/v1/fine_tuning/jobs",
        json={"model": TINY, "training_file": file_id, "seed": 3, "suffix": "parent", "hyperparameters": PARENT_HYPERPARAMETERS},
    )
    assert response.status_code == 200, response.text
    job = wait_until_done(owner, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    job["file_id"] = file_id
    job["metrics"] = owner.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    return job


def create_child(owner, parent: dict, model: str, **hyperparameters):
    return owner.post(
        "/v1/fine_tuning/jobs",
        json={"model": model, "training_file": parent["file_id"], "seed": 3, "suffix": "child",
              "hyperparameters": {"n_epochs": 1, "batch_size": 4, **hyperparameters}},
    )


def test_a_checkpoint_model_answers_chat_and_batches_and_scores_apart_from_the_final_model(owner, sdk, parent):
    final = parent["fine_tuned_model"]
    steps = [c["step_number"] for c in owner.get(f"/v1/fine_tuning/jobs/{parent['id']}/checkpoints").json()["data"]]
    first = f"{final}:ckpt-step-{min(steps)}"  # the end of the first epoch
    models = {m["id"]: m for m in owner.get("/v1/models").json()["data"]}
    assert models[first]["kind"] == "checkpoint" and models[first]["fine_tuning_job"] == parent["id"]
    assert {f"{final}:ckpt-step-{step}" for step in steps} <= set(models)

    answer = owner.post("/v1/chat/completions", json={
        "model": first, "messages": [{"role": "user", "content": "What sound does a cat make?"}], "max_tokens": 8,
        "temperature": 0,
    })
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == first and answer.json()["usage"]["completion_tokens"] >= 1

    # In a batch, beside the final model and another checkpoint of the same job: each its own adapter.
    last = f"{final}:ckpt-step-{max(steps)}"
    lines = batch_lines(first)[:4] + batch_lines(last)[1:2] + batch_lines(final)[1:2]
    for index, line in enumerate(lines):
        line["custom_id"] = f"line-{index}"
    batch = wait_for_batch(sdk, run_batch(sdk, lines).id)
    assert batch.status == "completed" and batch.request_counts.failed == 0, batch.errors
    output = read_jsonl(sdk, batch.output_file_id)
    assert {record["response"]["body"]["model"] for record in output.values()} == {TINY, first, last, final}

    # On the held-out items the first checkpoint and the final model are different models.
    evaluation = owner.post("/v1/evaluations", json={"file_id": parent["file_id"], "models": [first, final], "max_tokens": 4})
    assert evaluation.status_code == 200, evaluation.text

    def evaluated():
        current = owner.get(f"/v1/evaluations/{evaluation.json()['id']}").json()
        return current if current["status"] in ("succeeded", "failed", "cancelled") else None

    results = wait_for(evaluated, JOB_TIMEOUT, "the evaluation", interval=0.5)
    assert results["status"] == "succeeded", results["error"]
    assert results["results"][first]["loss"] > results["results"][final]["loss"]  # trained on after that checkpoint


def test_a_fine_tune_of_a_fine_tune_trains_on_from_the_parents_adapter(owner, parent, tmp_path):
    refused = create_child(owner, parent, parent["fine_tuned_model"], extra={"lora_r": 8})
    assert refused.status_code == 400
    assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == (
        "hyperparameters.extra.lora_r", "invalid_hyperparameters"
    )
    assert create_child(owner, parent, parent["fine_tuned_model"] + "x").json()["error"]["code"] == "model_not_found"

    created = create_child(owner, parent, parent["fine_tuned_model"])
    assert created.status_code == 200, created.text
    assert created.json()["model"] == parent["fine_tuned_model"] and created.json()["base_model"] == TINY
    child = wait_until_done(owner, created.json()["id"])
    assert child["status"] == "succeeded", child["error"]
    assert child["parent"] == {"model": parent["fine_tuned_model"], "fine_tuning_job": parent["id"], "checkpoint_step": None}
    assert child["fine_tuned_model"].startswith(f"ft:{TINY}:")
    assert child["hyperparameter_details"]["lora_r"]["origin"] == "parent"
    assert child["hyperparameter_details"]["lora_r"]["value"] == 4

    # Its first step starts where the parent ended: the same first batch as the parent's first
    # step (same seed, same data), but a loss near the parent's last one, not its first.
    parent_first, parent_last = parent["metrics"][0]["train_loss"], parent["metrics"][-1]["train_loss"]
    assert parent_first - parent_last > 0.3  # ~10.77 -> ~10.28: well beyond the ~0.05 between batches
    metrics = owner.get(f"/v1/fine_tuning/jobs/{child['id']}/metrics").json()["data"]
    child_first = metrics[0]["train_loss"]
    assert abs(child_first - parent_last) < abs(child_first - parent_first)

    recipe = owner.get(f"/v1/fine_tuning/jobs/{child['id']}/recipe").json()
    assert recipe["lineage"] == [parent["fine_tuned_model"], TINY]
    assert recipe["parent"]["fine_tuning_job"] == parent["id"]
    assert recipe["parent"]["recipe"] == owner.get(f"/v1/fine_tuning/jobs/{parent['id']}/recipe").json()

    # A grandchild, from one of the child's checkpoints: the chain goes down to the base model.
    steps = [c["step_number"] for c in owner.get(f"/v1/fine_tuning/jobs/{child['id']}/checkpoints").json()["data"]]
    checkpoint = f"{child['fine_tuned_model']}:ckpt-step-{max(steps)}"
    grandchild = wait_until_done(owner, create_child(owner, parent, checkpoint).json()["id"])
    assert grandchild["status"] == "succeeded", grandchild["error"]
    assert grandchild["parent"]["checkpoint_step"] == max(steps)
    grand_recipe = owner.get(f"/v1/fine_tuning/jobs/{grandchild['id']}/recipe").json()
    assert grand_recipe["lineage"] == [checkpoint, parent["fine_tuned_model"], TINY]

    # `tunehouse train` re-runs the child from its recipe, given the parent's adapter: the same losses.
    (tmp_path / "recipe.yaml").write_text(owner.get(f"/v1/fine_tuning/jobs/{child['id']}/recipe", params={"format": "yaml"}).text)
    (tmp_path / "train.jsonl").write_bytes(DATA)
    zipfile.ZipFile(io.BytesIO(owner.get(f"/v1/fine_tuning/jobs/{parent['id']}/adapter").content)).extractall(tmp_path / "parent")
    command = [sys.executable, "-m", "api.cli", "train", "--recipe", str(tmp_path / "recipe.yaml"), "--data",
               str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "cli-data")]
    missing = subprocess.run(command, timeout=300, capture_output=True, text=True)
    assert missing.returncode == 2 and "--parent-adapter" in missing.stderr
    subprocess.run([*command, "--parent-adapter", str(tmp_path / "parent")], check=True, timeout=300, capture_output=True)
    offline = loss_curve((tmp_path / "out" / "metrics.csv").read_text())
    assert [row[0] for row in offline] == [row["step"] for row in metrics]
    assert [row[1] for row in offline] == pytest.approx([row["train_loss"] for row in metrics], rel=1e-4)


def test_another_users_fine_tune_cannot_be_a_base(service, parent):
    stranger = service.make_user("stranger")
    with service.client(stranger.key) as http:
        file_id = upload(http, DATA).json()["id"]
        response = http.post("/v1/fine_tuning/jobs", json={"model": parent["fine_tuned_model"], "training_file": file_id})
    assert response.status_code == 400 and response.json()["error"]["code"] == "model_not_found"
