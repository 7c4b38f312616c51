"""The mapping of a provider's job to a tunehouse request: every field carried
over, changed or dropped, with its reason; and the request it gives is one
tunehouse accepts."""

from domain.jobs.schemas import CreateJobRequest
from domain.moves.mapping import ORIGIN_CONNECTION, ORIGIN_JOB, ORIGIN_MODEL, map_job

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"

OPENAI_JOB = {
    "object": "fine_tuning.job", "id": "ftjob-abc123", "model": "gpt-4o-mini-2024-07-18",
    "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:acme:support:abc123", "status": "succeeded",
    "training_file": "file-train", "validation_file": "file-valid", "seed": 42,
    "user_provided_suffix": "support", "metadata": {"team": "support"},
    "integrations": [{"type": "wandb", "wandb": {"project": "p"}}],
    "hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.8},
    "method": {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.8}}},
}


def entries(mapped) -> dict:
    return {entry.field: entry for entry in mapped.mapping}


def valid_request(mapped) -> CreateJobRequest:
    return CreateJobRequest.model_validate({**mapped.request, "training_file": "file-x"})


def test_an_openai_job_carries_over_epochs_batch_seed_and_suffix_and_not_the_multiplier():
    mapped = map_job(OPENAI_JOB, base_model=BASE, connection="openai")
    assert mapped.problem is None
    request = valid_request(mapped)
    assert request.model == BASE and request.method.type == "supervised"
    hyperparameters = request.method.supervised.hyperparameters
    assert (hyperparameters.n_epochs, hyperparameters.batch_size) == (3, 8)
    assert hyperparameters.learning_rate_multiplier is None  # left to auto
    assert (request.suffix, request.seed) == ("support", 42)
    assert request.metadata == {"team": "support", ORIGIN_CONNECTION: "openai", ORIGIN_JOB: "ftjob-abc123",
                                ORIGIN_MODEL: "ft:gpt-4o-mini-2024-07-18:acme:support:abc123"}
    found = entries(mapped)
    assert found["n_epochs"].reason.startswith("carried over")
    assert found["batch_size"].reason.startswith("carried over")
    multiplier = found["learning_rate_multiplier"]
    assert (multiplier.provider_value, multiplier.value) == (1.8, "auto")
    assert multiplier.reason.startswith("not carried over") and "2e-4" in multiplier.reason.replace("0.0002", "2e-4")
    assert found["model"].reason.startswith("changed") and found["model"].value == BASE
    assert found["integrations"].reason.startswith("dropped")
    assert found["fine_tuned_model"].value == "conn:openai/ft:gpt-4o-mini-2024-07-18:acme:support:abc123"
    # Every field of the provider's job that means something for training is named.
    assert {"model", "method", "training_file", "validation_file", "n_epochs", "batch_size",
            "learning_rate_multiplier", "adapter", "suffix", "seed", "metadata", "integrations",
            "fine_tuned_model"} <= set(found)
    assert all(entry.reason for entry in mapped.mapping)


def test_auto_values_stay_auto_and_the_old_top_level_hyperparameters_are_read():
    job = {"id": "ftjob-1", "model": "gpt-3.5-turbo", "training_file": "file-t", "status": "running",
           "hyperparameters": {"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": "auto"}}
    mapped = map_job(job, base_model=BASE, connection="c")
    request = valid_request(mapped)
    assert request.method.supervised.hyperparameters.model_fields_set == {"batch_size"}
    found = entries(mapped)
    assert found["n_epochs"].value == "auto" and "auto rule" in found["n_epochs"].reason
    assert found["validation_file"].reason.startswith("none on the provider")
    assert found["fine_tuned_model"].value is None


def test_dpo_carries_beta_and_its_base_rate_is_named():
    job = {"id": "ftjob-2", "model": "m", "training_file": "file-t",
           "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2,
                                                                  "learning_rate_multiplier": 2}}}}
    mapped = map_job(job, base_model=BASE, connection="c")
    request = valid_request(mapped)
    assert request.method.type == "dpo"
    assert request.method.dpo.hyperparameters.beta == 0.2
    found = entries(mapped)
    assert found["beta"].reason.startswith("carried over")
    assert "5e-05" in found["learning_rate_multiplier"].reason


def test_a_batch_larger_than_the_train_split_is_lowered_and_out_of_range_values_dropped():
    job = {"id": "ftjob-3", "model": "m", "training_file": "file-t", "seed": -5, "suffix": "a:b c" + "x" * 60,
           "hyperparameters": {"n_epochs": 500, "batch_size": 32}}
    mapped = map_job(job, base_model=BASE, connection="c", train_examples=20, held_out=2)
    request = valid_request(mapped)
    found = entries(mapped)
    assert request.method.supervised.hyperparameters.batch_size == 20
    assert found["batch_size"].reason.startswith("changed") and "20" in found["batch_size"].reason
    assert found["n_epochs"].value == "auto" and found["n_epochs"].reason.startswith("dropped")
    assert "20 and 2 examples" in found["training_file"].reason
    assert request.seed is None and "random seed" in found["seed"].reason
    assert len(request.suffix) == 40 and ":" not in request.suffix and found["suffix"].reason.startswith("changed")


def test_reinforcement_fine_tuning_cannot_move():
    job = {"id": "ftjob-4", "model": "o4-mini", "training_file": "file-t", "method": {"type": "reinforcement"}}
    mapped = map_job(job, base_model=BASE, connection="c")
    assert mapped.problem and "reinforcement" in mapped.problem


def test_from_another_tunehouse_user_values_carry_over_and_its_auto_ones_stay_auto():
    details = {
        "n_epochs": {"value": 2, "origin": "user", "reason": None},
        "batch_size": {"value": 4, "origin": "auto", "reason": "0.2% of ..."},
        "learning_rate_multiplier": {"value": 4, "origin": "user", "reason": None},
        "lora_r": {"value": 8, "origin": "user", "reason": None},
        "max_seq_length": {"value": 128, "origin": "user", "reason": None},
        "lora_dropout": {"value": 0.0, "origin": "default", "reason": "..."},
    }
    job = {"id": "ftjob-5", "model": "tiny-llama", "training_file": "file-t", "seed": 5, "user_provided_suffix": "ev",
           "hyperparameters": {name: detail["value"] for name, detail in details.items()},
           "method": {"type": "supervised", "supervised": {"hyperparameters": {
               name: detail["value"] for name, detail in details.items()}}},
           "hyperparameter_details": details, "fine_tuned_model": "ft:tiny-llama:peer:ev:ftjob-5"}
    mapped = map_job(job, base_model=BASE, connection="peer")
    request = valid_request(mapped)
    hyperparameters = request.method.supervised.hyperparameters
    assert (hyperparameters.n_epochs, hyperparameters.learning_rate_multiplier) == (2, 4)
    assert hyperparameters.batch_size is None
    assert hyperparameters.extra.lora_r == 8 and hyperparameters.extra.max_seq_length is None
    found = entries(mapped)
    assert found["learning_rate_multiplier"].reason.startswith("carried over: the provider is a tunehouse")
    assert found["batch_size"].value == "auto" and "(auto)" in found["batch_size"].reason
    assert found["max_seq_length"].reason.startswith("dropped")
    assert "lora_dropout" not in found


def test_a_tunehouse_job_not_yet_resolved_shows_its_requested_values():
    job = {"id": "ftjob-6", "model": "tiny-llama", "training_file": "file-t", "hyperparameter_details": None,
           "hyperparameters": {"n_epochs": 1, "batch_size": "auto", "learning_rate_multiplier": "auto", "lora_r": 4}}
    request = valid_request(map_job(job, base_model=BASE, connection="peer"))
    hyperparameters = request.method.supervised.hyperparameters
    assert hyperparameters.n_epochs == 1 and hyperparameters.extra.lora_r == 4


def test_provider_metadata_beyond_the_limit_is_dropped_and_said():
    job = {"id": "ftjob-7", "model": "m", "training_file": "file-t",
           "metadata": {f"k{i}": "v" for i in range(16)}}
    mapped = map_job(job, base_model=BASE, connection="c")
    request = valid_request(mapped)
    assert len(request.metadata) == 16 and request.metadata[ORIGIN_JOB] == "ftjob-7"
    assert "3 pair(s) dropped" in entries(mapped)["metadata"].reason


def test_a_malformed_provider_job_maps_to_a_valid_request_without_raising():
    job = {"id": "ftjob-8", "model": ["?"], "training_file": "file-t", "fine_tuned_model": 5, "seed": True,
           "suffix": 7, "metadata": "x", "method": {"type": None, "supervised": "x"},
           "hyperparameters": {"n_epochs": True, "batch_size": [1], "learning_rate_multiplier": {"a": 1}}}
    mapped = map_job(job, base_model=BASE, connection="c")
    request = valid_request(mapped)
    assert request.method is None and request.metadata[ORIGIN_MODEL] == ""
    found = entries(mapped)
    assert found["n_epochs"].reason.startswith("dropped") and found["batch_size"].reason.startswith("dropped")
    assert found["fine_tuned_model"].value is None
