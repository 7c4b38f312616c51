"""Sharing a fine-tune inside the deployment, without a worker, on both
backends: the owner shares with a named user or with everyone; the sharee
lists, retrieves, evaluates with and downloads it, reads its job and its
automatic evaluation, and changes nothing (403); a third user sees nothing
(404 everywhere); a revoked share is a 404 on the very next request; none of
the owner's files is reachable through anything a sharee can fetch. (Chat,
streaming and batches answered by a worker for a sharee:
tests/worker/inference/test_chat_and_batch_e2e.py.)"""

import io
import zipfile

import httpx
import pytest

from domain.evaluations.service import create_job_evaluation
from domain.jobs.models import FineTuningJob
from tests.api.evaluations.test_endpoints import chat_file
from tests.domain.catalog.test_service import BASE, fine_tune, user

PROMPT = [{"role": "user", "content": "Hi"}]
WEIGHTS = "adapter_model.safetensors"
# What a sharee may read of the shared model's job, and what only its owner may do.
READABLE_JOB_PATHS = ("", "/metrics", "/recipe", "/adapter", "/merged", "/bundle")
OWNER_ONLY_JOB_CALLS = (("POST", "/cancel"), ("POST", "/pause"), ("POST", "/resume"), ("GET", "/events"),
                        ("GET", "/checkpoints"))


@pytest.fixture
def carol(service):
    with service.client(service.make_user("carol").key) as client:
        yield client


@pytest.fixture
def shared(service, alice, alice_user):
    """Alice's fine-tune, trained on a real file of hers, with its automatic
    evaluation and a recipe: (job, evaluation id, training file id)."""
    training = chat_file(alice)
    job = fine_tune(service, user(service, alice_user), "shared")
    for name in ("adapter", "merged"):  # downloads are zips (the model card is added to them)
        service.state.storage.put_bytes(f"jobs/{job.id}/{name}.zip", weights_zip())
    service.state.storage.put_bytes(f"jobs/{job.id}/adapter/{WEIGHTS}", b"weights")  # what a bundle holds
    with service.state.sessionmaker() as session:
        row = session.get(FineTuningJob, job.id)
        # Files of hers the job names: the data, and a result file (metrics) standing in for the worker's.
        row.training_file_id, row.result_files = training, [chat_file(alice)]
        row.recipe = {"data": {"training_file": {"id": training, "filename": "train.jsonl"}}}
        evaluation = create_job_evaluation(session, service.settings, row, job.fine_tuned_model)
        row.evaluation_id = evaluation.id
        session.commit()
        return row, evaluation.id, training


def weights_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(WEIGHTS, b"weights")
    return out.getvalue()


def downloaded_weights(response) -> bytes:
    assert response.status_code == 200, response.text
    return zipfile.ZipFile(io.BytesIO(response.content)).read(WEIGHTS)


def share(client, model: str, **body):
    return client.post(f"/v1/models/{model}/shares", json=body)


def chat(client, model: str, **body):
    # Without the suite's "no 5xx" hook: with no worker here, a model that
    # resolves gets as far as waiting for one (503); one that does not is a 404.
    return httpx.post(f"{client.base_url}/v1/chat/completions", headers=client.headers, timeout=30,
                      json={"model": model, "messages": PROMPT, "max_tokens": 2, **body})


def error_code(response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["code"]


def listed(client) -> list[str]:
    return [model["id"] for model in client.get("/v1/models").json()["data"]]


def evaluate(client, model: str):
    return client.post("/v1/evaluations", json={"models": [model], "file_id": chat_file(client)})


def assert_sees_it(client, service, job: FineTuningJob, evaluation_id: str, owner: str):
    model = job.fine_tuned_model
    entry = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == model)
    assert (entry["owned_by"], entry["shared_by"], entry["kind"]) == (owner, owner, "fine-tune")
    assert client.get(f"/v1/models/{model}").json() == entry
    for path in READABLE_JOB_PATHS:
        response = client.get(f"/v1/fine_tuning/jobs/{job.id}{path}", follow_redirects=True)
        assert response.status_code == 200, (path, response.text)
    for download in ("adapter", "merged"):
        response = client.get(f"/v1/fine_tuning/jobs/{job.id}/{download}", follow_redirects=True)
        assert downloaded_weights(response) == b"weights"
    assert client.get(f"/v1/fine_tuning/jobs/{job.id}").json()["organization_id"] == owner
    assert client.get(f"/v1/evaluations/{evaluation_id}").json()["models"] == [BASE, model]
    assert evaluate(client, model).status_code == 200
    # The GGUF export too: asked for here, made by a worker (none runs in these tests).
    assert client.get(f"/v1/fine_tuning/jobs/{job.id}/gguf").status_code == 202
    assert error_code(chat(client, model), 503) == "no_inference_worker"
    assert error_code(chat(client, model, stream=True), 503) == "no_inference_worker"


def assert_sees_nothing(client, job: FineTuningJob, evaluation_id: str):
    model = job.fine_tuned_model
    assert model not in listed(client)
    assert error_code(client.get(f"/v1/models/{model}"), 404) == "model_not_found"
    for method, path in [("GET", p) for p in (*READABLE_JOB_PATHS, "/gguf")] + list(OWNER_ONLY_JOB_CALLS):
        assert error_code(client.request(method, f"/v1/fine_tuning/jobs/{job.id}{path}"), 404) == "fine-tuning job_not_found"
    for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/predictions")):
        assert error_code(client.request(method, f"/v1/evaluations/{evaluation_id}{path}"), 404) == "evaluation_not_found"
    assert error_code(evaluate(client, model), 404) == "model_not_found"
    assert error_code(chat(client, model), 404) == "model_not_found"
    assert error_code(chat(client, model, stream=True), 404) == "model_not_found"
    assert error_code(client.delete(f"/v1/models/{model}"), 404) == "model_not_found"
    assert error_code(client.get(f"/v1/models/{model}/shares"), 404) == "model_not_found"
    assert error_code(share(client, model, everyone=True), 404) == "model_not_found"


def test_a_model_shared_with_a_user_is_theirs_to_use_and_nobody_elses(service, shared, alice, alice_user, bob,
                                                                       bob_user, carol):
    job, evaluation_id, _ = shared
    model = job.fine_tuned_model
    assert_sees_nothing(bob, job, evaluation_id)  # before it is shared
    created = share(alice, model, user=bob_user.name)
    assert created.status_code == 200, created.text
    body = created.json()
    assert (body["object"], body["model"], body["user"], body["everyone"]) == ("model.share", model, bob_user.name, False)
    assert share(alice, model, user=bob_user.name).json()["id"] == body["id"]  # sharing again changes nothing
    assert [s["id"] for s in alice.get(f"/v1/models/{model}/shares").json()["data"]] == [body["id"]]

    assert_sees_it(bob, service, job, evaluation_id, alice_user.name)
    assert_sees_nothing(carol, job, evaluation_id)
    # The owner's list is unchanged by it: their model, not marked shared.
    mine = next(m for m in alice.get("/v1/models").json()["data"] if m["id"] == model)
    assert (mine["owned_by"], mine["shared_by"]) == (alice_user.name, None)


def test_a_sharee_changes_nothing(service, shared, alice, bob, bob_user):
    job, evaluation_id, _ = shared
    model = job.fine_tuned_model
    share(alice, model, user=bob_user.name)
    for method, path in OWNER_ONLY_JOB_CALLS:
        assert error_code(bob.request(method, f"/v1/fine_tuning/jobs/{job.id}{path}"), 403) == "read_only_share"
    assert error_code(bob.delete(f"/v1/models/{model}"), 403) == "read_only_share"
    assert error_code(bob.get(f"/v1/models/{model}/shares"), 403) == "read_only_share"
    assert error_code(share(bob, model, everyone=True), 403) == "read_only_share"
    for method, path in (("POST", "/cancel"), ("GET", "/predictions")):
        assert error_code(bob.request(method, f"/v1/evaluations/{evaluation_id}{path}"), 403) == "read_only_share"
    # Training on it is the owner's (a job would outlive the share).
    response = bob.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": chat_file(bob)})
    assert error_code(response, 400) == "model_not_found"
    # Their own lists stay theirs: the owner's job and evaluation are not in them.
    assert bob.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert bob.get("/v1/evaluations").json()["data"] == []
    assert alice.get(f"/v1/models/{model}").status_code == 200
    assert alice.get(f"/v1/fine_tuning/jobs/{job.id}").json()["status"] == "succeeded"


def test_the_owners_files_never_leak_through_what_a_sharee_fetches(service, shared, alice, bob, bob_user):
    job, evaluation_id, training = shared
    share(alice, job.fine_tuned_model, user=bob_user.name)
    fetched = [bob.get(f"/v1/fine_tuning/jobs/{job.id}").json(), bob.get(f"/v1/evaluations/{evaluation_id}").json(),
               bob.get(f"/v1/fine_tuning/jobs/{job.id}/recipe").json(), bob.get("/v1/models").json()]
    file_ids = set(_file_ids(fetched))
    assert {training, *job.result_files} <= file_ids  # the job names them: their ids must lead nowhere
    for file_id in file_ids:
        assert alice.get(f"/v1/files/{file_id}").status_code == 200
        assert error_code(bob.get(f"/v1/files/{file_id}"), 404) == "file_not_found"
        assert error_code(bob.get(f"/v1/files/{file_id}/content"), 404) == "file_not_found"
    assert bob.get("/v1/files").json()["data"] == []


def _file_ids(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _file_ids(item)
    elif isinstance(value, list):
        for item in value:
            yield from _file_ids(item)
    elif isinstance(value, str) and value.startswith("file-"):
        yield value


def test_revoking_is_a_404_on_the_very_next_request(service, shared, alice, bob, bob_user):
    job, evaluation_id, _ = shared
    model = job.fine_tuned_model
    share_id = share(alice, model, user=bob_user.name).json()["id"]
    assert error_code(chat(bob, model), 503) == "no_inference_worker"
    assert bob.get(f"/v1/fine_tuning/jobs/{job.id}/adapter", follow_redirects=True).status_code == 200
    revoked = alice.delete(f"/v1/models/{model}/shares/{share_id}")
    assert revoked.json() == {"id": share_id, "object": "model.share", "deleted": True}
    assert error_code(chat(bob, model), 404) == "model_not_found"
    assert error_code(bob.get(f"/v1/fine_tuning/jobs/{job.id}/adapter"), 404) == "fine-tuning job_not_found"
    assert_sees_nothing(bob, job, evaluation_id)
    assert alice.get(f"/v1/models/{model}/shares").json()["data"] == []
    assert error_code(alice.delete(f"/v1/models/{model}/shares/{share_id}"), 404) == "share_not_found"


def test_shared_with_everyone_until_revoked(service, shared, alice, bob, carol):
    job, evaluation_id, _ = shared
    model = job.fine_tuned_model
    everyone = share(alice, model, everyone=True).json()
    assert (everyone["user"], everyone["everyone"]) == (None, True)
    assert share(alice, model, everyone=True).json()["id"] == everyone["id"]
    late = service.make_user("late")  # everyone includes users added after the share
    with service.client(late.key) as newcomer:
        for client in (bob, carol, newcomer):
            assert model in listed(client)
            response = client.get(f"/v1/fine_tuning/jobs/{job.id}/adapter", follow_redirects=True)
            assert downloaded_weights(response) == b"weights"
        alice.delete(f"/v1/models/{model}/shares/{everyone['id']}")
        for client in (bob, carol, newcomer):
            assert_sees_nothing(client, job, evaluation_id)


def test_a_deleted_model_is_no_longer_shared(service, shared, alice, bob, bob_user):
    job, evaluation_id, _ = shared
    model = job.fine_tuned_model
    share(alice, model, user=bob_user.name)
    assert alice.delete(f"/v1/models/{model}").status_code == 200
    assert_sees_nothing(bob, job, evaluation_id)


def test_bad_shares_are_refused_clearly(service, shared, alice, alice_user, bob):
    job, _, _ = shared
    model = job.fine_tuned_model
    unknown = share(alice, model, user="nobody-by-this-name")
    assert error_code(unknown, 400) == "user_not_found"
    assert "nobody-by-this-name" in unknown.json()["error"]["message"] and unknown.json()["error"]["param"] == "user"
    assert error_code(share(alice, model, user=alice_user.name), 400) == "invalid_share"
    assert error_code(share(alice, model), 400) == "invalid_share"
    assert error_code(share(alice, model, user="x", everyone=True), 400) == "invalid_share"
    assert error_code(share(alice, model, everyone=True, colour="blue"), 400) is not None
    assert error_code(share(alice, BASE, everyone=True), 404) == "model_not_found"
    assert error_code(share(alice, "ft:nothing:here::ftjob-x", everyone=True), 404) == "model_not_found"
    # Only an owner learns whether a user name exists: bob owns no such model.
    assert error_code(share(bob, model, user="nobody-by-this-name"), 404) == "model_not_found"
    assert alice.get(f"/v1/models/{model}/shares").json()["data"] == []


def test_a_sharees_bundle_leaves_out_what_stays_with_the_owner(service, shared, alice, bob, bob_user):
    job, _, _ = shared
    share(alice, job.fine_tuned_model, user=bob_user.name)

    def members(client) -> set[str]:
        response = client.get(f"/v1/fine_tuning/jobs/{job.id}/bundle", params={"include_data": "true"})
        assert response.status_code == 200, response.text
        return set(zipfile.ZipFile(io.BytesIO(response.content)).namelist())

    owners, sharees = members(alice), members(bob)
    assert f"adapter/{WEIGHTS}" in sharees and "README.md" in sharees
    # The events and the training data stay with the owner.
    assert "events.jsonl" in owners and "events.jsonl" not in sharees
    assert any(name.startswith("data/") for name in owners)
    assert not any(name.startswith("data/") for name in sharees)
