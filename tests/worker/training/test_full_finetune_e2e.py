"""A full fine-tune through the service: the API in this process, a real
`tunehouse worker` (which reports its device when it starts), the tiny Llama
trained whole on the CPU; then what can and cannot be done with it."""

import io
import json
import zipfile

import pytest
import torch

from tests.api.files.test_endpoints import upload
from tests.chat_data import batch_jsonl
from tests.conftest import wait_for
from tests.e2e import TINY, service_with_worker, start_job, tiny_chat_jsonl, wait_until_done

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def service(request, tmp_path_factory, tiny_model_dir):
    with service_with_worker(request, tmp_path_factory.mktemp("full"), "full",
                             base_models={TINY: f"path:{tiny_model_dir}"}, max_completion_tokens=16) as running:
        yield running


@pytest.fixture
def client(service):
    user = service.make_user("fuller")
    with service.client(user.key, follow_redirects=True) as http:
        yield http


def preview(client, file_id: str, **extra):
    return client.post("/v1/fine_tuning/jobs/preview", json={
        "model": TINY, "training_file": file_id, "hyperparameters": {"batch_size": 4, "extra": extra}})


def test_a_full_fine_tune_trains_every_weight_and_is_downloaded_whole(client, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The worker reported its device when it started: the preview judges the fit on it.
    file_id = upload(client, tiny_chat_jsonl()).json()["id"]
    answer = wait_for(lambda: (p := preview(client, file_id, adapter="full").json())["memory"]["devices"] and p,
                      120, "the worker's device report")
    memory = answer["memory"]
    assert memory["fits"] is True and memory["estimate"]["adapter"] == "full"
    assert memory["device"]["device"] == "cpu" and memory["device"]["total_memory_bytes"] > 0
    assert answer["hyperparameters"]["learning_rate"]["value"] == 2e-5

    job = wait_until_done(client, start_job(client, tiny_chat_jsonl(), n_epochs=1, batch_size=4,
                                            extra={"adapter": "full", "learning_rate": 1e-3})["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["evaluation_id"] is None  # not served here, so not evaluated automatically

    # Memory: measured per step, the run's peak and the estimate in the recipe.
    metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    assert all(row["peak_memory_bytes"] > 0 for row in metrics)
    recipe = client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe").json()
    assert recipe["method"]["adapter"] == "full" and recipe["method"]["optimizer"] == "adamw_torch"
    assert recipe["result"]["memory"]["peak_memory_bytes"] == max(row["peak_memory_bytes"] for row in metrics)
    assert recipe["memory"]["estimate"]["adapter"] == "full" and recipe["memory"]["estimate"]["peak_bytes"] > 0
    csv_header = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"format": "csv"}).text.splitlines()[0]
    assert "peak_memory_bytes" in csv_header.split(",")

    # No adapter: a 409 that says why and where the weights are.
    refused = client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "full_fine_tune_has_no_adapter"
    assert f"/v1/fine_tuning/jobs/{job['id']}/merged" in refused.json()["error"]["message"]

    # The merged-weights download is the whole trained model, ready at once.
    merged = client.get(f"/v1/fine_tuning/jobs/{job['id']}/merged")
    assert merged.status_code == 200
    zipfile.ZipFile(io.BytesIO(merged.content)).extractall(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tmp_path / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, base.model.layers[0].input_layernorm.weight)

    # Chat and evaluations refuse it clearly; it is listed as a model.
    chat = client.post("/v1/chat/completions", json={
        "model": job["fine_tuned_model"], "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "model_not_supported"
    assert job["fine_tuned_model"] in [m["id"] for m in client.get("/v1/models").json()["data"]]
    # A batch line asking for it goes to the error file with the same answer; the batch completes.
    batch_file = upload(client, batch_jsonl(1, model=job["fine_tuned_model"]), purpose="batch").json()["id"]
    batch = client.post("/v1/batches", json={"input_file_id": batch_file, "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"}).json()
    done = wait_for(lambda: (b := client.get(f"/v1/batches/{batch['id']}").json())["status"]
                    in ("completed", "failed") and b, 120, "the batch to finish")
    assert done["status"] == "completed", done
    assert done["request_counts"]["failed"] == 1, done
    [line] = [json.loads(text) for text in client.get(f"/v1/files/{done['error_file_id']}/content").text.splitlines()]
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["code"] == "model_not_supported"


def test_full_fine_tuning_that_does_not_fit_is_refused_before_it_runs(service, client):
    from domain.workers.models import WorkerDevice

    file_id = upload(client, tiny_chat_jsonl()).json()["id"]
    wait_for(lambda: preview(client, file_id).json()["memory"]["devices"], 120, "the worker's device report")
    jobs_before = client.get("/v1/fine_tuning/jobs").json()["data"]
    with service.state.sessionmaker() as session:
        rows = session.query(WorkerDevice).all()
        saved = {row.worker: row.total_memory_bytes for row in rows}
        for row in rows:
            row.total_memory_bytes = 64 * 2**20  # 64 MiB: less than any training process
        session.commit()
    try:
        for path in ("/v1/fine_tuning/jobs/preview", "/v1/fine_tuning/jobs"):
            response = client.post(path, json={"model": TINY, "training_file": file_id,
                                               "hyperparameters": {"extra": {"adapter": "full"}}})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "insufficient_memory" and error["param"] == "hyperparameters.extra.adapter"
            assert "64 MiB" in error["message"]
        lora = preview(client, file_id, adapter="lora")  # told, not refused
        assert lora.status_code == 200 and lora.json()["memory"]["fits"] is False
        assert client.get("/v1/fine_tuning/jobs").json()["data"] == jobs_before  # nothing created
    finally:
        with service.state.sessionmaker() as session:
            for row in session.query(WorkerDevice).all():
                row.total_memory_bytes = saved.get(row.worker, row.total_memory_bytes)
            session.commit()
