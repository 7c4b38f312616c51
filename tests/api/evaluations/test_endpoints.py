"""The evaluations API without a worker: creation checks of every parameter,
listing, cancel, isolation between users, the automatic evaluation of a
succeeded job. (Evaluations running end to end: tests/worker/evaluation/test_run_e2e.py.)"""

import time

import pytest

from domain.evaluations.models import Evaluation
from domain.evaluations.schemas import EVALUATION_METRICS, TEXT_METRICS
from domain.evaluations.service import create_job_evaluation
from domain.ids import new_id
from domain.jobs.models import FineTuningJob
from tests.api.files.test_endpoints import upload
from tests.chat_data import batch_jsonl, chat_jsonl

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def chat_file(client, n: int = 20, **kwargs) -> str:
    response = upload(client, chat_jsonl(n, **kwargs))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def create(client, **body):
    return client.post("/v1/evaluations", json={"models": [BASE], **body})


def succeeded_job(service, user, file_id: str, *, validation_file_id: str | None = None, suffix: str = "ev") -> FineTuningJob:
    """A fine-tuning job row as a training worker leaves it on success (no
    worker in this module): its model exists for its owner."""
    job_id = new_id("ftjob-")
    with service.state.sessionmaker() as session:
        job = FineTuningJob(
            id=job_id,
            owner_id=user.id,
            model=BASE,
            training_file_id=file_id,
            validation_file_id=validation_file_id,
            status="succeeded",
            requested_hyperparameters={},
            seed=11,
            seed_origin="user",
            suffix=suffix,
            fine_tuned_model=f"ft:{BASE}:{user.name}:{suffix}:{job_id}",
            model_deleted=False,
            result_files=[],
            adapter_key=f"jobs/{job_id}/adapter.zip",
            created_at=int(time.time()),
            finished_at=int(time.time()),
            attempt=1,
        )
        session.add(job)
        session.commit()
        return job


def assert_error(response, status: int, param: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert error["message"]
    return error


# --------------------------------------------------------------------- creation


def test_create_returns_a_queued_evaluation_with_defaults(alice):
    file_id = chat_file(alice)
    response = create(alice, file_id=file_id, metadata={"team": "nlp"})
    assert response.status_code == 200, response.text
    evaluation = response.json()
    assert evaluation["object"] == "evaluation" and evaluation["id"].startswith("eval_")
    assert evaluation["status"] == "queued"
    assert (evaluation["file_id"], evaluation["split"], evaluation["models"]) == (file_id, "test", [BASE])
    assert evaluation["temperature"] == 0 and evaluation["max_tokens"] == 256 and evaluation["limit"] is None
    assert evaluation["metrics"] == list(EVALUATION_METRICS)
    assert isinstance(evaluation["seed"], int) and 0 <= evaluation["seed"] < 2**31
    assert evaluation["progress"] == {"items_total": None, "items_done": 0, "items_skipped": None, "attempt": 0}
    assert evaluation["results"] == {} and evaluation["error"] is None
    assert evaluation["fine_tuning_job_id"] is None and evaluation["metadata"] == {"team": "nlp"}
    assert evaluation["started_at"] is None and evaluation["finished_at"] is None
    assert abs(evaluation["created_at"] - time.time()) < 60

    assert alice.get(f"/v1/evaluations/{evaluation['id']}").json() == evaluation
    assert [e["id"] for e in alice.get("/v1/evaluations").json()["data"]] == [evaluation["id"]]


def test_explicit_parameters_are_kept(alice):
    file_id = chat_file(alice)
    response = create(
        alice,
        file_id=file_id,
        split="all",
        max_tokens=32,
        temperature=0.7,
        metrics=["perplexity", "bleu", "exact_match"],
        limit=5,
        seed=7,
    )
    assert response.status_code == 200, response.text
    evaluation = response.json()
    assert (evaluation["split"], evaluation["max_tokens"], evaluation["temperature"]) == ("all", 32, 0.7)
    assert evaluation["metrics"] == ["exact_match", "bleu", "perplexity"]  # canonical order
    assert (evaluation["limit"], evaluation["seed"]) == (5, 7)


def test_the_api_knows_the_workers_metric_names():
    from worker.evaluation.scores import METRIC_NAMES

    assert TEXT_METRICS == METRIC_NAMES
    assert EVALUATION_METRICS == (*METRIC_NAMES, "perplexity")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"split": "validation"}, "split", None),
        ({"split": "TEST"}, "split", None),
        ({"models": []}, "models", None),
        ({"models": "not-a-list"}, "models", None),
        ({"models": [BASE] * 9}, "models", None),
        ({"models": [BASE, BASE]}, "models[1]", "duplicate_model"),
        ({"max_tokens": 0}, "max_tokens", None),
        ({"max_tokens": 1_000_000}, "max_tokens", None),
        ({"max_tokens": "many"}, "max_tokens", None),
        ({"temperature": -0.1}, "temperature", None),
        ({"temperature": 2.5}, "temperature", None),
        ({"metrics": []}, "metrics", None),
        ({"metrics": ["exact_match", "accuracy"]}, "metrics[1]", "unknown_metric"),
        ({"metrics": ["bleu", "bleu"]}, "metrics[1]", "duplicate_metric"),
        ({"limit": 0}, "limit", None),
        ({"limit": -3}, "limit", None),
        ({"seed": -1}, "seed", None),
        ({"seed": 2**40}, "seed", None),
        # Every metadata problem: one message (domain/metadata.py), naming "metadata".
        ({"metadata": {"k" * 65: "v"}}, "metadata", "invalid_value"),
        ({"metadata": {"k": 3}}, "metadata", "invalid_value"),
        ({"metadata": {"k": "v" * 513}}, "metadata", "invalid_value"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"judge": "gpt-4"}, "judge", None),
        ({"file_id": ""}, "file_id", None),
        ({"file_id": None}, "file_id", None),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(alice, body, param, code):
    file_id = chat_file(alice)
    response = create(alice, **{"file_id": file_id, **body})
    assert_error(response, 400, param, code)
    assert alice.get("/v1/evaluations").json()["data"] == []  # nothing was created


def test_a_missing_file_id_is_refused(alice):
    assert_error(alice.post("/v1/evaluations", json={"models": [BASE]}), 400, "file_id")
    broken = alice.post("/v1/evaluations", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"


def test_unknown_models_are_404_naming_their_position(alice):
    file_id = chat_file(alice)
    error = assert_error(create(alice, file_id=file_id, models=[BASE, "no-such-model"]), 404, "models[1]", "model_not_found")
    assert "no-such-model" in error["message"]
    assert_error(create(alice, file_id=file_id, models=[f"ft:{BASE}:x:y:ftjob-nope"]), 404, "models[0]", "model_not_found")


def test_a_fine_tune_is_usable_by_its_owner_only(service, alice, alice_user, bob):
    job = succeeded_job(service, alice_user, chat_file(alice))
    response = create(alice, file_id=chat_file(alice), models=[BASE, job.fine_tuned_model])
    assert response.status_code == 200, response.text
    assert response.json()["models"] == [BASE, job.fine_tuned_model]
    assert_error(create(bob, file_id=chat_file(bob), models=[BASE, job.fine_tuned_model]), 404, "models[1]", "model_not_found")


def test_a_deleted_fine_tune_is_not_found(service, alice, alice_user):
    job = succeeded_job(service, alice_user, chat_file(alice))
    with service.state.sessionmaker() as session:
        session.get(FineTuningJob, job.id).model_deleted = True
        session.commit()
    assert_error(create(alice, file_id=chat_file(alice), models=[job.fine_tuned_model]), 404, "models[0]", "model_not_found")


def test_files_must_be_processed_fine_tune_files_of_the_caller(alice, bob):
    alices_file = chat_file(alice)
    assert_error(create(bob, file_id=alices_file), 404, "file_id", "file_not_found")
    assert_error(create(alice, file_id="file-doesnotexist"), 404, "file_id", "file_not_found")
    batch_file = upload(alice, batch_jsonl(), purpose="batch").json()["id"]
    assert_error(create(alice, file_id=batch_file), 400, "file_id", "invalid_file_purpose")
    assert bob.get("/v1/evaluations").json()["data"] == []
    assert alice.get("/v1/evaluations").json()["data"] == []


def test_a_split_without_examples_is_refused(alice):
    only_train = chat_file(alice, 10, split="TRAIN")
    assert_error(create(alice, file_id=only_train, split="test"), 400, "split", "no_items")
    assert create(alice, file_id=only_train, split="train").status_code == 200
    assert create(alice, file_id=only_train, split="all").status_code == 200


# ------------------------------------------------------------ reading, listing


def test_another_users_evaluation_is_404_everywhere(alice, bob):
    evaluation_id = create(alice, file_id=chat_file(alice)).json()["id"]
    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("GET", "/predictions"), ("GET", "/predictions?format=csv")):
        response = bob.request(method, f"/v1/evaluations/{evaluation_id}{suffix}")
        assert_error(response, 404, "evaluation_id", "evaluation_not_found")
    assert bob.get("/v1/evaluations").json()["data"] == []
    assert alice.get(f"/v1/evaluations/{evaluation_id}").json()["status"] == "queued"  # bob's cancel changed nothing


def test_unknown_evaluation_is_404(alice):
    assert_error(alice.get("/v1/evaluations/eval_nope"), 404, "evaluation_id", "evaluation_not_found")


def test_list_pages_newest_first(alice):
    file_id = chat_file(alice)
    ids = [create(alice, file_id=file_id).json()["id"] for _ in range(3)]
    first = alice.get("/v1/evaluations", params={"limit": 2}).json()
    assert first["object"] == "list"
    assert [e["id"] for e in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (ids[2], ids[1])
    second = alice.get("/v1/evaluations", params={"limit": 2, "after": first["last_id"]}).json()
    assert [e["id"] for e in second["data"]] == [ids[0]]
    assert second["has_more"] is False
    assert_error(alice.get("/v1/evaluations", params={"after": "ftjob-x"}), 400, "after", "invalid_cursor")
    assert_error(alice.get("/v1/evaluations", params={"limit": 0}), 400, "limit")


def test_predictions_exist_once_the_evaluation_succeeds(alice):
    evaluation_id = create(alice, file_id=chat_file(alice)).json()["id"]
    for fmt in ("jsonl", "csv"):
        error = assert_error(
            alice.get(f"/v1/evaluations/{evaluation_id}/predictions", params={"format": fmt}),
            409,
            "evaluation_id",
            "predictions_not_ready",
        )
        assert "queued" in error["message"]
    assert_error(alice.get(f"/v1/evaluations/{evaluation_id}/predictions", params={"format": "xlsx"}), 400, "format")


def test_cancel_a_queued_evaluation(alice):
    evaluation_id = create(alice, file_id=chat_file(alice)).json()["id"]
    cancelled = alice.post(f"/v1/evaluations/{evaluation_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"] is not None
    assert alice.get(f"/v1/evaluations/{evaluation_id}").json()["status"] == "cancelled"
    error = assert_error(alice.post(f"/v1/evaluations/{evaluation_id}/cancel"), 400, None, "evaluation_not_cancellable")
    assert "cancelled" in error["message"]
    assert_error(alice.get(f"/v1/evaluations/{evaluation_id}/predictions"), 409, "evaluation_id", "predictions_not_ready")


# ---------------------------------------------------- a job's automatic evaluation


def test_a_succeeded_job_gets_base_vs_fine_tune_on_its_test_split(service, alice, alice_user):
    training = chat_file(alice)
    job = succeeded_job(service, alice_user, training)
    with service.state.sessionmaker() as session:
        evaluation = create_job_evaluation(
            session, service.settings, session.get(FineTuningJob, job.id), job.fine_tuned_model
        )
        assert evaluation is not None
        session.get(FineTuningJob, job.id).evaluation_id = evaluation.id
        session.commit()
        evaluation_id = evaluation.id
    shown = alice.get(f"/v1/evaluations/{evaluation_id}").json()
    assert shown["models"] == [BASE, job.fine_tuned_model]
    assert (shown["file_id"], shown["split"], shown["seed"]) == (training, "test", 11)
    assert shown["fine_tuning_job_id"] == job.id and shown["temperature"] == 0
    assert shown["metrics"] == list(EVALUATION_METRICS)
    assert alice.get(f"/v1/fine_tuning/jobs/{job.id}").json()["evaluation_id"] == evaluation_id
    listed = alice.get("/v1/evaluations", params={"fine_tuning_job_id": job.id}).json()["data"]
    assert [e["id"] for e in listed] == [evaluation_id]


def test_a_jobs_validation_file_is_evaluated_whole(service, alice, alice_user):
    validation = chat_file(alice, 10)
    job = succeeded_job(service, alice_user, chat_file(alice), validation_file_id=validation)
    with service.state.sessionmaker() as session:
        evaluation = create_job_evaluation(
            session, service.settings, session.get(FineTuningJob, job.id), job.fine_tuned_model
        )
        assert (evaluation.file_id, evaluation.split) == (validation, "all")
        session.rollback()  # the function commits nothing itself
        assert session.get(Evaluation, evaluation.id) is None


def test_no_automatic_evaluation_without_held_out_examples(service, alice, alice_user):
    job = succeeded_job(service, alice_user, chat_file(alice, 10, split="TRAIN"))
    with service.state.sessionmaker() as session:
        assert create_job_evaluation(
            session, service.settings, session.get(FineTuningJob, job.id), job.fine_tuned_model
        ) is None


# ------------------------------------------------------------ judges, estimate, items


def test_judges_are_stored_and_the_estimate_counts_their_calls(service, alice, alice_user):
    job = succeeded_job(service, alice_user, chat_file(alice), suffix="judged")
    file_id = chat_file(alice)
    body = {"file_id": file_id, "split": "all", "limit": 5, "models": [BASE, job.fine_tuned_model], "max_tokens": 10,
            "judges": [{"kind": "pairwise", "model": BASE}, {"kind": "reference", "model": job.fine_tuned_model,
                                                              "rubric": "Be strict.", "max_tokens": 20}]}
    estimate = alice.post("/v1/evaluations/estimate", json=body)
    assert estimate.status_code == 200, estimate.text
    tokens = estimate.json().pop("judge_prompt_tokens")
    assert estimate.json() | {"judge_prompt_tokens": 0} == {
        "object": "evaluation.estimate", "items": 5, "generation_calls": 10, "judge_calls": 5 * 2 + 5 * 2,
        "judge_prompt_tokens": 0, "external_calls": 0}
    assert tokens > (5 * 2 + 5 * 2) * 10  # every call quotes at least one answer of max_tokens
    assert alice.get("/v1/evaluations").json()["data"] == []  # an estimate creates nothing
    created = alice.post("/v1/evaluations", json=body)
    assert created.status_code == 200, created.text
    judges = created.json()["judges"]
    assert judges[0] == {"kind": "pairwise", "model": BASE, "rubric": None, "max_tokens": 128}
    assert judges[1] == {"kind": "reference", "model": job.fine_tuned_model, "rubric": "Be strict.", "max_tokens": 20}
    assert (created.json()["ratings"], created.json()["pairwise"], created.json()["tag_counts"]) == (None, None, None)
    plain = create(alice, file_id=file_id).json()
    assert plain["judges"] is None


@pytest.mark.parametrize(("judges", "status", "param", "code"), [
    ([{"kind": "pairwise", "model": BASE}], 400, "judges[0].kind", "too_few_models"),
    ([{"kind": "reference", "model": "no-such-judge"}], 404, "judges[0].model", "model_not_found"),
    ([{"kind": "reference", "model": "conn:nowhere/gpt"}], 404, "judges[0].model", "model_not_found"),
    # The body's schema names the place as pydantic does.
    ([{"kind": "vibes", "model": BASE}], 400, "judges.0.kind", None),
    ([{"kind": "reference", "model": BASE, "max_tokens": 0}], 400, "judges.0.max_tokens", None),
    ([{"kind": "reference", "model": BASE, "max_tokens": 10**6}], 400, "judges[0].max_tokens", None),
    ([{"kind": "reference", "model": BASE, "temperature": 1}], 400, "judges.0.temperature", None),
    ([{"kind": "reference", "model": BASE}] * 5, 400, "judges", None),
])
def test_bad_judges_are_refused_by_create_and_estimate(alice, judges, status, param, code):
    file_id = chat_file(alice)
    for path in ("/v1/evaluations", "/v1/evaluations/estimate"):
        response = alice.post(path, json={"file_id": file_id, "models": [BASE], "judges": judges})
        assert_error(response, status, param, code)
    assert alice.get("/v1/evaluations").json()["data"] == []


def test_items_and_tags_exist_once_the_evaluation_succeeds(alice, bob):
    evaluation_id = create(alice, file_id=chat_file(alice)).json()["id"]
    assert_error(alice.get(f"/v1/evaluations/{evaluation_id}/items"), 409, "evaluation_id", "predictions_not_ready")
    assert_error(alice.get(f"/v1/evaluations/{evaluation_id}/items/download"), 409, "evaluation_id", "predictions_not_ready")
    assert_error(alice.put(f"/v1/evaluations/{evaluation_id}/items/0/tags", json={"model": BASE, "tags": ["x"]}),
                 409, "evaluation_id", "predictions_not_ready")
    for response in (bob.get(f"/v1/evaluations/{evaluation_id}/items"),
                     bob.put(f"/v1/evaluations/{evaluation_id}/items/0/tags", json={"model": BASE, "tags": ["x"]})):
        assert response.status_code == 404, response.text
