"""The model card on a real database (both backends): Hugging Face's front
matter, every section from the job's records, the curves as a PNG, the same
bytes for the same records, and a stored zip re-packed with the card."""

import io
import time
import uuid
import zipfile

import yaml

from domain.auth.models import User
from domain.evaluations.models import Evaluation
from domain.jobs.model_card import (
    CARD_NAME,
    CURVES_NAME,
    base_model_license,
    model_card,
    model_card_files,
    training_curves_png,
    write_zip_with_card,
)
from domain.jobs.models import FineTuningEvent, FineTuningJob

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _recipe(job_id: str, adapter: str, parent: dict | None) -> dict:
    """What worker/training/job.py records, in its shape."""
    hyperparameters = {
        "n_epochs": {"value": 3, "origin": "auto", "reason": "3 epochs for 18 examples"},
        "batch_size": {"value": 4, "origin": "user", "reason": None},
        "learning_rate": {"value": 0.0002, "origin": "auto", "reason": "LoRA's usual rate | scaled"},
        "adapter": {"value": adapter, "origin": "auto", "reason": "no CUDA: LoRA in fp32"},
        "target_modules": {"value": ["q_proj", "v_proj"], "origin": "default", "reason": "all linear layers"},
    }
    recipe = {
        "tunehouse_recipe_version": 1,
        "job_id": job_id,
        "training_method": "supervised",
        "base_model": {"id": BASE, "source": "bundled:smollm2", "revision": "sha256:abc123", "max_length": 8192},
        "hyperparameters": hyperparameters,
        "seed": {"value": 42, "origin": "user"},
        "data": {
            "training_file": {"id": "file-train1", "filename": "animals.jsonl", "sha256": "f" * 64, "bytes": 2048},
            "validation_file": None,
            "split": {"method": "explicit 'split' keys, else seeded hash draw", "seed": 7, "test_fraction": 0.1},
            "format": "chat", "train_examples": 18, "eval_examples": 2, "eval_source": "test split",
            "train_tokens": 540, "eval_tokens": 60, "token_length_p99": 31, "token_length_max": 33,
        },
        "method": {"adapter": adapter, "device": "cpu", "dtype": "float32", "compute_dtype": "float32",
                   "compute": {"dtype": "float32", "reason": "fp32 was faster in the probe"}, "optimizer": "adamw_torch"},
        "environment": {"python": "3.11.9", "torch": "2.5.1", "transformers": "4.46.0", "peft": "0.13.2",
                        "device": "cpu", "cpu": "Test CPU", "cpu_cores": 2},
        "rerun": "tunehouse train --recipe recipe.yaml --data <training file> --out <dir>",
        "result": {"steps": 3, "trained_tokens": 1620, "train_loss": 2.5, "valid_loss": 2.75},
    }
    if parent:
        recipe["parent"] = parent
        recipe["lineage"] = [parent["model"], BASE]
    return recipe


def recorded_job(service, who, *, adapter: str = "lora", evaluation_status: str = "succeeded", parent_job=None) -> FineTuningJob:
    """A succeeded job with what a worker records: recipe, metrics events, the
    automatic evaluation and (for LoRA) the adapter zip in storage."""
    job_id = f"ftjob-{uuid.uuid4().hex[:12]}"
    now = int(time.time())
    with service.state.sessionmaker() as session:
        owner = session.get(User, who.id)
        model_name = f"ft:{BASE}:{owner.name}:card:{job_id}"
        parent = None
        if parent_job is not None:
            parent = {"model": parent_job.fine_tuned_model, "fine_tuning_job": parent_job.id, "checkpoint_step": None,
                      "adapter": f"jobs/{parent_job.id}/adapter", "recipe": parent_job.recipe}
        recipe = _recipe(job_id, adapter, parent)
        evaluation_id = f"eval-{uuid.uuid4().hex[:12]}"
        session.add(Evaluation(
            id=evaluation_id, owner_id=owner.id, file_id="file-train1", split="test", models=[BASE, model_name],
            max_tokens=16, temperature=0.0, metrics=["exact_match", "chrf"], seed=1, fine_tuning_job_id=job_id,
            status=evaluation_status, items_total=2, items_done=4, created_at=now, attempt=1, handbacks=0,
            results={BASE: {"exact_match": 0.0, "chrf": 12.5}, model_name: {"exact_match": 0.5, "chrf": 61.25}}
            if evaluation_status == "succeeded" else {},
        ))
        job = FineTuningJob(
            id=job_id, owner_id=owner.id, model=BASE, training_file_id="file-train1", status="succeeded",
            requested_hyperparameters={"batch_size": 4}, hyperparameters=recipe["hyperparameters"], seed=42,
            seed_origin="user", suffix="card", model_deleted=False, result_files=[], created_at=now, finished_at=now,
            attempt=1, handbacks=0, fine_tuned_model=model_name, recipe=recipe, evaluation_id=evaluation_id,
            adapter_key=f"jobs/{job_id}/{'merged' if adapter == 'full' else 'adapter'}.zip", step=3, total_steps=3,
            parent_model=parent_job.fine_tuned_model if parent_job else None, parent_job_id=parent_job.id if parent_job else None,
        )
        session.add(job)
        session.flush()  # the events refer to it
        for step, (train_loss, valid_loss, lr) in enumerate([(3.0, None, 1e-4), (2.75, None, 2e-4), (2.5, 2.75, 1e-4)], 1):
            data = {"step": step, "train_loss": train_loss, "learning_rate": lr, "epoch": step / 3}
            if valid_loss is not None:
                data["valid_loss"] = valid_loss
            session.add(FineTuningEvent(id=f"ft-event-{uuid.uuid4().hex[:12]}", job_id=job_id, created_at=now,
                                        level="info", type="metrics", message=f"step {step}", data=data))
        session.commit()
        session.refresh(job)
        session.expunge(job)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as folder:
        folder.writestr("adapter_config.json", '{"r": 8}')
        folder.writestr("adapter_model.safetensors", b"weights" * 100)
        folder.writestr("README.md", "the short README packed at training")
    service.state.storage.put_bytes(job.adapter_key, archive.getvalue())
    return job


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def card_of(service, job) -> str:
    with service.state.sessionmaker() as session:
        return model_card(session, service.settings, session.get(FineTuningJob, job.id))


def test_the_card_holds_every_record_of_the_job(service, alice_user):
    job = recorded_job(service, alice_user)
    card = card_of(service, job)
    meta = front_matter(card)
    assert meta["base_model"] == BASE and meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert {"tunehouse", "lora", "sft"} <= set(meta["tags"])
    assert f"# {job.fine_tuned_model}" in card
    # Every hyperparameter with its origin and reason; a | in a reason does not break the table.
    assert "| n_epochs | 3 | auto | 3 epochs for 18 examples |" in card
    assert "| batch_size | 4 | user |  |" in card
    assert "| learning_rate | 0.0002 | auto | LoRA's usual rate \\| scaled |" in card
    assert "| target_modules | q_proj, v_proj | default |" in card
    assert "| seed | 42 | user |" in card
    # The data: file, sha256, counts, how the split was made.
    assert f"| training | animals.jsonl | `file-train1` | `{'f' * 64}` | 2048 |" in card
    assert "| training examples | 18 |" in card and "| held-out tokens | 60 |" in card
    assert "test fraction 0.1, seed 7" in card
    assert f"![Loss and learning rate by step]({CURVES_NAME})" in card
    # The evaluation beside the base model's.
    assert "| metric | base model | this fine-tune |" in card
    assert "| chrf | 12.5 | 61.25 |" in card and "| exact_match | 0 | 0.5 |" in card
    assert f"Trained from the base model `{BASE}`" in card
    assert "| transformers | 4.46.0 |" in card and "| cpu | Test CPU |" in card
    assert "PeftModel.from_pretrained" in card and f"/v1/fine_tuning/jobs/{job.id}/gguf?quantization=q8_0" in card
    assert "ollama create" in card


def test_the_same_records_give_the_same_bytes(service, alice_user):
    job = recorded_job(service, alice_user)
    with service.state.sessionmaker() as session:
        first = model_card_files(session, service.settings, session.get(FineTuningJob, job.id))
    with service.state.sessionmaker() as session:
        second = model_card_files(session, service.settings, session.get(FineTuningJob, job.id))
    assert set(first) == {CARD_NAME, CURVES_NAME}
    assert first == second
    assert first[CURVES_NAME].startswith(PNG_SIGNATURE)


def test_the_curves_follow_the_metrics():
    rows = [{"step": 1, "train_loss": 3.0, "learning_rate": 1e-4}, {"step": 2, "train_loss": 2.0, "valid_loss": 2.5, "learning_rate": 2e-4}]
    png = training_curves_png(rows)
    assert png.startswith(PNG_SIGNATURE)
    assert training_curves_png(rows[:1]) != png
    assert training_curves_png([]).startswith(PNG_SIGNATURE)  # a job without steps still has a picture


def test_an_unfinished_evaluation_and_a_full_fine_tune_say_so(service, alice_user):
    pending = card_of(service, recorded_job(service, alice_user, evaluation_status="running"))
    assert "is running; its metrics appear here once it has finished" in pending
    full = card_of(service, recorded_job(service, alice_user, adapter="full"))
    meta = front_matter(full)
    assert meta["library_name"] == "transformers" and "full" in meta["tags"]
    assert "PeftModel" not in full and "Every weight of the base model was trained" in full


def test_the_lineage_names_the_parent(service, alice_user):
    parent = recorded_job(service, alice_user)
    child = recorded_job(service, alice_user, parent_job=parent)
    card = card_of(service, child)
    assert f"Trained further from `{parent.fine_tuned_model}` (job `{parent.id}`)" in card
    assert f"1. `{parent.fine_tuned_model}`\n1. `{BASE}`" in card


def test_licenses_are_given_only_where_known():
    assert base_model_license("anything", "bundled:smollm2") == "apache-2.0"
    assert base_model_license("my-llama", "hf:meta-llama/Llama-3.2-1B-Instruct@main") == "llama3.2"
    assert base_model_license("HuggingFaceTB/SmolLM2-360M-Instruct", "hf:HuggingFaceTB/SmolLM2-360M-Instruct") == "apache-2.0"
    assert base_model_license("tiny-llama", "path:/models/tiny") is None


def test_a_stored_zip_is_repacked_with_the_card(service, alice_user):
    job = recorded_job(service, alice_user)
    files = {CARD_NAME: b"# the card\n", CURVES_NAME: PNG_SIGNATURE + b"curves"}
    out = io.BytesIO()
    write_zip_with_card(service.state.storage, job.adapter_key, files, out)
    archive = zipfile.ZipFile(io.BytesIO(out.getvalue()))
    assert sorted(archive.namelist()) == sorted(["adapter_config.json", "adapter_model.safetensors", CARD_NAME, CURVES_NAME])
    assert archive.read(CARD_NAME) == b"# the card\n"
    assert archive.read("adapter_model.safetensors") == b"weights" * 100


def test_a_sparse_recipe_still_gives_a_card(service, alice_user):
    """A recipe with bare values and nothing else (written by hand, or imported) is shown as far as it goes."""
    job = recorded_job(service, alice_user)
    with service.state.sessionmaker() as session:
        stored = session.get(FineTuningJob, job.id)
        stored.recipe, stored.evaluation_id, stored.hyperparameters = {"hyperparameters": {"n_epochs": 1}}, None, None
        session.commit()
        card = model_card(session, service.settings, stored)
    assert "| n_epochs | 1 |  |  |" in card and "No automatic evaluation" in card
    assert "## Libraries and hardware\n\nNot recorded." in card
