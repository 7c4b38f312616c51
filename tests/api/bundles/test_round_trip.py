"""The bundle end to end: a tiny Llama trained in one deployment (embedded
parts), its bundle downloaded, imported into a second deployment (each
backend in turn) through the API and through `tunehouse import`, answering
chat there exactly as at home; and re-run offline from the bundle to the
same losses."""

import io
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from domain.bundles import format as fmt
from tests.conftest import wait_for
from tests.e2e import JOB_TIMEOUT, TINY, start_job, tiny_chat_jsonl, tiny_service_with_worker, wait_until_done

pytestmark = pytest.mark.slow

DATA = tiny_chat_jsonl()
PROMPT = [{"role": "user", "content": "What sound does a cow make?"}]


@pytest.fixture(scope="module", params=["sqlite-local"])
def source(request, tmp_path_factory, tiny_model_dir):
    with tiny_service_with_worker(request, tmp_path_factory, tiny_model_dir, "bundle-source", smollm2=False) as running:
        yield running


@pytest.fixture(scope="module")
def home(source):
    user = source.make_user("lab-a")
    with source.client(user.key, follow_redirects=True) as client:
        yield client


@pytest.fixture(scope="module")
def trained(home) -> dict:
    # A high rate, so the adapter moves the tiny model's answers away from the base's.
    job = start_job(home, DATA, n_epochs=2, batch_size=4, extra={"learning_rate": 1e-2})
    job = wait_until_done(home, job["id"])
    assert job["status"] == "succeeded", job["error"]

    def evaluated():
        evaluation = home.get(f"/v1/evaluations/{job['evaluation_id']}").json()
        return evaluation if evaluation["status"] in ("succeeded", "failed", "cancelled") else None

    job["evaluation"] = wait_for(evaluated, JOB_TIMEOUT, "the automatic evaluation", interval=0.5)
    assert job["evaluation"]["status"] == "succeeded"
    job["bundle"] = home.get(f"/v1/fine_tuning/jobs/{job['id']}/bundle", params={"include_data": "true"}).content
    return job


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def target(request, tmp_path_factory, tiny_model_dir):
    with tiny_service_with_worker(request, tmp_path_factory, tiny_model_dir, "bundle-target", smollm2=False) as running:
        yield running


def greedy_answer(client, model: str) -> str:
    response = client.post("/v1/chat/completions", json={"model": model, "messages": PROMPT, "max_tokens": 12,
                                                          "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_the_bundle_holds_the_job_and_sha256sum_checks_it(home, trained, tmp_path):
    archive = zipfile.ZipFile(io.BytesIO(trained["bundle"]))
    names = archive.namelist()
    assert names[-1] == fmt.SUMS and len(names) == len(set(names))
    assert {fmt.MANIFEST, "adapter/adapter_config.json", "adapter/adapter_model.safetensors", fmt.RECIPE_JSON,
            fmt.RECIPE_YAML, "README.md", "training_curves.png", fmt.METRICS_CSV, fmt.EVENTS_JSONL,
            fmt.EVALUATION_METRICS, fmt.PREDICTIONS_JSONL, fmt.PREDICTIONS_CSV, fmt.report_member("training"),
            fmt.TRAINING_DATA} <= set(names)
    # `sha256sum -c` checks the unpacked bundle: every other member, listed once.
    archive.extractall(tmp_path)
    check = subprocess.run(["sha256sum", "--strict", "-c", fmt.SUMS], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(line.split("  ", 1)[1] for line in archive.read(fmt.SUMS).decode().splitlines()) == sorted(names[:-1])

    job_id = trained["id"]
    manifest = json.loads(archive.read(fmt.MANIFEST))
    assert (manifest["fine_tuning_job"], manifest["fine_tuned_model"], manifest["base_model"]) == (
        job_id, trained["fine_tuned_model"], TINY)
    assert manifest["lineage"] == [TINY] and manifest["weights"] == "adapter" and manifest["includes_data"]
    assert json.loads(archive.read(fmt.RECIPE_JSON)) == home.get(f"/v1/fine_tuning/jobs/{job_id}/recipe").json()
    assert archive.read(fmt.METRICS_CSV).decode() == home.get(f"/v1/fine_tuning/jobs/{job_id}/metrics",
                                                             params={"format": "csv"}).text
    events = [json.loads(line) for line in archive.read(fmt.EVENTS_JSONL).splitlines()]
    listed = home.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert [event["id"] for event in events] == [event["id"] for event in reversed(listed)]
    evaluation = json.loads(archive.read(fmt.EVALUATION_METRICS))
    assert evaluation["results"] == trained["evaluation"]["results"] and evaluation["results"]
    assert archive.read(fmt.PREDICTIONS_JSONL) == home.get(f"/v1/evaluations/{evaluation['id']}/predictions").content
    report = json.loads(archive.read(fmt.report_member("training")))
    assert report["id"] == trained["training_file"] and report["report"]["split"]["train"] > 0
    assert archive.read(fmt.TRAINING_DATA) == DATA
    assert archive.read("README.md").startswith(b"---\n")  # the model card, front matter first

    without = zipfile.ZipFile(io.BytesIO(home.get(f"/v1/fine_tuning/jobs/{job_id}/bundle").content))
    assert fmt.TRAINING_DATA not in without.namelist() and fmt.report_member("training") in without.namelist()
    assert not json.loads(without.read(fmt.MANIFEST))["includes_data"]


def test_an_imported_bundle_answers_as_at_home_and_only_for_its_user(home, trained, target):
    user, other = target.make_user("lab-b"), target.make_user("lab-b-other")
    with target.client(user.key, follow_redirects=True) as client, target.client(other.key) as stranger:
        response = client.post("/v1/models/import", files={"file": ("bundle.zip", trained["bundle"], "application/zip")})
        assert response.status_code == 200, response.text
        imported = response.json()["id"]
        assert imported == f"ft:{TINY}:{user.name}:e2e:{response.json()['fine_tuning_job']}"
        assert imported in [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert imported not in [m["id"] for m in stranger.get("/v1/models").json()["data"]]
        assert stranger.post("/v1/chat/completions", json={"model": imported, "messages": PROMPT}).status_code == 404

        at_home = greedy_answer(home, trained["fine_tuned_model"])
        assert at_home != greedy_answer(home, TINY)  # the adapter matters to this answer
        assert greedy_answer(client, imported) == at_home

        # Evaluations take it too, on the data that came with it.
        job = client.get(f"/v1/fine_tuning/jobs/{response.json()['fine_tuning_job']}").json()
        evaluation = client.post("/v1/evaluations", json={"file_id": job["training_file"], "models": [imported],
                                                          "max_tokens": 4}).json()

        def finished():
            current = client.get(f"/v1/evaluations/{evaluation['id']}").json()
            return current if current["status"] in ("succeeded", "failed", "cancelled") else None

        done = wait_for(finished, JOB_TIMEOUT, "the evaluation of the imported model", interval=0.5)
        assert done["status"] == "succeeded", done["error"]
        assert set(trained["evaluation"]["metrics"]) <= set(done["results"][imported])


def test_tunehouse_import_registers_the_bundle_for_a_named_user(trained, target, tmp_path):
    user = target.make_user("lab-c")
    (tmp_path / "bundle.zip").write_bytes(trained["bundle"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")} | target.settings.as_env()
    result = subprocess.run([sys.executable, "-m", "api.cli", "import", str(tmp_path / "bundle.zip"), "--user", user.name],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with target.client(user.key) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    imported = [m for m in models.values() if m["kind"] == "fine-tune"]
    assert len(imported) == 1 and imported[0]["id"] in result.stdout

    missing = subprocess.run([sys.executable, "-m", "api.cli", "import", str(tmp_path / "bundle.zip"), "--user",
                              "nobody-here"], env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no user 'nobody-here'" in missing.stderr


def test_the_bundle_reruns_offline_to_the_same_losses(trained, tmp_path):
    (tmp_path / "bundle.zip").write_bytes(trained["bundle"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")}

    def rerun(bundle: str, out: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "train", "--bundle", str(tmp_path / bundle), "--out", str(tmp_path / out),
             "--device", "cpu", "--data-dir", str(tmp_path / "cli-data")],
            env=env, capture_output=True, text=True, timeout=300,
        )

    result = rerun("bundle.zip", "rerun")
    assert result.returncode == 0, result.stderr
    difference = re.search(r"largest loss difference from the bundle's metrics.csv: (\S+)", result.stdout)
    assert difference is not None, result.stdout
    assert float(difference[1]) == 0.0
    assert (tmp_path / "rerun" / "adapter" / "adapter_model.safetensors").is_file()

    # A bundle that does not match its SHA256SUMS is not run.
    tampered = zipfile.ZipFile(io.BytesIO(trained["bundle"]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in tampered.infolist():
            data = tampered.read(info)
            archive.writestr(info.filename, data.replace(b"2", b"3") if info.filename == fmt.RECIPE_YAML else data)
    (tmp_path / "tampered.zip").write_bytes(out.getvalue())
    refused = rerun("tampered.zip", "not-run")
    assert refused.returncode == 2 and "recipe.yaml" in refused.stderr and "SHA256SUMS" in refused.stderr
