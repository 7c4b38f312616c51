"""Fine-tuning end to end: the API in this process, real `tunehouse worker`
processes, a tiny Llama trained on the CPU. Runs on the embedded parts (SQLite,
filesystem broker, local storage) and on the production parts (PostgreSQL,
Redis, S3 over HTTP)."""

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import openai
import pytest
import yaml

from domain.settings import Settings
from tests.api.files.test_endpoints import upload
from tests.chat_data import preference_jsonl
from tests.conftest import (
    fresh_postgres_database,
    make_bucket,
    redis_db,
    running_service,
    seed_converted_smollm2,
    wait_for,
)
from tests.e2e import (
    BASE,
    BROKEN,
    HEARTBEAT_TIMEOUT,
    JOB_TIMEOUT,
    TINY,
    Workers,
    event_messages,
    start_job,
    tiny_chat_jsonl,
    wait_until_done,
)


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def training(request, tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp(f"training-{request.param}")
    common = dict(
        data_dir=tmp,
        base_models={BASE: "bundled:smollm2", TINY: f"path:{tiny_model_dir}", BROKEN: f"path:{tmp / 'no-such-model'}"},
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        # Each job's automatic evaluation generates up to this many tokens: keep it short.
        max_completion_tokens=16,
    )
    if request.param == "sqlite-local":
        settings = Settings(**common)
        with running_service(request.param, settings) as service:
            workers = Workers(settings)
            workers.start()
            yield service, workers
            workers.stop_all()
        return
    # SmolLM2 is trained on the embedded parts only (the SDK tests below): not
    # offered here, so this training worker reads no GGUF header as it starts.
    common["base_models"] = {TINY: f"path:{tiny_model_dir}", BROKEN: f"path:{tmp / 'no-such-model'}"}
    endpoint = request.getfixturevalue("s3_endpoint")
    with fresh_postgres_database("tunehouse_jobs") as database_url, redis_db("jobs") as broker_url:
        settings = Settings(
            **common,
            database_url=database_url,
            broker_url=broker_url,
            storage_url=f"s3://{make_bucket(endpoint)}/artifacts",
            s3_endpoint_url=endpoint,
        )
        with running_service(request.param, settings) as service:
            workers = Workers(settings)
            workers.start()
            yield service, workers
            workers.stop_all()


@pytest.fixture
def client(training):
    service, _ = training
    user = service.make_user("trainer")
    with service.client(user.key, follow_redirects=True) as http:
        yield http


def test_a_job_trains_and_publishes_everything(client, tiny_model_dir, tmp_path):
    job = start_job(client, tiny_chat_jsonl(), n_epochs=2, batch_size=4, extra={"checkpoint_interval": 3})
    job = wait_until_done(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] == f"ft:{TINY}:{job['organization_id']}:e2e:{job['id']}"
    assert job["trained_tokens"] > 0
    assert "auto" not in job["hyperparameters"].values()
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["batch_size"] == 4
    details = job["hyperparameter_details"]
    assert details["n_epochs"]["origin"] == "user" and details["max_seq_length"]["origin"] == "auto"
    assert details["max_seq_length"]["reason"]

    # Events: phases and one metrics event per step.
    messages = event_messages(client, job["id"])
    assert any(m.startswith("Attempt 1 started") for m in messages)
    assert messages[-1].startswith("Fine-tuning succeeded")
    metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    total = metrics[-1]["total_steps"]
    assert [row["step"] for row in metrics] == list(range(1, total + 1))
    assert {"train_loss", "learning_rate", "tokens_per_second", "epoch"} <= set(metrics[0])
    assert metrics[-1]["valid_loss"] is not None

    # Checkpoints every 3 steps and at each epoch end.
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    steps = sorted(c["step_number"] for c in checkpoints)
    assert 3 in steps and total in steps
    assert checkpoints[0]["fine_tuned_model_checkpoint"] == f"{job['fine_tuned_model']}:ckpt-step-{max(steps)}"

    # The result file is the metrics CSV.
    csv_text = client.get(f"/v1/files/{job['result_files'][0]}/content").text
    assert csv_text.splitlines()[0].startswith("step,epoch,train_loss")
    assert len(csv_text.splitlines()) == total + 1

    # The model is listed and retrievable.
    assert job["fine_tuned_model"] in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert client.get(f"/v1/models/{job['fine_tuned_model']}").json()["fine_tuning_job"] == job["id"]

    # The recipe holds everything, as JSON and as YAML.
    recipe = client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe").json()
    assert recipe["seed"] == {"value": 3, "origin": "user"}
    assert recipe["data"]["training_file"]["sha256"]
    assert recipe["base_model"]["revision"].startswith("local-sha256:")
    assert {"torch", "transformers", "peft", "python"} <= set(recipe["environment"])
    assert recipe["method"]["adapter"] == "lora"
    # The dtype the worker's probe chose: a hyperparameter with its reason, and in the method record.
    assert details["compute_dtype"]["origin"] == "auto" and "GFLOP/s" in details["compute_dtype"]["reason"]
    assert recipe["method"]["compute_dtype"] == job["hyperparameters"]["compute_dtype"]
    assert recipe["method"]["compute"]["fp32_gflops"] > 0 and recipe["method"]["compute"]["bf16_gflops"] > 0
    assert yaml.safe_load(client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe", params={"format": "yaml"}).text) == recipe

    # The adapter zip loads with PEFT and changes the base model's outputs.
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter").content))
    names = archive.namelist()
    assert {"adapter_config.json", "adapter_model.safetensors", "tunehouse_recipe.yaml", "README.md"} <= set(names)
    assert len(names) == len(set(names))
    archive.extractall(tmp_path / "adapter")
    assert_adapter_changes_outputs(tiny_model_dir, tmp_path / "adapter")


def test_a_dpo_job_created_with_the_openai_sdk_trains_on_preference_pairs(training, client, tmp_path):
    service, _ = training
    sdk = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=client.headers["authorization"].split()[-1],
                        max_retries=0)
    file = sdk.files.create(file=("pairs.jsonl", preference_jsonl(24)), purpose="fine-tune")
    created = sdk.fine_tuning.jobs.create(
        model=TINY, training_file=file.id, seed=3,
        method={"type": "dpo", "dpo": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "beta": 0.5, "extra": {"learning_rate": 2e-2, "eval_interval": 2}}}},
    )
    job = wait_until_done(client, created.id)
    assert job["status"] == "succeeded", job["error"]
    assert job["method"]["type"] == "dpo" and job["method"]["dpo"]["hyperparameters"]["beta"] == 0.5
    metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    assert [row["step"] for row in metrics] == list(range(1, len(metrics) + 1))
    assert {"train_chosen_reward", "train_rejected_reward", "train_reward_margin",
            "train_preference_accuracy"} <= set(metrics[0])
    evaluated = [row for row in metrics if row.get("valid_preference_accuracy") is not None]
    assert evaluated and evaluated[-1]["step"] == len(metrics)
    assert evaluated[-1]["valid_reward_margin"] > evaluated[0]["valid_reward_margin"] > 0
    header = client.get(f"/v1/files/{job['result_files'][0]}/content").text.splitlines()[0]
    assert "train_reward_margin" in header and "valid_preference_accuracy" in header
    recipe = client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe").json()
    assert recipe["training_method"] == "dpo" and recipe["method"]["training_method"] == "dpo"
    assert recipe["data"]["format"] == "preference"
    assert recipe["hyperparameters"]["beta"]["value"] == 0.5
    messages = event_messages(client, job["id"])
    assert "Computing the reference model's log-probabilities" in messages
    assert any("reward margin" in m for m in messages)

    # `tunehouse train` re-runs it from the recipe as DPO, to the same losses.
    (tmp_path / "recipe.yaml").write_text(client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe", params={"format": "yaml"}).text)
    (tmp_path / "pairs.jsonl").write_bytes(preference_jsonl(24))
    subprocess.run(
        [sys.executable, "-m", "api.cli", "train", "--recipe", str(tmp_path / "recipe.yaml"), "--data",
         str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "rerun"), "--data-dir", str(tmp_path / "cli-data")],
        check=True, timeout=300, capture_output=True,
    )
    rerun = list(csv.DictReader(io.StringIO((tmp_path / "rerun" / "metrics.csv").read_text())))
    assert [int(row["step"]) for row in rerun] == [row["step"] for row in metrics]
    for cli_row, service_row in zip(rerun, metrics):
        assert float(cli_row["train_loss"]) == pytest.approx(service_row["train_loss"], rel=1e-4)
        assert float(cli_row["train_reward_margin"]) == pytest.approx(service_row["train_reward_margin"], rel=1e-3, abs=1e-6)


def assert_adapter_changes_outputs(base_dir: Path, adapter_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    inputs = torch.tensor([[1, 2, 3, 4, 5]])
    base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    with torch.no_grad():
        before = base(inputs).logits
        tuned = PeftModel.from_pretrained(base, adapter_dir)
        after = tuned(inputs).logits
    assert not torch.allclose(before, after)


def test_a_dpo_job_continues_a_supervised_fine_tune_against_it_as_the_reference(client):
    """SFT, then DPO: the usual recipe. The reference is the fine-tune the job
    starts from, so the first step's loss is exactly DPO's log 2."""
    import math

    parent = wait_until_done(client, start_job(client, tiny_chat_jsonl(), n_epochs=1, batch_size=4)["id"])
    assert parent["status"] == "succeeded", parent["error"]
    pairs = upload(client, preference_jsonl(24)).json()["id"]
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": parent["fine_tuned_model"], "training_file": pairs, "seed": 3,
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "beta": 0.5}}},
    })
    assert response.status_code == 200, response.text
    job = wait_until_done(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["parent"]["model"] == parent["fine_tuned_model"] and job["method"]["type"] == "dpo"
    metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics[0]["train_reward_margin"] == pytest.approx(0, abs=1e-4)
    recipe = client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe").json()
    assert recipe["training_method"] == "dpo" and recipe["parent"]["recipe"]["training_method"] == "supervised"


def test_a_validation_file_replaces_the_test_split(client):
    train_id = upload(client, tiny_chat_jsonl(16)).json()["id"]
    validation_id = upload(client, tiny_chat_jsonl(10)).json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": TINY, "training_file": train_id, "validation_file": validation_id,
              "hyperparameters": {"n_epochs": 1, "batch_size": 8, "extra": {"compute_dtype": "bfloat16"}}},
    )
    job = wait_until_done(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    recipe = client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe").json()
    # A forced compute dtype is used whatever the probe found, and recorded as the user's.
    assert job["hyperparameter_details"]["compute_dtype"] == {"value": "bfloat16", "origin": "user", "reason": None}
    assert recipe["method"]["compute_dtype"] == "bfloat16" and recipe["method"]["autocast"] is True
    assert recipe["data"]["eval_source"] == "validation file" and recipe["data"]["eval_examples"] == 10
    assert recipe["data"]["validation_file"]["id"] == validation_id
    metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    assert metrics[-1]["valid_loss"] is not None


def test_a_model_that_cannot_load_fails_the_job_with_a_clear_error(client):
    file_id = upload(client, tiny_chat_jsonl()).json()["id"]
    job_id = client.post("/v1/fine_tuning/jobs", json={"model": BROKEN, "training_file": file_id}).json()["id"]
    job = wait_until_done(client, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "model_load_failed"
    assert "no-such-model" in job["error"]["message"] and "Traceback" not in job["error"]["message"]
    assert event_messages(client, job_id)[-1] == job["error"]["message"]


def test_merged_weights_are_made_on_request(client, tmp_path):
    job = wait_until_done(client, start_job(client, tiny_chat_jsonl(), n_epochs=1, batch_size=8)["id"])
    assert job["status"] == "succeeded"
    first = client.get(f"/v1/fine_tuning/jobs/{job['id']}/merged")
    assert first.status_code == 202
    assert first.json()["status"] in ("queued", "running")

    def ready():
        response = client.get(f"/v1/fine_tuning/jobs/{job['id']}/merged")
        return response if response.status_code == 200 else None

    merged = wait_for(ready, JOB_TIMEOUT, "merged weights")
    archive = zipfile.ZipFile(io.BytesIO(merged.content))
    names = archive.namelist()
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert not any(n.startswith("adapter_") for n in names)
    # With its model card, as the job's own card endpoint gives it.
    assert "training_curves.png" in names
    card = client.get(f"/v1/fine_tuning/jobs/{job['id']}/model_card")
    assert archive.read("README.md").decode() == card.text


def test_cancel_a_running_job_frees_the_worker(client):
    job = start_job(client, tiny_chat_jsonl(), n_epochs=100, batch_size=1)
    wait_for(lambda: (client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["progress"]["step"] or 0) >= 2, JOB_TIMEOUT, "training to start")
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    wait_for(lambda: any("stopped at step" in m for m in event_messages(client, job["id"])), 60, "the worker to stop")
    final = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert final["status"] == "cancelled" and final["fine_tuned_model"] is None
    # The worker is free again: the next job runs to the end.
    follow_up = wait_until_done(client, start_job(client, tiny_chat_jsonl(), n_epochs=1, batch_size=8)["id"])
    assert follow_up["status"] == "succeeded"


# On the production parts this is tests/production/test_faults.py's, with separate API and worker processes.
@pytest.mark.parametrize("training", ["sqlite-local"], indirect=True)
def test_a_killed_worker_is_replaced_and_the_job_resumes_from_its_checkpoint(training, client):
    _, workers = training
    job = start_job(client, tiny_chat_jsonl(), n_epochs=8, batch_size=2, extra={"checkpoint_interval": 4})

    def has_checkpoint():
        return client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]

    wait_for(has_checkpoint, JOB_TIMEOUT, "a first checkpoint")
    for process in list(workers.processes):
        if process.poll() is None:
            workers.kill(process)  # SIGKILL: no chance to clean up or give the job back
    workers.start()
    final = wait_until_done(client, job["id"])
    assert final["status"] == "succeeded", final["error"]
    assert final["progress"]["attempt"] == 2
    messages = event_messages(client, job["id"])
    assert any("stopped responding" in m and "requeued to resume from the checkpoint at step" in m for m in messages)
    assert any(m.startswith("Resumed from step") for m in messages)
    metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    assert [row["step"] for row in metrics] == list(range(1, metrics[-1]["total_steps"] + 1))


# The re-run reads only the downloaded files: one backend is enough.
@pytest.mark.parametrize("training", ["sqlite-local"], indirect=True)
def test_the_recipe_reruns_without_the_service(training, client, tmp_path):
    service, _ = training
    data = tiny_chat_jsonl()
    job = wait_until_done(client, start_job(client, data, n_epochs=1, batch_size=4)["id"])
    assert job["status"] == "succeeded"
    (tmp_path / "recipe.yaml").write_text(client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe", params={"format": "yaml"}).text)
    (tmp_path / "train.jsonl").write_bytes(data)
    curves = []
    for run in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "api.cli", "train", "--recipe", str(tmp_path / "recipe.yaml"),
             "--data", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / run), "--data-dir", str(tmp_path / "cli-data")],
            check=True, timeout=300, capture_output=True,
        )
        assert (tmp_path / run / "adapter" / "adapter_model.safetensors").exists()
        curves.append(loss_curve((tmp_path / run / "metrics.csv").read_text()))
    assert curves[0] == curves[1]  # same recipe, same seed: the same losses, exactly
    service_curve = [
        (row["step"], row["train_loss"], row["valid_loss"], row["learning_rate"])
        for row in client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    ]
    assert [step for step, *_ in curves[0]] == [step for step, *_ in service_curve]
    for cli_row, service_row in zip(curves[0], service_curve):
        assert cli_row[1:] == pytest.approx(service_row[1:], rel=1e-4)


def loss_curve(metrics_csv: str) -> list[tuple]:
    """(step, train_loss, valid_loss, learning_rate) per row; timings left out."""
    rows = []
    for row in csv.DictReader(io.StringIO(metrics_csv)):
        valid = float(row["valid_loss"]) if row["valid_loss"] else None
        rows.append((int(row["step"]), float(row["train_loss"]), valid, float(row["learning_rate"])))
    return rows


def sdk_job_finished(client, job_id: str, what: str):
    def finished():
        current = client.fine_tuning.jobs.retrieve(job_id)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, 600, what, interval=1.0)


@pytest.mark.parametrize("training", ["sqlite-local"], indirect=True)
def test_the_openai_sdk_fine_tunes_the_bundled_smollm2(training, converted_smollm2):
    import openai

    service, _ = training
    seed_converted_smollm2(converted_smollm2, service.settings)
    user = service.make_user("sdk")
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=user.key, max_retries=0)
    file = client.files.create(file=("animals.jsonl", tiny_chat_jsonl(12)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=file.id, suffix="animals", hyperparameters={"n_epochs": 1, "batch_size": 4}
    )

    job = sdk_job_finished(client, job.id, "the SmolLM2 job")
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{BASE}:{user.name}:animals:{job.id}"
    assert job.hyperparameters.n_epochs == 1 and job.trained_tokens > 0
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any(event.type == "metrics" and event.data["train_loss"] > 0 for event in events)
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    recipe = client.get(f"/fine_tuning/jobs/{job.id}/recipe", cast_to=object)
    assert recipe["base_model"]["revision"].startswith("gguf-sha256:")

    # The fine-tune answers through the SDK, whole and streamed alike.
    question = [{"role": "user", "content": "What sound does a cat make?"}]
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=question, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content and answer.usage.completion_tokens <= 8
    stream = client.chat.completions.create(
        model=job.fine_tuned_model, messages=question, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == answer.choices[0].message.content

    # Its automatic evaluation compares it with SmolLM2 on the held-out split.
    evaluation_id = client.fine_tuning.jobs.retrieve(job.id).model_extra["evaluation_id"]

    def evaluated():
        current = client.get(f"/evaluations/{evaluation_id}", cast_to=object)
        return current if current["status"] in ("succeeded", "failed", "cancelled") else None

    evaluation = wait_for(evaluated, 600, "the automatic evaluation", interval=1.0)
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert set(evaluation["results"]) == {BASE, job.fine_tuned_model}
    assert all(results["perplexity"] > 1 for results in evaluation["results"].values())


@pytest.mark.parametrize("training", ["sqlite-local"], indirect=True)
def test_the_openai_sdk_trains_smollm2_with_dpo(training, converted_smollm2):
    service, _ = training
    seed_converted_smollm2(converted_smollm2, service.settings)
    user = service.make_user("dpo-sdk")
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=user.key, max_retries=0)
    file = client.files.create(file=("pairs.jsonl", preference_jsonl(12)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=file.id, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )

    job = sdk_job_finished(client, job.id, "the SmolLM2 DPO job")
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    steps = [event.data for event in client.fine_tuning.jobs.list_events(job.id, limit=100) if event.type == "metrics"]
    assert steps and all(0 < step["train_loss"] < 1.5 for step in steps)
    assert all(0 <= step["train_preference_accuracy"] <= 1 for step in steps)
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "What is 3 + 1?"}], max_tokens=8, temperature=0,
    )
    assert answer.choices[0].message.content
