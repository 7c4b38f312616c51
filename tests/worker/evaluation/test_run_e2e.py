"""Evaluations end to end: the API in this process, a training worker and an
inference worker as real `tunehouse worker` processes, a tiny Llama trained
on the CPU, then the base model and the fine-tune compared on held-out items.
Runs on the embedded parts (SQLite, filesystem broker, local storage) and on
the production parts (PostgreSQL, Redis, S3 over HTTP)."""

import csv
import io
import json

import pytest

from domain.evaluations.schemas import TEXT_METRICS, item_columns
from domain.settings import Settings
from tests.api.files.test_endpoints import upload
from tests.conftest import fresh_postgres_database, make_bucket, redis_db, running_service, wait_for
from tests.e2e import Workers, tiny_chat_jsonl

TINY = "tiny-llama"
HEARTBEAT_TIMEOUT = 3.0
TIMEOUT = 180
# Caps the automatic evaluation's max_tokens: a random tiny model never stops on its own.
MAX_TOKENS = 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def evaluating(request, tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp(f"evaluations-{request.param}")
    common = dict(
        data_dir=tmp,
        base_models={TINY: f"path:{tiny_model_dir}"},
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        inference_batch_size=4,
        max_completion_tokens=MAX_TOKENS,
    )

    def run(settings: Settings):
        with running_service(request.param, settings) as service:
            workers = Workers(settings)
            workers.start("default,train")
            inference = workers.start("inference")
            try:
                yield service, workers, inference
            finally:
                workers.stop_all()

    if request.param == "sqlite-local":
        yield from run(Settings(**common))
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    with fresh_postgres_database("tunehouse_evals") as database_url, redis_db("worker") as broker_url:
        yield from run(
            Settings(
                **common,
                database_url=database_url,
                broker_url=broker_url,
                storage_url=f"s3://{make_bucket(endpoint)}/artifacts",
                s3_endpoint_url=endpoint,
            )
        )


@pytest.fixture(scope="module")
def trained(evaluating):
    """One user and one fine-tune of the tiny model, shared by the module."""
    service, _, _ = evaluating
    user = service.make_user("evaluator")
    with service.client(user.key, follow_redirects=True) as client:
        file = upload(client, tiny_chat_jsonl(24)).json()
        response = client.post(
            "/v1/fine_tuning/jobs",
            json={"model": TINY, "training_file": file["id"], "seed": 5, "suffix": "ev",
                  "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 4}},
        )
        assert response.status_code == 200, response.text
        job = wait_for_status(client, f"/v1/fine_tuning/jobs/{response.json()['id']}")
        assert job["status"] == "succeeded", job["error"]
        yield client, job, file


def wait_for_status(client, path: str, timeout: float = TIMEOUT) -> dict:
    def finished():
        body = client.get(path).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, timeout, f"{path} to finish", interval=0.2)


def evaluation_file(client) -> tuple[str, list[dict]]:
    """20 items and one example that does not end with an assistant answer."""
    examples = [json.loads(line) for line in tiny_chat_jsonl(20).decode().splitlines()]
    unanswered = {"messages": [*examples[0]["messages"], {"role": "user", "content": "And a fox?"}]}
    content = "".join(json.dumps(example) + "\n" for example in [*examples[:7], unanswered, *examples[7:]])
    response = upload(client, content.encode())
    assert response.status_code == 200, response.text
    return response.json()["id"], examples


def predictions(client, evaluation_id: str) -> tuple[list[dict], list[dict], list[str]]:
    jsonl = client.get(f"/v1/evaluations/{evaluation_id}/predictions")
    assert jsonl.status_code == 200, jsonl.text
    assert f"{evaluation_id}-predictions.jsonl" in jsonl.headers["content-disposition"]
    rows = [json.loads(line) for line in jsonl.text.splitlines()]
    table = client.get(f"/v1/evaluations/{evaluation_id}/predictions", params={"format": "csv"})
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(table.text))
    return rows, list(reader), list(reader.fieldnames)


def test_a_succeeded_job_evaluates_base_vs_fine_tune(trained):
    client, job, file = trained
    assert job["evaluation_id"], "a succeeded job links its automatic evaluation"
    evaluation = wait_for_status(client, f"/v1/evaluations/{job['evaluation_id']}")
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert evaluation["models"] == [TINY, job["fine_tuned_model"]]
    assert evaluation["fine_tuning_job_id"] == job["id"]
    assert (evaluation["file_id"], evaluation["split"], evaluation["temperature"]) == (file["id"], "test", 0)
    assert evaluation["max_tokens"] == MAX_TOKENS
    test_items = file["report"]["split"]["test"]
    assert evaluation["progress"]["items_total"] == test_items > 0
    assert evaluation["progress"]["items_done"] == 2 * test_items
    assert evaluation["progress"]["items_skipped"] == 0
    assert evaluation["started_at"] <= evaluation["finished_at"]
    for model in evaluation["models"]:
        assert set(evaluation["results"][model]) == {*TEXT_METRICS, "loss", "perplexity"}
        assert evaluation["results"][model]["perplexity"] > 1
    # Trained on these conversations, the fine-tune predicts their answers better than the random base.
    assert evaluation["results"][job["fine_tuned_model"]]["loss"] < evaluation["results"][TINY]["loss"]
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
    succeeded = [e for e in events if e["message"].startswith("Fine-tuning succeeded")]
    assert f"evaluation {evaluation['id']} queued" in succeeded[0]["message"]
    assert succeeded[0]["data"] == {"evaluation_id": evaluation["id"]}
    listed = client.get("/v1/evaluations", params={"fine_tuning_job_id": job["id"]}).json()["data"]
    assert [e["id"] for e in listed] == [evaluation["id"]]
    rows, table, _ = predictions(client, evaluation["id"])
    assert len(rows) == len(table) == test_items


def test_a_manual_evaluation_compares_models_and_exports_every_item(trained):
    client, job, _ = trained
    file_id, examples = evaluation_file(client)
    fine_tune = job["fine_tuned_model"]
    metrics = ["exact_match", "token_f1", "output_length", "perplexity"]
    response = client.post(
        "/v1/evaluations",
        json={"file_id": file_id, "split": "all", "models": [fine_tune, TINY], "max_tokens": 12,
              "metrics": metrics, "limit": 12, "metadata": {"run": "manual"}},
    )
    assert response.status_code == 200, response.text
    evaluation = wait_for_status(client, f"/v1/evaluations/{response.json()['id']}")
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert evaluation["progress"] == {"items_total": 12, "items_done": 24, "items_skipped": 1, "attempt": 1}
    assert set(evaluation["results"]) == {fine_tune, TINY}
    for model in (fine_tune, TINY):
        assert set(evaluation["results"][model]) == {"exact_match", "token_f1", "output_length", "loss", "perplexity"}

    rows, table, header = predictions(client, evaluation["id"])
    assert header == item_columns([fine_tune, TINY], metrics)
    assert header[:6] == ["item", "line", "prompt", "reference", fine_tune, f"finish_reason:{fine_tune}"]
    assert len(rows) == len(table) == 12
    # The first 12 answered examples, in file order (the unanswered one, line 8, is left out).
    assert [row["item"] for row in rows] == list(range(12))
    assert [row["line"] for row in rows] == [*range(1, 8), *range(9, 14)]
    assert [row["reference"] for row in rows] == [e["messages"][-1]["content"] for e in examples[:12]]
    assert [row["prompt"] for row in rows] == [e["messages"][:-1] for e in examples[:12]]
    for row, csv_row in zip(rows, table, strict=True):
        assert json.loads(csv_row["prompt"]) == row["prompt"] and csv_row["reference"] == row["reference"]
        for model in (fine_tune, TINY):
            assert csv_row[model] == row[model]
            assert row[f"exact_match:{model}"] == float(row[model].strip() == row["reference"].strip())
            assert row[f"output_length:{model}"] == len(row[model].split())
            assert row[f"output_length:{model}"] <= 12  # at most max_tokens tokens
            assert row[f"perplexity:{model}"] > 1 and row[f"loss:{model}"] > 0
            assert float(csv_row[f"token_f1:{model}"]) == pytest.approx(row[f"token_f1:{model}"])
    for model in (fine_tune, TINY):
        mean = sum(row[f"exact_match:{model}"] for row in rows) / len(rows)
        assert evaluation["results"][model]["exact_match"] == pytest.approx(mean)
    assert all(row[TINY] for row in rows), "the random base model writes something for every item"


def test_a_killed_inference_worker_is_replaced_and_the_evaluation_finishes(evaluating, trained):
    service, workers, inference = evaluating
    client, job, _ = trained
    file_id, _ = evaluation_file(client)
    fine_tune = job["fine_tuned_model"]
    # The fine-tune first: the random base (second) writes max_tokens for every
    # item, which leaves time to kill the worker in the middle of it.
    response = client.post(
        "/v1/evaluations",
        json={"file_id": file_id, "split": "all", "models": [fine_tune, TINY], "max_tokens": MAX_TOKENS,
              "metrics": ["exact_match", "chrf", "perplexity"]},
    )
    assert response.status_code == 200, response.text
    path = f"/v1/evaluations/{response.json()['id']}"

    def into_the_second_model():
        evaluation = client.get(path).json()
        assert evaluation["status"] in ("queued", "running"), evaluation
        total = evaluation["progress"]["items_total"]
        return evaluation if total and fine_tune in evaluation["results"] and evaluation["progress"]["items_done"] > total else None

    before = wait_for(into_the_second_model, TIMEOUT, "the evaluation to be half done")
    workers.kill(inference)  # SIGKILL: no chance to clean up or give the evaluation back
    workers.start("inference")
    final = wait_for_status(client, path)
    assert final["status"] == "succeeded", final["error"]
    assert final["progress"]["attempt"] == 2
    assert final["progress"]["items_done"] == 2 * final["progress"]["items_total"] == 40
    # The model finished before the kill was not run again; the one cut off was redone whole.
    assert final["results"][fine_tune] == before["results"][fine_tune]
    stored = service.state.storage
    for index, attempt in ((0, 1), (1, 2)):
        records = [json.loads(line) for line in stored.get_bytes(f"evaluations/{final['id']}/models/{index}.jsonl").splitlines()]
        assert [r["item"] for r in records] == list(range(20)) and {r["attempt"] for r in records} == {attempt}
    rows, table, _ = predictions(client, final["id"])
    assert [row["item"] for row in rows] == list(range(20))  # each item exactly once
    assert len(table) == 20
    assert all(row[TINY] is not None and row[f"chrf:{TINY}"] is not None for row in rows)
    assert final["started_at"] == before["started_at"]


def test_cancel_a_running_evaluation_frees_the_worker(trained):
    client, job, _ = trained
    # Enough items to be cancelled in the middle: the worker generates 4 rows at a time.
    file_id = upload(client, tiny_chat_jsonl(400)).json()["id"]
    body = {"file_id": file_id, "split": "all", "models": [TINY], "max_tokens": MAX_TOKENS, "metrics": ["bleu"]}
    evaluation_id = client.post("/v1/evaluations", json=body).json()["id"]
    wait_for(lambda: client.get(f"/v1/evaluations/{evaluation_id}").json()["progress"]["items_done"] > 0, TIMEOUT, "a first chunk")
    cancelled = client.post(f"/v1/evaluations/{evaluation_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # The worker stops between chunks and takes the next evaluation.
    follow_up = client.post("/v1/evaluations", json={**body, "limit": 2}).json()
    assert wait_for_status(client, f"/v1/evaluations/{follow_up['id']}")["status"] == "succeeded"
    final = client.get(f"/v1/evaluations/{evaluation_id}").json()
    assert final["status"] == "cancelled" and final["progress"]["items_done"] < 400
    assert client.get(f"/v1/evaluations/{evaluation_id}/predictions").status_code == 409


def test_items_are_the_splits_answered_examples_in_file_order():
    from worker.evaluation.run import load_items

    def example(i: int, split: str, *, answered: bool = True, parts: bool = False) -> dict:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"}]
        answer = [{"type": "text", "text": f"a{i}"}] if parts else f"a{i}"
        messages.append({"role": "assistant", "content": answer})
        if not answered:
            messages.append({"role": "user", "content": "and?"})
        return {"messages": messages, "split": split}

    lines = [example(0, "TRAIN"), example(1, "TEST"), example(2, "TEST", answered=False), example(3, "TEST", parts=True),
             example(4, "TRAIN", answered=False), example(5, "TEST")]
    content = ("".join(json.dumps(line) + "\n" for line in lines)).encode()
    items, skipped = load_items([content], "test", 0, None)
    assert [(item.index, item.line, item.reference) for item in items] == [(0, 2, "a1"), (1, 4, "a3"), (2, 6, "a5")]
    assert skipped == 1
    assert items[0].prompt == lines[1]["messages"][:2]
    items, skipped = load_items([content], "all", 0, 2)
    assert [item.line for item in items] == [1, 2] and skipped == 2  # skipped counts the whole split
    items, _ = load_items([content], "train", 0, None)
    assert [item.reference for item in items] == ["a0"]
