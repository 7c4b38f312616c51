"""Pause and resume end to end, through the official `openai` SDK: the API in
this process, a real `tunehouse worker` process, the tiny Llama trained on the
CPU. A paused job checkpoints the step it is at and frees its worker; resumed,
it continues from that step, and every step's metrics are recorded once."""

import openai
import pytest

from tests.conftest import wait_for
from tests.e2e import JOB_TIMEOUT, TINY, tiny_chat_jsonl, tiny_service_with_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def service(request, tmp_path_factory, tiny_model_dir):
    with tiny_service_with_worker(request, tmp_path_factory, tiny_model_dir, "pause", smollm2=False) as running:
        yield running


def wait_status(client, job_id: str, statuses: tuple[str, ...], what: str):
    def reached():
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in statuses else None

    return wait_for(reached, JOB_TIMEOUT, what, interval=0.3)


def metrics_steps(client, job_id: str) -> list[int]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000)
    return [event.data["step"] for event in events if event.type == "metrics"]


def test_pause_then_resume_finishes_the_job_with_every_step_once(service):
    user = service.make_user("pauser")
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=user.key, max_retries=0)
    file = client.files.create(file=("animals.jsonl", tiny_chat_jsonl()), purpose="fine-tune")
    # Enough steps that the job is still running when the pause arrives.
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=file.id, seed=5, hyperparameters={"n_epochs": 12, "batch_size": 1}
    )
    wait_for(lambda: len(metrics_steps(client, job.id)) >= 2, JOB_TIMEOUT, "the first training steps", interval=0.2)

    asked = client.fine_tuning.jobs.pause(job.id)
    assert asked.status in ("running", "paused")
    paused = wait_status(client, job.id, ("paused", "succeeded", "failed"), "the job to pause")
    assert paused.status == "paused", paused.error
    progress = paused.model_extra["progress"]
    total = progress["total_steps"]
    paused_at = progress["step"]
    assert 2 <= paused_at < total
    assert progress["checkpoint_step"] == paused_at and progress["pause_requested"] is False
    checkpoints = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100)]
    assert paused_at in checkpoints
    assert sorted(metrics_steps(client, job.id)) == list(range(1, paused_at + 1))
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(job.id)

    # The worker is free: another job runs to the end while this one waits.
    other = client.fine_tuning.jobs.create(model=TINY, training_file=file.id, hyperparameters={"n_epochs": 1, "batch_size": 8})
    assert wait_status(client, other.id, ("succeeded", "failed", "cancelled"), "the other job").status == "succeeded"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"

    # Resumed on another worker: the one that paused it is gone.
    for process in list(service.workers.processes):
        if process.poll() is None:
            service.workers.stop(process)
    service.workers.start()
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    final = wait_status(client, job.id, ("succeeded", "failed", "cancelled"), "the resumed job to finish")
    assert final.status == "succeeded", final.error
    steps = metrics_steps(client, job.id)
    assert sorted(steps) == list(range(1, total + 1))  # every step exactly once: no gap, no repeat
    messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert f"Resumed from step {paused_at}" in messages
    assert any(m.startswith("Paused: the job resumes from the checkpoint at step") for m in messages)
    assert final.model_extra["progress"]["attempt"] == 2
    started = [m for m in messages if m.startswith("Attempt ")]  # newest first
    assert len(started) == 2 and started[0].rsplit(" ", 1)[-1] != started[1].rsplit(" ", 1)[-1]
