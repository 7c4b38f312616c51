"""Text and prompt/completion files end to end: uploaded, validated and
reported in their format, trained by the supervised recipe on the tiny model
by a real `tunehouse worker`, the format recorded in the recipe, and the
automatic evaluation run as the format allows (perplexity only for text; every
metric for prompt/completion, the completion as the reference). One job is
created through the official openai SDK. Runs on the embedded parts (SQLite,
filesystem broker, local storage) only: a format is parsed from the file's
bytes whichever store, database and broker carry them, and the production
parts are run end to end by test_job_e2e.py, test_lineage_e2e.py,
test_full_finetune_e2e.py, test_pause_e2e.py and tests/production (a second
service and worker here cost ~45 s on 2 cores and tested no format more)."""

import json

import openai
import pytest

from domain.evaluations.schemas import EVALUATION_METRICS
from tests.api.files.test_endpoints import upload
from tests.conftest import wait_for
from tests.e2e import HEARTBEAT_TIMEOUT, TINY, service_with_worker, start_job, wait_until_done

pytestmark = pytest.mark.slow

ANIMALS = {"cat": "Meow.", "dog": "Woof.", "cow": "Moo.", "owl": "Hoot."}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def text_jsonl(n: int = 24) -> bytes:
    animals = list(ANIMALS)
    return jsonl([{"text": f"The {animals[i % 4]} says {ANIMALS[animals[i % 4]]} ({i})"} for i in range(n)])


def prompt_completion_jsonl(n: int = 24) -> bytes:
    animals = list(ANIMALS)
    return jsonl([{"prompt": f"What sound does a {animals[i % 4]} make? ({i})\n",
                   "completion": ANIMALS[animals[i % 4]]} for i in range(n)])


@pytest.fixture(scope="module", params=["sqlite-local"])
def service(request, tmp_path_factory, tiny_model_dir):
    with service_with_worker(
        request, tmp_path_factory.mktemp(f"formats-{request.param}"), "formats",
        base_models={TINY: f"path:{tiny_model_dir}"}, heartbeat_timeout=HEARTBEAT_TIMEOUT,
        # Each job's automatic evaluation generates up to this many tokens: keep it short.
        max_completion_tokens=16,
    ) as running:
        yield running


@pytest.fixture
def client(service):
    user = service.make_user("formats")
    with service.client(user.key, follow_redirects=True) as http:
        yield http


def finished_evaluation(client, evaluation_id: str) -> dict:
    def finished():
        evaluation = client.get(f"/v1/evaluations/{evaluation_id}").json()
        return evaluation if evaluation["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, 300, f"evaluation {evaluation_id}", interval=0.5)


def test_a_text_job_trains_on_every_token_and_is_evaluated_by_perplexity(client):
    job = start_job(client, text_jsonl(), n_epochs=2, batch_size=4)
    file = client.get(f"/v1/files/{job['training_file']}").json()
    assert file["report"]["format"] == "text"
    assert file["report"]["estimated_tokens"]["method"] == "characters / 4, plus 1 for the end of text"

    job = wait_until_done(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    recipe = client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe").json()
    assert recipe["data"]["format"] == "text"
    # Every token but each example's first is trained: a text of n tokens plus EOS trains n.
    assert recipe["data"]["train_examples"] + recipe["data"]["eval_examples"] == 24
    metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    assert metrics and all(row["train_loss"] > 0 for row in metrics)

    evaluation = finished_evaluation(client, job["evaluation_id"])
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert evaluation["metrics"] == ["perplexity"]
    assert set(evaluation["results"]) == {TINY, job["fine_tuned_model"]}
    for results in evaluation["results"].values():
        assert set(results) == {"loss", "perplexity"} and results["perplexity"] > 1
    # Trained on these very lines' neighbours, the fine-tune finds the held-out text less surprising.
    assert evaluation["results"][job["fine_tuned_model"]]["loss"] < evaluation["results"][TINY]["loss"]
    rows = [json.loads(line) for line in
            client.get(f"/v1/evaluations/{evaluation['id']}/predictions").text.splitlines()]
    assert rows and all(row["prompt"] == "" and row["reference"].startswith("The ") for row in rows)

    # Asked for a metric that needs answers, an evaluation of a text file is refused.
    refused = client.post("/v1/evaluations", json={"file_id": file["id"], "models": [TINY],
                                                   "metrics": ["perplexity", "exact_match"]})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("metrics[1]", "metric_not_available")
    assert "perplexity only" in error["message"]
    # Without 'metrics', it computes perplexity only.
    created = client.post("/v1/evaluations", json={"file_id": file["id"], "models": [TINY], "split": "train",
                                                   "limit": 4})
    assert created.status_code == 200, created.text
    assert created.json()["metrics"] == ["perplexity"]
    done = finished_evaluation(client, created.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert set(done["results"][TINY]) == {"loss", "perplexity"}
    # Other lines, the same untrained model: about the same loss per token.
    assert done["results"][TINY]["loss"] == pytest.approx(evaluation["results"][TINY]["loss"], rel=0.1)


def test_a_prompt_completion_job_created_with_the_openai_sdk(service, client):
    sdk = openai.OpenAI(base_url=f"{service.base_url}/v1",
                        api_key=client.headers["authorization"].split()[-1], max_retries=0)
    file = sdk.files.create(file=("completions.jsonl", prompt_completion_jsonl()), purpose="fine-tune")
    report = file.model_extra["report"]
    assert report["format"] == "prompt_completion"
    assert report["completion_tokens"]["total"] > 0 and report["empty_prompts"] == 0
    created = sdk.fine_tuning.jobs.create(model=TINY, training_file=file.id, seed=3,
                                          hyperparameters={"n_epochs": 2, "batch_size": 4})
    job = wait_until_done(client, created.id)
    assert job["status"] == "succeeded", job["error"]
    recipe = client.get(f"/v1/fine_tuning/jobs/{job['id']}/recipe").json()
    assert recipe["data"]["format"] == "prompt_completion"

    evaluation = finished_evaluation(client, sdk.fine_tuning.jobs.retrieve(created.id).model_extra["evaluation_id"])
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert evaluation["metrics"] == list(EVALUATION_METRICS)
    for results in evaluation["results"].values():
        assert 0 <= results["exact_match"] <= 1 and results["perplexity"] > 1
    rows = [json.loads(line) for line in
            client.get(f"/v1/evaluations/{evaluation['id']}/predictions").text.splitlines()]
    # The prompt is the plain text the model continues; the completion is the reference.
    assert rows and all(row["prompt"].startswith("What sound does a ") for row in rows)
    assert all(row["reference"] in ANIMALS.values() for row in rows)


def test_bad_lines_of_every_format_are_refused_by_number_and_nothing_is_stored(client):
    lines = [json.loads(line) for line in prompt_completion_jsonl(12).decode().splitlines()]
    lines[2] = {"prompt": "x", "completion": ""}
    lines[5] = {"text": "a text line"}
    lines[8] = {"input": {"messages": [{"role": "user", "content": "q"}]},
                "preferred_output": [{"role": "assistant", "content": "a"}],
                "non_preferred_output": [{"role": "assistant", "content": "a"}]}
    response = upload(client, jsonl(lines))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert [(e["line"], e["reason"]) for e in error["details"]["errors"]] == [
        (3, "empty 'completion': it is what the model is trained on"),
        (6, "a text line, but the file's first example (line 1) is prompt/completion; a file holds one format"),
        (9, "a preference line, but the file's first example (line 1) is prompt/completion; a file holds one format"),
    ]
    assert "line 6: a text line" in error["message"]
    assert client.get("/v1/files").json()["data"] == []
