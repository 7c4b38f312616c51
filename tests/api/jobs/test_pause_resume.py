"""Pause and resume through the API without a worker: a queued job pauses at
once, the status rules (409 in OpenAI's shape), cancel on a paused job, the
official SDK's jobs.pause()/jobs.resume(), and isolation. (Pausing a running
job end to end is tests/worker/training/test_pause_e2e.py.)"""

import openai
import pytest

from tests.api.jobs.test_endpoints import BASE, create, training_file


def post(client, job_id: str, action: str):
    return client.post(f"/v1/fine_tuning/jobs/{job_id}/{action}")


def messages(client, job_id: str) -> list[str]:
    return [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]]


def test_a_queued_job_pauses_at_once_and_resumes_to_the_queue(alice):
    job = create(alice, training_file=training_file(alice)).json()
    paused = post(alice, job["id"], "pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused" and paused.json()["progress"]["pause_requested"] is False
    assert alice.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "paused"
    assert messages(alice, job["id"])[0] == "Job paused; resume it to start training"

    again = post(alice, job["id"], "pause")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_already_paused"

    resumed = post(alice, job["id"], "resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued"
    assert messages(alice, job["id"])[0] == "Job resumed: queued to continue from the start"

    not_paused = post(alice, job["id"], "resume")
    assert not_paused.status_code == 409
    error = not_paused.json()["error"]
    assert error["code"] == "job_not_paused" and error["type"] == "invalid_request_error" and "queued" in error["message"]


def test_finished_jobs_cannot_be_paused_and_paused_jobs_can_be_cancelled(alice):
    job = create(alice, training_file=training_file(alice)).json()
    assert post(alice, job["id"], "pause").json()["status"] == "paused"
    cancelled = post(alice, job["id"], "cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    refused = post(alice, job["id"], "pause")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "job_not_pausable" and "cancelled" in refused.json()["error"]["message"]
    assert post(alice, job["id"], "resume").status_code == 409
    assert alice.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"


def test_another_users_job_cannot_be_paused_or_resumed(alice, bob):
    job = create(alice, training_file=training_file(alice)).json()
    for action in ("pause", "resume"):
        assert post(bob, job["id"], action).status_code == 404
    assert alice.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "queued"


def test_the_openai_sdk_pauses_and_resumes(service, alice, alice_user):
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=alice_user.key, max_retries=0)
    file_id = training_file(alice)
    job = client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    with pytest.raises(openai.ConflictError) as refused:
        client.fine_tuning.jobs.resume(job.id)
    assert refused.value.code == "job_not_paused"
