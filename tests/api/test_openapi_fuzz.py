"""Schemathesis fuzzes every operation of the service's own /openapi.json.

Authenticated as a fresh user, on both backends. Each operation gets valid
(positive) and, where it has query parameters or a body, invalid (negative)
generated requests. So that more than "not found" gets checked, operations
on an object also get generated requests on real objects of that user (a
file, a queued and a succeeded job, an evaluation, a batch, a base and a
fine-tuned model), and operations that create something get generated
bodies whose references (file ids, model, upload content) are made real.
Every answer must be a non-5xx with a status code, content type and body that
the schema documents, and an invalid request must be refused with a 4xx.

Nothing is excluded. POST /v1/chat/completions has no inference worker here:
for a model that exists it answers its documented 503 (`no_inference_worker`)
after the test service's 1 s queue timeout, which is accepted for that route
only.

One test loops over the operations: schemathesis' pytest integration that can
use the session `service` fixture (`schemathesis.pytest.from_fixture`) does
not run on pytest 9 (it sets `Function._nodeid`, which pytest 9 removed).
"""

import time
from itertools import product

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from domain.ids import new_id
from domain.jobs.models import FineTuningCheckpoint
from domain.jobs.events import add_event
from tests.api.batches.test_endpoints import batch_file
from tests.api.evaluations.test_endpoints import BASE, chat_file, succeeded_job
from tests.chat_data import batch_jsonl, chat_jsonl

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MAX_EXAMPLES = 20  # per operation and generation mode
MAX_EXAMPLES_ON_REAL_OBJECTS = 10  # per operation and object
CHAT = ("POST", "/v1/chat/completions")
# A valid chat request waits the 1 s queue timeout for its 503: only a few.
MAX_CHATS_WITH_A_REAL_MODEL = 3


def real_objects(service, user, client) -> dict[str, list[str]]:
    """Objects of `user` for each path parameter of the API."""
    file_id = chat_file(client)
    queued = client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id})
    assert queued.status_code == 200, queued.text
    evaluation = client.post("/v1/evaluations", json={"models": [BASE], "file_id": file_id})
    assert evaluation.status_code == 200, evaluation.text
    batch = client.post(
        "/v1/batches",
        json={"input_file_id": batch_file(client), "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert batch.status_code == 200, batch.text

    # A job as a training worker leaves it: recipe, metrics, a checkpoint, the adapter.
    job = succeeded_job(service, user, file_id, suffix="fuzz")
    with service.state.sessionmaker() as session:
        job = session.merge(job)
        job.recipe = {"model": BASE, "hyperparameters": {"n_epochs": 1}}
        job.total_steps = 2
        for step in (1, 2):
            add_event(session, job.id, f"Step {step}/2", type="metrics", data={"step": step, "train_loss": 1.0 / step})
        session.add(
            FineTuningCheckpoint(
                id=new_id("ftckpt_"),
                job_id=job.id,
                step_number=1,
                metrics={"train_loss": 1.0},
                storage_key=f"jobs/{job.id}/checkpoints/1",
                created_at=int(time.time()),
            )
        )
        session.commit()
    service.state.storage.put_bytes(job.adapter_key, b"PK\x05\x06" + bytes(18))  # an empty zip
    shared = client.post(f"/v1/models/{job.fine_tuned_model}/shares", json={"everyone": True})
    assert shared.status_code == 200, shared.text
    link = client.post("/v1/downloads", json={"path": f"/v1/fine_tuning/jobs/{job.id}/adapter"})
    assert link.status_code == 200, link.text
    # A connection back to this service itself (loopback is allowed in the embedded default).
    connection = client.post(
        "/v1/connections", json={"name": "fuzzconn", "base_url": f"{service.base_url}/v1", "api_key": user.key}
    )
    assert connection.status_code == 200, connection.text

    return {
        "file_id": [file_id],
        "batch_file_id": [batch.json()["input_file_id"]],
        "job_id": [queued.json()["id"], job.id],
        "evaluation_id": [evaluation.json()["id"]],
        "batch_id": [batch.json()["id"]],
        "model_id": [BASE, job.fine_tuned_model],
        "share_id": [shared.json()["id"]],
        "token": [link.json()["url"].rsplit("/", 1)[-1]],  # a signed download link
        "name": ["fuzzconn"],
        "item": ["0", "3"],  # an evaluation's items (409 until it has predictions)
    }


def real_references(objects: dict[str, list[str]]) -> dict[tuple[str, str], object]:
    """Per creating operation: what makes a generated body refer to real things."""
    file_id, batch_file_id = objects["file_id"][0], objects["batch_file_id"][0]

    def job(body: dict) -> None:
        body.update(model=BASE, training_file=file_id)
        if body.get("validation_file") is not None:
            body["validation_file"] = file_id

    def upload(body: dict) -> None:
        body["file"] = batch_jsonl(3) if body.get("purpose") == "batch" else chat_jsonl(12)

    return {
        ("POST", "/v1/files"): upload,
        ("POST", "/v1/fine_tuning/jobs"): job,
        ("POST", "/v1/fine_tuning/jobs/preview"): job,
        ("POST", "/v1/evaluations"): lambda body: body.update(file_id=file_id, models=[BASE]),
        ("POST", "/v1/batches"): lambda body: body.update(
            input_file_id=batch_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
        CHAT: lambda body: body.update(model=BASE),
    }


def fuzz(operation, mode: GenerationMode, max_examples: int, call, *, prepare=None, **fixed) -> None:
    # No example database (nothing written to the working tree); health checks
    # off: real HTTP calls are "too slow" for them, and a few strategies filter.
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        if prepare is not None and isinstance(case.body, dict):
            prepare(case.body)
        call(case)

    run()


def order(operation) -> tuple[bool, bool]:
    # Cancels and deletes last: the other operations still find the objects.
    return operation.method.upper() == "DELETE", operation.path.endswith("/cancel")


@pytest.mark.slow
def test_every_operation_answers_as_its_schema_says(service):
    user = service.make_user("fuzz")
    with service.client(user.key) as client:
        objects = real_objects(service, user, client)
    headers = {"Authorization": f"Bearer {user.key}"}
    schema = schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")
    schema.config.update(base_url=service.base_url)
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=order)
    assert len(operations) >= 30
    references = real_references(objects)
    session = requests.Session()

    def call(case) -> None:
        # The API's own answer: S3 downloads are a documented 307 to a presigned URL.
        response = case.call(session=session, headers=headers, timeout=30, allow_redirects=False)
        checks = CHECKS
        if (case.method.upper(), case.path) == CHAT and response.status_code == 503:
            assert response.json()["error"]["code"] == "no_inference_worker", response.text
            checks = [check for check in CHECKS if check is not not_a_server_error]
        case.validate_response(response, checks=checks, headers=headers)

    failures = []
    with session:
        for operation in operations:
            key = (operation.method.upper(), operation.path)
            runs = [(GenerationMode.POSITIVE, MAX_EXAMPLES, {})]
            # Invalid requests need something that can be invalid: a query
            # parameter or a body. The path parameters (ids) are any string.
            if operation.query or operation.body:
                runs.append((GenerationMode.NEGATIVE, MAX_EXAMPLES, {}))
            names = [parameter.name for parameter in operation.path_parameters]
            for values in product(*(objects[name] for name in names)) if names else []:
                fixed = {"path_parameters": dict(zip(names, values))}
                runs.append((GenerationMode.POSITIVE, MAX_EXAMPLES_ON_REAL_OBJECTS, fixed))
            if key in references:
                max_examples = MAX_CHATS_WITH_A_REAL_MODEL if key == CHAT else MAX_EXAMPLES
                runs.append((GenerationMode.POSITIVE, max_examples, {"prepare": references[key]}))
            for mode, max_examples, fixed in runs:
                try:
                    fuzz(operation, mode, max_examples, call, **fixed)
                # Schemathesis reports what it found as a FailureGroup (a
                # BaseExceptionGroup): fuzz every operation, then report all.
                except (Exception, BaseExceptionGroup) as exc:
                    what = "real references" if "prepare" in fixed else fixed or "generated"
                    failures.append(f"{operation.label} ({mode.value}, {what}):\n{exc}")
    assert not failures, "\n\n".join(failures)
