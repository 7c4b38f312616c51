"""The whole flow on the production stack, through the openai SDK: upload,
fine-tune, chat, batch, evaluation, downloads."""

import io
import json
import zipfile

import pytest
from openai import OpenAI

from tests.conftest import wait_for
from tests.e2e import TINY, tiny_chat_jsonl

pytestmark = pytest.mark.slow
TIMEOUT = 240


def test_upload_train_chat_batch_evaluate_and_download(stack):
    _, key = stack.make_user("prod")
    sdk = OpenAI(api_key=key, base_url=f"{stack.api.base_url}/v1", max_retries=0, timeout=120)

    training_file = sdk.files.create(file=("animals.jsonl", tiny_chat_jsonl()), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=TINY, training_file=training_file.id, suffix="prod", seed=5,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 20},
    )

    def finished():
        current = sdk.fine_tuning.jobs.retrieve(job.id)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    job = wait_for(finished, TIMEOUT, "the job", interval=0.5)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model in [model.id for model in sdk.models.list()]

    # Chat with the fine-tune, whole and streamed.
    question = [{"role": "user", "content": "What sound does a cat make?"}]
    answer = sdk.chat.completions.create(model=job.fine_tuned_model, messages=question, max_tokens=6, temperature=0)
    assert answer.choices[0].message.content and answer.usage.completion_tokens <= 6
    stream = sdk.chat.completions.create(
        model=job.fine_tuned_model, messages=question, max_tokens=6, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == answer.choices[0].message.content

    # A batch on the base and the fine-tune.
    lines = [
        {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": [TINY, job.fine_tuned_model][i % 2], "max_tokens": 4, "temperature": 0,
                  "messages": [{"role": "user", "content": f"What sound does animal {i} make?"}]}}
        for i in range(6)
    ]
    batch_file = sdk.files.create(file=("batch.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()), purpose="batch")
    batch = sdk.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h")

    def batch_ended():
        current = sdk.batches.retrieve(batch.id)
        return current if current.status in ("completed", "failed", "cancelled", "expired") else None

    batch = wait_for(batch_ended, TIMEOUT, "the batch", interval=0.5)
    assert batch.status == "completed" and batch.request_counts.completed == 6, batch
    answers = [json.loads(line) for line in sdk.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(a["custom_id"] for a in answers) == [f"line-{i}" for i in range(6)]
    assert all(a["response"]["status_code"] == 200 for a in answers)

    # The automatic evaluation (base vs fine-tune on the held-out split).
    evaluation_id = sdk.fine_tuning.jobs.retrieve(job.id).model_extra["evaluation_id"]

    def evaluated():
        current = sdk.get(f"/evaluations/{evaluation_id}", cast_to=object)
        return current if current["status"] in ("succeeded", "failed", "cancelled") else None

    evaluation = wait_for(evaluated, TIMEOUT, "the evaluation", interval=0.5)
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert set(evaluation["results"]) == {TINY, job.fine_tuned_model}

    with stack.client(key) as http:
        predictions = http.get(f"/v1/evaluations/{evaluation_id}/predictions", params={"format": "jsonl"})
        assert predictions.status_code == 200
        rows = [json.loads(line) for line in predictions.text.splitlines()]
        assert rows and all(job.fine_tuned_model in row for row in rows)
        adapter = zipfile.ZipFile(io.BytesIO(http.get(f"/v1/fine_tuning/jobs/{job.id}/adapter").content))
        assert "adapter_model.safetensors" in adapter.namelist()
        metrics_csv = http.get(f"/v1/files/{job.result_files[0]}/content").text
        assert metrics_csv.startswith("step,") and len(metrics_csv.splitlines()) > 2
