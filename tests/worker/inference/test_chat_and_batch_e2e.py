"""Chat completions and batches end to end: the API in this process, a real
training worker and a real inference worker (`tunehouse worker --queues
inference`), a tiny Llama and a LoRA fine-tune of it trained here. On the
embedded parts (SQLite, filesystem broker, local storage) and the production
parts (PostgreSQL, Redis, S3 over HTTP)."""

import io
import json
import time
import zipfile

import pytest
from openai import OpenAI

from domain.settings import Settings
from tests.conftest import fresh_postgres_database, make_bucket, redis_db, running_service, wait_for
from tests.api.files.test_endpoints import upload
from tests.e2e import TINY, Workers, start_job, tiny_chat_jsonl, wait_until_done
from tests.worker.evaluation.test_run_e2e import wait_for_status

HEARTBEAT_TIMEOUT = 3.0
PROMPT = [{"role": "user", "content": "What sound does a cat make?"}]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def inference(request, tmp_path_factory, tiny_model_dir):
    """(service, workers, fine-tuned model name) with one inference worker running."""
    tmp = tmp_path_factory.mktemp(f"inference-{request.param}")
    # Small generation batches: a batch of a few dozen lines runs in several
    # chunks, so there is a moment to kill its worker in the middle.
    common = dict(data_dir=tmp, base_models={TINY: f"path:{tiny_model_dir}"}, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                  inference_batch_size=4, inference_dtype="float32")
    if request.param == "sqlite-local":
        with running_service(request.param, Settings(**common)) as service:
            yield from _with_workers(service)
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    with fresh_postgres_database("tunehouse_inference") as database_url, redis_db("jobs") as broker_url:
        settings = Settings(
            **common, database_url=database_url, broker_url=broker_url,
            storage_url=f"s3://{make_bucket(endpoint)}/artifacts", s3_endpoint_url=endpoint,
        )
        with running_service(request.param, settings) as service:
            yield from _with_workers(service)


def _with_workers(service):
    workers = Workers(service.settings)
    workers.start("default,train")
    workers.start("inference")
    try:
        owner = service.make_user("owner")
        with service.client(owner.key) as client:
            job = wait_until_done(client, start_job(client, tiny_chat_jsonl(), n_epochs=2, learning_rate_multiplier=20)["id"])
            assert job["status"] == "succeeded", job
            adapter = client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter", follow_redirects=True).content
        yield service, workers, owner, job["fine_tuned_model"], adapter
    finally:
        workers.stop_all()


@pytest.fixture
def sdk(inference):
    service, _, owner, _, _ = inference
    return OpenAI(api_key=owner.key, base_url=f"{service.base_url}/v1", max_retries=0, timeout=120)


def local_greedy(tiny_model_dir, adapter_zip: bytes | None, tmp_path, max_tokens: int) -> str:
    """The same generation in this process, straight from the files: what the
    service answers must be exactly this."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.inference.generation import GenerationRequest, end_of_turn_ids, generate, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    adapter = None
    if adapter_zip is not None:
        from peft import PeftModel

        zipfile.ZipFile(io.BytesIO(adapter_zip)).extractall(tmp_path / "adapter")
        model = PeftModel.from_pretrained(model, tmp_path / "adapter", adapter_name="tuned").eval()
        adapter = "tuned"
    request = GenerationRequest(render_prompt(tokenizer, PROMPT), adapter=adapter, max_new_tokens=max_tokens, temperature=0)
    return generate(model, tokenizer, [request], eos_ids=end_of_turn_ids(tokenizer, model))[0].text


def test_chat_on_the_base_and_the_fine_tune_matches_local_generation(inference, sdk, tiny_model_dir, tmp_path):
    _, _, _, tuned, adapter = inference
    base_answer = sdk.chat.completions.create(model=TINY, messages=PROMPT, max_tokens=12, temperature=0)
    tuned_answer = sdk.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=12, temperature=0)
    assert base_answer.object == "chat.completion" and base_answer.id.startswith("chatcmpl-")
    assert base_answer.model == TINY and tuned_answer.model == tuned
    choice = tuned_answer.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = tuned_answer.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.completion_tokens <= 12
    assert base_answer.choices[0].message.content == local_greedy(tiny_model_dir, None, tmp_path, 12)
    assert choice.message.content == local_greedy(tiny_model_dir, adapter, tmp_path, 12)


def test_streaming_gives_the_same_text_in_chunks(inference, sdk):
    _, _, _, tuned, _ = inference
    whole = sdk.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=16, temperature=0)
    stream = sdk.chat.completions.create(
        model=tuned, messages=PROMPT, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_choices_and_seeds(inference, sdk):
    _, _, _, tuned, _ = inference
    params = dict(model=tuned, messages=PROMPT, max_tokens=8, temperature=1.0, n=3, seed=7)
    first, again = sdk.chat.completions.create(**params), sdk.chat.completions.create(**params)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


def test_another_users_fine_tune_does_not_exist_for_you(inference):
    service, _, _, tuned, _ = inference
    stranger = service.make_user("stranger")
    with service.client(stranger.key) as client:
        response = client.post("/v1/chat/completions", json={"model": tuned, "messages": PROMPT})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_a_shared_fine_tune_answers_its_sharee_until_revoked(inference, sdk):
    """Chat, streamed chat, a batch line and an evaluation of the sharee's,
    and the download, answer as for the owner; after the revoke, each is a
    404 at once (domain/sharing)."""
    import openai

    service, _, owner, tuned, adapter = inference
    job_id = tuned.rsplit(":", 1)[-1]  # a fine-tune's id ends with its job's
    sharee = service.make_user("sharee")
    theirs = OpenAI(api_key=sharee.key, base_url=f"{service.base_url}/v1", max_retries=0, timeout=120)
    with service.client(owner.key) as owner_client:
        share_id = owner_client.post(f"/v1/models/{tuned}/shares", json={"user": sharee.name}).json()["id"]
    owners = sdk.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=6, temperature=0)
    answer = theirs.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=6, temperature=0)
    assert answer.model == tuned and answer.choices[0].message.content == owners.choices[0].message.content
    stream = theirs.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == owners.choices[0].message.content
    line = {"custom_id": "shared", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": tuned, "messages": PROMPT, "max_tokens": 6, "temperature": 0}}
    batch = wait_for_batch(theirs, run_batch(theirs, [line]).id)
    assert batch.status == "completed" and batch.request_counts.completed == 1, batch.errors
    body = read_jsonl(theirs, batch.output_file_id)["shared"]["response"]["body"]
    assert body["choices"][0]["message"]["content"] == owners.choices[0].message.content
    with service.client(sharee.key) as client:
        file_id = upload(client, tiny_chat_jsonl()).json()["id"]
        evaluation = client.post("/v1/evaluations", json={"models": [tuned], "file_id": file_id, "split": "all",
                                                         "metrics": ["exact_match"], "max_tokens": 4, "limit": 4}).json()
        evaluation = wait_for_status(client, f"/v1/evaluations/{evaluation['id']}")
        assert evaluation["status"] == "succeeded" and tuned in evaluation["results"], evaluation["error"]
        theirs_zip = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter", follow_redirects=True).content
        weights = "adapter_model.safetensors"  # the zip's card is made at each download; the weights are the owner's
        assert zipfile.ZipFile(io.BytesIO(theirs_zip)).read(weights) == zipfile.ZipFile(io.BytesIO(adapter)).read(weights)
        with service.client(owner.key) as owner_client:
            owner_client.delete(f"/v1/models/{tuned}/shares/{share_id}")
        for call in (lambda: theirs.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=2),
                     lambda: list(theirs.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=2,
                                                                  stream=True))):
            with pytest.raises(openai.NotFoundError):
                call()
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter").status_code == 404
        assert client.post("/v1/evaluations", json={"models": [tuned], "file_id": file_id}).status_code == 404
    batch = wait_for_batch(theirs, run_batch(theirs, [line]).id)
    error = read_jsonl(theirs, batch.error_file_id)["shared"]["response"]
    assert (error["status_code"], error["body"]["error"]["code"]) == (404, "model_not_found")


def test_a_prompt_longer_than_the_context_is_a_400(inference, sdk):
    import openai

    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "moo " * 5000}], max_tokens=2)
    assert error.value.code == "context_length_exceeded"


def batch_lines(tuned: str) -> list[dict]:
    def line(custom_id, model, content, **extra):
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0, **extra}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    lines = [line(f"req-{i}", [TINY, tuned][i % 2], f"What sound does animal {i} make?") for i in range(10)]
    lines.append(line("same-as-chat", tuned, PROMPT[0]["content"]))
    lines.append(line("no-model", "ft:nobody:x", "hi"))
    lines.append(line("bad-param", TINY, "hi", temperature=9))
    return lines


def run_batch(sdk, lines: list[dict]):
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    input_file = sdk.files.create(file=("batch.jsonl", content), purpose="batch")
    return sdk.batches.create(input_file_id=input_file.id, endpoint="/v1/chat/completions", completion_window="24h")


def wait_for_batch(sdk, batch_id: str, timeout: float = 180):
    def ended():
        batch = sdk.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "cancelled", "expired") else None

    return wait_for(ended, timeout, f"batch {batch_id} to end", interval=0.3)


def read_jsonl(sdk, file_id: str) -> dict[str, dict]:
    records = [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]
    by_custom_id = {record["custom_id"]: record for record in records}
    assert len(by_custom_id) == len(records), "a custom_id appears twice"
    return by_custom_id


def test_a_batch_mixing_base_and_fine_tune_answers_every_line(inference, sdk):
    _, _, _, tuned, _ = inference
    batch = wait_for_batch(sdk, run_batch(sdk, batch_lines(tuned)).id)
    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (13, 11, 2)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = read_jsonl(sdk, batch.output_file_id)
    errors = read_jsonl(sdk, batch.error_file_id)
    assert set(output) == {f"req-{i}" for i in range(10)} | {"same-as-chat"}
    assert set(errors) == {"no-model", "bad-param"}
    assert errors["no-model"]["response"]["status_code"] == 404
    assert errors["no-model"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert errors["bad-param"]["response"]["status_code"] == 400
    assert errors["bad-param"]["response"]["body"]["error"]["param"] == "temperature"
    record = output["same-as-chat"]
    assert record["id"].startswith("batch_req_") and record["error"] is None
    assert record["response"]["status_code"] == 200
    body = record["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == tuned
    # Run in a padded batch beside other rows and adapters, the answer is the
    # one a lone chat request gets.
    alone = sdk.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=6, temperature=0)
    assert body["choices"][0]["message"]["content"] == alone.choices[0].message.content
    assert sdk.files.retrieve(batch.output_file_id).purpose == "batch_output"


def chat_lines(prefix: str, models: list[str], text: str, count: int, **parameters) -> list[dict]:
    """`count` batch lines "{prefix}-{i}", the models taken in turn, asking "{text} {i}"."""
    return [
        {"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": models[i % len(models)], "messages": [{"role": "user", "content": f"{text} {i}"}],
                  **parameters}}
        for i in range(count)
    ]


def test_a_killed_inference_worker_loses_and_repeats_no_line(inference, sdk):
    _, workers, _, tuned, _ = inference
    lines = chat_lines("line", [TINY, tuned], "Count to", 40, max_tokens=48, temperature=0)
    batch = run_batch(sdk, lines)

    def partly_done():
        counts = sdk.batches.retrieve(batch.id).request_counts
        return 0 < counts.completed < counts.total

    wait_for(partly_done, 120, "the batch to be partly done", interval=0.05)
    inference_worker = workers.processes[1]
    workers.kill(inference_worker)
    workers.processes[1] = workers.start("inference")
    ended = wait_for_batch(sdk, batch.id)
    assert ended.status == "completed"
    assert (ended.request_counts.completed, ended.request_counts.failed) == (40, 0)
    output = read_jsonl(sdk, ended.output_file_id)
    assert set(output) == {f"line-{i}" for i in range(40)}


def test_cancelling_a_running_batch_keeps_what_is_done(inference, sdk):
    _, _, _, tuned, _ = inference
    lines = chat_lines("c", [tuned], "Tell", 60, max_tokens=64)
    batch = run_batch(sdk, lines)
    wait_for(lambda: sdk.batches.retrieve(batch.id).request_counts.completed > 0, 120, "a first answered chunk", interval=0.05)
    assert sdk.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    ended = wait_for_batch(sdk, batch.id)
    assert ended.status == "cancelled" and ended.cancelled_at
    done = ended.request_counts.completed
    assert 0 < done < 60
    assert len(read_jsonl(sdk, ended.output_file_id)) == done


def test_a_chat_is_answered_while_another_streams(inference, sdk):
    """Both run in the one inference worker at once (its decode loop), not one after the other."""
    _, _, _, tuned, _ = inference
    long_stream = sdk.chat.completions.create(model=TINY, messages=PROMPT, max_tokens=2000, temperature=0, stream=True)
    chunks = iter(long_stream)
    next(chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content)  # it is generating
    short = sdk.chat.completions.create(model=tuned, messages=PROMPT, max_tokens=4, temperature=0)
    assert short.choices[0].finish_reason in ("stop", "length")
    rest = list(chunks)  # the long answer was still being written when the short one was done
    assert rest and rest[-1].choices[0].finish_reason == "length"


def test_a_stopped_inference_worker_hands_its_batch_back(inference, sdk):
    """SIGTERM (Celery's warm shutdown) to a worker running tasks in threads:
    the batch keeps what is answered, goes back to the queue, and another
    worker finishes it; no line is lost or answered twice."""
    _, workers, _, tuned, _ = inference
    lines = chat_lines("t", [TINY, tuned], "Spell", 40, max_tokens=48, temperature=0)
    batch = run_batch(sdk, lines)
    wait_for(lambda: sdk.batches.retrieve(batch.id).request_counts.completed > 0, 120, "a first answer", interval=0.05)
    worker = workers.processes[1]
    stopped_at = time.monotonic()
    workers.stop(worker, timeout=60)
    assert time.monotonic() - stopped_at < 30, "the warm shutdown waited for the whole batch"
    workers.processes[1] = workers.start("inference")
    ended = wait_for_batch(sdk, batch.id)
    assert ended.status == "completed"
    assert (ended.request_counts.completed, ended.request_counts.failed) == (40, 0)
    assert set(read_jsonl(sdk, ended.output_file_id)) == {f"t-{i}" for i in range(40)}
