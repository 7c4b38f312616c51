"""The fine-tuning jobs API without a worker: creation checks, listing, cancel,
isolation. (Training end to end is in tests/worker/training/test_job_e2e.py.)"""

import openai
import pytest

from tests.api.files.test_endpoints import upload
from tests.chat_data import batch_jsonl, chat_jsonl, preference_jsonl

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def training_file(client, n: int = 20) -> str:
    response = upload(client, chat_jsonl(n))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def create(client, **body):
    return client.post("/v1/fine_tuning/jobs", json={"model": BASE, **body})


def test_create_returns_a_queued_openai_job(alice, alice_user):
    file_id = training_file(alice)
    response = create(alice, training_file=file_id, suffix="first", seed=7, metadata={"team": "nlp"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job"
    assert job["id"].startswith("ftjob-")
    assert (job["status"], job["model"], job["training_file"]) == ("queued", BASE, file_id)
    assert job["hyperparameters"] == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert job["method"]["type"] == "supervised"
    assert (job["seed"], job["user_provided_suffix"], job["metadata"]) == (7, "first", {"team": "nlp"})
    assert job["fine_tuned_model"] is None and job["error"] is None
    assert job["organization_id"] == alice_user.name

    events = alice.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()
    messages = [e["message"] for e in events["data"]]
    assert messages[0] == "Job queued"  # newest first
    assert f"Files validated: 18 training examples from {file_id}; evaluation on the file's TEST split (2 examples)" in messages
    assert all(e["object"] == "fine_tuning.job.event" and e["id"].startswith("ft-event-") for e in events["data"])


def test_explicit_and_extension_hyperparameters_are_kept(alice):
    file_id = training_file(alice)
    response = create(
        alice,
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "extra": {"lora_r": 4, "packing": False}}}},
    )
    assert response.status_code == 200, response.text
    hyperparameters = response.json()["hyperparameters"]
    assert hyperparameters["n_epochs"] == 2 and hyperparameters["lora_r"] == 4 and hyperparameters["packing"] is False
    assert hyperparameters["batch_size"] == "auto"


def test_seed_is_drawn_and_recorded_when_not_given(alice):
    job = create(alice, training_file=training_file(alice)).json()
    assert isinstance(job["seed"], int) and 0 <= job["seed"] < 2**31


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "gpt-4o"}, "model", "model_not_found"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "invalid_hyperparameters"),
        ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size", "invalid_hyperparameters"),
        ({"hyperparameters": {"extra": {"lora_r": 0}}}, "hyperparameters.extra.lora_r", "invalid_hyperparameters"),
        ({"hyperparameters": {"extra": {"nonsense": 1}}}, "hyperparameters.extra.nonsense", "invalid_hyperparameters"),
        ({"hyperparameters": {"batch_size": 64}}, "hyperparameters.batch_size", "invalid_hyperparameters"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": -1}}}},
            "method.supervised.hyperparameters.learning_rate_multiplier",
            "invalid_hyperparameters",
        ),
        ({"method": {"type": "dpo"}}, "training_file", "invalid_file_format"),
        ({"method": {"type": "reinforcement"}}, "method.type", "unsupported_method"),
        ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta", "invalid_hyperparameters"),
        ({"suffix": "has:colon"}, "suffix", "invalid_value"),
        ({"seed": -1}, "seed", "invalid_value"),
        ({"surprise": True}, "surprise", "invalid_value"),
        ({"training_file": "file-doesnotexist0000000000000"}, "training_file", "file_not_found"),
        ({"validation_file": "file-doesnotexist0000000000000"}, "validation_file", "file_not_found"),
        ({"hyperparameters": []}, "hyperparameters", "invalid_hyperparameters"),
        ({"hyperparameters": {"n_epochs": 3.0}}, "hyperparameters.n_epochs", "invalid_hyperparameters"),
        ({"hyperparameters": {"lora_r": 8}}, "hyperparameters.lora_r", "invalid_hyperparameters"),
        ({"hyperparameters": {"extra": {"batch_size": 8}}}, "hyperparameters.extra.batch_size", "invalid_hyperparameters"),
        ({"hyperparameters": {"extra": "lora"}}, "hyperparameters.extra", "invalid_hyperparameters"),
        (
            {"hyperparameters": {"batch_size": 2, "extra": {"gradient_accumulation_steps": 4}}},
            "hyperparameters.extra.gradient_accumulation_steps",
            "invalid_hyperparameters",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"extra": {"target_modules": []}}}}},
            "method.supervised.hyperparameters.extra.target_modules",
            "invalid_hyperparameters",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 64}}}},
            "method.supervised.hyperparameters.batch_size",
            "invalid_hyperparameters",
        ),
        (
            {"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}},
            "hyperparameters",
            None,
        ),
        ({"method": {"type": "supervised", "dpo": {}}}, "method", "invalid_method"),
        ({"metadata": {"k": "v" * 513}}, "metadata", "invalid_value"),
    ],
)
def test_requests_that_cannot_train_are_refused_and_nothing_is_queued(alice, body, param, code):
    body = {"training_file": training_file(alice), **body}
    response = alice.post("/v1/fine_tuning/jobs", json={"model": BASE, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert alice.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_training_files_must_be_fine_tune_files_of_the_caller(alice, bob):
    batch_file = upload(alice, batch_jsonl(3), purpose="batch").json()["id"]
    response = create(alice, training_file=batch_file)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_file_purpose"

    alices_file = training_file(alice)
    response = create(bob, training_file=alices_file)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "file_not_found"
    assert bob.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_a_file_with_only_test_examples_cannot_train(alice):
    only_test = upload(alice, chat_jsonl(10, split="TEST")).json()["id"]
    response = create(alice, training_file=only_test)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_training_examples"


def test_cancel_a_queued_job(alice):
    job = create(alice, training_file=training_file(alice)).json()
    cancelled = alice.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = alice.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "job_not_cancellable"
    events = alice.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert events[0]["message"] == "Job cancelled"


def test_list_paginates_and_filters_by_metadata(alice):
    file_id = training_file(alice)
    ids = [create(alice, training_file=file_id, metadata={"run": str(i % 2)}).json()["id"] for i in range(3)]
    page = alice.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]] and page["has_more"] is True
    rest = alice.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": page["last_id"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    filtered = alice.get("/v1/fine_tuning/jobs", params={"metadata[run]": "0"}).json()
    assert [j["id"] for j in filtered["data"]] == [ids[2], ids[0]]


def test_event_pagination(alice):
    job_id = create(alice, training_file=training_file(alice)).json()["id"]
    everything = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    assert len(everything) == 3
    first = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1}).json()
    assert first["has_more"] is True
    rest = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": first["last_id"]}).json()
    assert [e["id"] for e in first["data"] + rest["data"]] == [e["id"] for e in everything]


def test_artifacts_are_not_there_before_the_job_runs(alice):
    job_id = create(alice, training_file=training_file(alice)).json()["id"]
    for suffix, code in [("recipe", "recipe_not_ready"), ("adapter", "adapter_not_ready"), ("merged", "adapter_not_ready")]:
        response = alice.get(f"/v1/fine_tuning/jobs/{job_id}/{suffix}")
        assert response.status_code == 409, suffix
        assert response.json()["error"]["code"] == code
    assert alice.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"] == []
    assert alice.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"] == []


def test_another_users_job_is_404_everywhere(alice, bob):
    job_id = create(alice, training_file=training_file(alice), metadata={"k": "v"}).json()["id"]
    for method, suffix in [
        ("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/checkpoints"), ("GET", "/metrics"),
        ("GET", "/recipe"), ("GET", "/adapter"), ("GET", "/merged"),
    ]:
        response = bob.request(method, f"/v1/fine_tuning/jobs/{job_id}{suffix}")
        assert response.status_code == 404, suffix
    assert bob.get("/v1/fine_tuning/jobs", params={"metadata[k]": "v"}).json()["data"] == []
    assert alice.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "queued"


def test_models_lists_base_models_and_refuses_unknown_ones(alice):
    models = alice.get("/v1/models").json()
    assert models["object"] == "list"
    assert {"id": BASE, "object": "model", "created": 0, "owned_by": "tunehouse"}.items() <= models["data"][0].items()
    assert alice.get(f"/v1/models/{BASE}").json()["id"] == BASE
    missing = alice.get("/v1/models/ft:nothing:here::ftjob-x")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert alice.delete(f"/v1/models/{BASE}").status_code == 403
    assert alice.delete("/v1/models/ft:nothing:here::ftjob-x").status_code == 404


def test_the_openai_sdk_drives_the_jobs_api(service, alice_user):
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=alice_user.key, max_retries=0)
    file = client.files.create(file=("train.jsonl", chat_jsonl(20)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=file.id, suffix="sdk", hyperparameters={"n_epochs": 1}, metadata={"via": "sdk"}
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 1
    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"via": "sdk"})] == [job.id]
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert events and events[0].message == "Job queued"
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id)) == []
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="nope", training_file=file.id)
    assert refused.value.code == "model_not_found"
    assert BASE in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ft:none")


def test_preview_shows_what_auto_resolves_to_and_creates_nothing(service, alice):
    file_id = training_file(alice)
    body = {"model": BASE, "training_file": file_id, "hyperparameters": {"n_epochs": 2, "extra": {"lora_r": 8}}}
    response = alice.post("/v1/fine_tuning/jobs/preview", json=body)
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["object"] == "fine_tuning.job.preview"
    # Embedded workers run on this CPU-only machine; production ones are GPU machines.
    embedded = service.settings.broker_url.startswith("filesystem://")
    assert preview["device"] == ("cpu" if embedded else "cuda")
    details = preview["hyperparameters"]
    assert details["n_epochs"] == {"value": 2, "origin": "user", "reason": None}
    assert details["lora_r"]["value"] == 8
    assert details["batch_size"]["origin"] == "auto" and details["batch_size"]["reason"]
    assert details["adapter"]["value"] == ("lora" if embedded else "qlora")
    assert alice.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_preview_refuses_what_create_would_refuse(alice, bob):
    file_id = training_file(alice)
    bad = alice.post("/v1/fine_tuning/jobs/preview", json={"model": BASE, "training_file": file_id,
                                                            "hyperparameters": {"n_epochs": 0}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "hyperparameters.n_epochs"
    foreign = bob.post("/v1/fine_tuning/jobs/preview", json={"model": BASE, "training_file": file_id})
    assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "file_not_found"
    unknown = alice.post("/v1/fine_tuning/jobs/preview", json={"model": "nope", "training_file": file_id})
    assert unknown.json()["error"]["param"] == "model"


def test_hyperparameter_refusals_say_what_is_allowed(alice):
    file_id = training_file(alice)
    cases = [
        ({"hyperparameters": {"extra": {"lora_r": 0}}}, "lora_r must be an integer between 1 and 512, got 0"),
        ({"hyperparameters": {"n_epochs": True}}, 'n_epochs must be "auto" or an integer between 1 and 100, got true'),
        (
            {"hyperparameters": {"lora_r": 8}},
            'lora_r is an extension: put it under "extra", e.g. {"extra": {"lora_r": ...}}',
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"extra": {"learning_rate": "auto"}}}}},
            'learning_rate must be a number > 0 and <= 1, got "auto" '
            '("auto" is not accepted for learning_rate; leave it out to get the default)',
        ),
        ({"method": {"type": "reinforcement"}},
         "method.type must be 'supervised' or 'dpo', got 'reinforcement' (reinforcement fine-tuning is not offered)."),
    ]
    for body, message in cases:
        for path in ("/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/preview"):
            response = alice.post(path, json={"model": BASE, "training_file": file_id, **body})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["message"] == message


def test_requested_hyperparameters_are_kept_as_given(alice):
    file_id = training_file(alice)
    hyperparameters = {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 2,
                       "extra": {"learning_rate": 1, "lora_alpha": 16, "target_modules": ["q_proj"], "adapter": "auto"}}
    for body in ({"hyperparameters": hyperparameters},
                 {"method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}}):
        job = create(alice, training_file=file_id, **body).json()
        # Integers stay integers (2, not 2.0); "auto" is shown for OpenAI's three only.
        assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 2,
                                          "learning_rate": 1, "lora_alpha": 16, "target_modules": ["q_proj"]}
        assert all(type(job["hyperparameters"][k]) is int for k in ("learning_rate_multiplier", "learning_rate"))


def anyof(schema: dict, name: str) -> list[dict]:
    return schema["properties"][name]["anyOf"]


def bounds(schema: dict, name: str) -> dict:
    """The numeric variant of a field: its type and bounds."""
    [number] = [v for v in anyof(schema, name) if v.get("type") in ("integer", "number")]
    return {k: v for k, v in number.items() if k in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}


def test_the_openapi_schema_types_every_hyperparameter(anonymous):
    schemas = anonymous.get("/openapi.json").json()["components"]["schemas"]
    ref = {"$ref": "#/components/schemas/Hyperparameters"}
    assert ref in anyof(schemas["CreateJobRequest"], "hyperparameters")
    # OpenAI's newer form takes the very same object.
    assert schemas["CreateJobRequest"]["properties"]["method"]["anyOf"][0] == {"$ref": "#/components/schemas/FineTuningMethod"}
    assert schemas["FineTuningMethod"]["properties"]["type"]["enum"] == ["supervised", "dpo"]
    assert ref in anyof(schemas["SupervisedMethod"], "hyperparameters")
    # DPO's object: the same fields plus beta.
    assert {"$ref": "#/components/schemas/DpoHyperparameters"} in anyof(schemas["DpoMethod"], "hyperparameters")
    dpo = schemas["DpoHyperparameters"]
    assert list(dpo["properties"]) == ["n_epochs", "batch_size", "learning_rate_multiplier", "extra", "beta"]
    assert bounds(dpo, "beta") == {"type": "number", "exclusiveMinimum": 0, "maximum": 2}

    top, extra = schemas["Hyperparameters"], schemas["ExtraHyperparameters"]
    assert list(top["properties"]) == ["n_epochs", "batch_size", "learning_rate_multiplier", "extra"]
    assert top["additionalProperties"] is False and extra["additionalProperties"] is False
    assert len(extra["properties"]) == 15
    auto = {"type": "string", "const": "auto"}
    for schema, name in [(top, n) for n in list(top["properties"])[:3]] + [(extra, n) for n in extra["properties"]]:
        field = schema["properties"][name]
        assert field["description"], name
        assert {"type": "null"} in field["anyOf"], name  # null: choose for me
        assert all("type" in v for v in field["anyOf"]), name  # nothing left untyped
        assert (auto in field["anyOf"]) == (name in {"n_epochs", "batch_size", "learning_rate_multiplier", "adapter",
                                                     "max_seq_length", "checkpoint_interval", "eval_interval",
                                                     "compute_dtype"}), name

    assert bounds(top, "n_epochs") == {"type": "integer", "minimum": 1, "maximum": 100}
    assert bounds(top, "batch_size") == {"type": "integer", "minimum": 1, "maximum": 256}
    assert bounds(top, "learning_rate_multiplier") == {"type": "number", "exclusiveMinimum": 0, "maximum": 100}
    assert bounds(extra, "learning_rate") == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    assert bounds(extra, "lora_r") == {"type": "integer", "minimum": 1, "maximum": 512}
    assert bounds(extra, "lora_dropout") == {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
    assert bounds(extra, "max_seq_length") == {"type": "integer", "minimum": 16, "maximum": 131072}
    assert bounds(extra, "eval_interval") == {"type": "integer", "minimum": 1, "maximum": 10**9}
    assert {"type": "string", "enum": ["qlora", "lora", "full"]} in anyof(extra, "adapter")
    assert {"type": "boolean"} in anyof(extra, "packing")
    [modules] = [v for v in anyof(extra, "target_modules") if v.get("type") == "array"]
    assert (modules["minItems"], modules["uniqueItems"]) == (1, True)
    assert {"type": "string", "const": "all-linear"} in anyof(extra, "target_modules")


# --------------------------------------------------------------------------- DPO


def preference_file(client, n: int = 20) -> str:
    response = upload(client, preference_jsonl(n))
    assert response.status_code == 200, response.text
    assert response.json()["report"]["format"] == "preference"
    return response.json()["id"]


def test_a_dpo_job_through_the_openai_sdk(service, alice_user):
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=alice_user.key, max_retries=0)
    file = client.files.create(file=("pairs.jsonl", preference_jsonl(20)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=file.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}},
    )
    assert job.status == "queued"
    assert job.method.type == "dpo"
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.method.dpo.hyperparameters.n_epochs == 2
    assert job.method.dpo.hyperparameters.batch_size == "auto"
    assert client.fine_tuning.jobs.retrieve(job.id).method.type == "dpo"


def test_each_method_takes_only_its_file_format(alice):
    pairs, chats = preference_file(alice), training_file(alice)
    refused = create(alice, training_file=pairs)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_file_format"
    assert 'method {"type": "dpo"}' in refused.json()["error"]["message"]
    mixed = create(alice, training_file=pairs, validation_file=chats, method={"type": "dpo"})
    assert mixed.status_code == 400
    assert (mixed.json()["error"]["param"], mixed.json()["error"]["code"]) == ("validation_file", "invalid_file_format")
    assert alice.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert create(alice, training_file=pairs, method={"type": "dpo"}).status_code == 200


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"beta": 0}, "beta must be \"auto\" or a number > 0 and <= 2, got 0"),
        ({"beta": "high"}, "beta must be"),
        ({"extra": {"beta": 0.1}}, "beta is a DPO hyperparameter"),
    ],
)
def test_dpo_hyperparameters_are_checked_at_their_path(alice, hyperparameters, message):
    response = create(alice, training_file=preference_file(alice),
                      method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert error["param"].startswith("method.dpo.hyperparameters")


def test_the_dpo_preview_resolves_beta_and_a_lower_learning_rate(alice):
    body = {"model": BASE, "training_file": preference_file(alice), "method": {"type": "dpo"}}
    preview = alice.post("/v1/fine_tuning/jobs/preview", json=body)
    assert preview.status_code == 200, preview.text
    details = preview.json()["hyperparameters"]
    assert details["beta"]["value"] == 0.1 and details["beta"]["origin"] == "auto"
    assert details["learning_rate"]["value"] == 5e-5
    supervised = alice.post("/v1/fine_tuning/jobs/preview",
                            json={"model": BASE, "training_file": training_file(alice)}).json()["hyperparameters"]
    assert "beta" not in supervised and supervised["learning_rate"]["value"] == 2e-4
