"""The inference engine: a base model loaded once, fine-tunes' adapters fetched
from a local artifact store and attached to it, least recently used evicted."""

from pathlib import Path

import pytest
import torch

from domain.settings import Settings
from domain.storage import storage_from_url
from tests.worker.inference import save_random_lora_adapter
from worker.models.catalog import BaseModelError
from worker.inference.engine import AdapterNotFound, InferenceEngine, adapter_name
from worker.inference.generation import GenerationRequest, generate, reference_losses, render_prompt

JOB_A = "ftjob-aaa111"
JOB_B = "ftjob-bbb222"
PROMPT = [{"role": "user", "content": "Hi there"}]
ANSWER = "Hello! How can I help?"


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    adapters = tmp_path_factory.mktemp("adapters")
    return {job_id: save_random_lora_adapter(tiny_model_dir, adapters / job_id, seed=seed)
            for seed, job_id in enumerate((JOB_A, JOB_B), 1)}


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    return Settings(data_dir=tmp_path, base_models={"tiny": f"path:{tiny_model_dir}"}, worker_device="cpu",
                    inference_dtype="float32")


@pytest.fixture
def storage(tmp_path, adapter_dirs):
    """The artifact store as training jobs leave it: each job's adapter under jobs/<id>/adapter/."""
    storage = storage_from_url(str(tmp_path / "artifacts"))
    for job_id, folder in adapter_dirs.items():
        for path in folder.iterdir():
            storage.put_bytes(f"jobs/{job_id}/adapter/{path.name}", path.read_bytes())
    return storage


def answer_loss(loaded, adapter: str | None) -> float:
    """The loss of a fixed answer: sensitive to every weight, unlike a random model's greedy tokens."""
    items = [(PROMPT, ANSWER)]
    [(loss, _)] = reference_losses(loaded.model, loaded.tokenizer, items, adapter=adapter, device=loaded.device)
    return loss


def greedy_tokens(loaded, adapter: str | None) -> list[int]:
    prompt_ids = render_prompt(loaded.tokenizer, PROMPT)
    request = GenerationRequest(prompt_ids, adapter=adapter, max_new_tokens=6, temperature=0)
    [result] = generate(loaded.model, loaded.tokenizer, [request], eos_ids=loaded.eos_ids, device=loaded.device)
    return result.token_ids


def test_a_base_model_is_loaded_once(settings, storage):
    engine = InferenceEngine(settings, storage)
    loaded = engine.base("tiny")
    assert engine.base("tiny") is loaded
    assert loaded.device == "cpu" and loaded.eos_ids == {loaded.tokenizer.eos_token_id}
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    with pytest.raises(BaseModelError, match="not offered"):
        engine.base("unknown")


def test_bases_beyond_the_limit_are_unloaded(settings, storage, tiny_model_dir):
    settings.base_models = {"tiny": f"path:{tiny_model_dir}", "tiny-again": f"path:{tiny_model_dir}"}
    engine = InferenceEngine(settings, storage, max_bases=1)
    first = engine.base("tiny")
    second = engine.base("tiny-again")
    assert second is not first
    assert engine.base("tiny") is not first  # loaded anew: the first was evicted


def test_adapters_are_fetched_and_attached_once(settings, storage):
    engine = InferenceEngine(settings, storage)
    loaded = engine.base("tiny")
    base_loss, base_tokens = answer_loss(loaded, None), greedy_tokens(loaded, None)

    name_a = engine.adapter(loaded, JOB_A)
    name_b = engine.adapter(loaded, JOB_B)
    assert (name_a, name_b) == (adapter_name(JOB_A), adapter_name(JOB_B))
    assert name_a.isidentifier() and name_a != name_b
    assert set(loaded.model.peft_config) == {name_a, name_b}
    assert list(loaded.adapters.items()) == [(JOB_A, name_a), (JOB_B, name_b)]
    assert (settings.work_dir / "inference" / "adapters" / JOB_A / "adapter_model.safetensors").is_file()

    peft_model = loaded.model
    assert engine.adapter(loaded, JOB_A) == name_a
    assert loaded.model is peft_model  # not wrapped or loaded again
    assert list(loaded.adapters) == [JOB_B, JOB_A]  # A is now the most recently used

    with_a, with_b = answer_loss(loaded, name_a), answer_loss(loaded, name_b)
    assert abs(with_a - base_loss) > 1e-3 and abs(with_b - base_loss) > 1e-3 and abs(with_a - with_b) > 1e-3
    assert answer_loss(loaded, None) == pytest.approx(base_loss, rel=1e-6)
    assert greedy_tokens(loaded, None) == base_tokens


def test_the_least_recently_used_adapter_is_evicted(settings, storage):
    engine = InferenceEngine(settings, storage, max_adapters_per_base=1)
    loaded = engine.base("tiny")
    name_a = engine.adapter(loaded, JOB_A)
    with_a = answer_loss(loaded, name_a)
    name_b = engine.adapter(loaded, JOB_B)
    assert list(loaded.adapters) == [JOB_B]
    assert set(loaded.model.peft_config) == {name_b}

    assert engine.adapter(loaded, JOB_A) == name_a  # back again, from the local copy
    assert set(loaded.model.peft_config) == {name_a}
    assert answer_loss(loaded, name_a) == pytest.approx(with_a, rel=1e-6)
    assert len(greedy_tokens(loaded, name_a)) == 6


def test_a_downloaded_adapter_is_reused_from_disk(settings, storage):
    InferenceEngine(settings, storage).adapter(InferenceEngine(settings, storage).base("tiny"), JOB_A)
    storage.delete_prefix(f"jobs/{JOB_A}")
    engine = InferenceEngine(settings, storage)
    loaded = engine.base("tiny")
    assert engine.adapter(loaded, JOB_A) == adapter_name(JOB_A)
    assert not list((settings.work_dir / "inference" / "adapters").glob(".*tmp*"))


def test_a_job_without_adapter_files_is_refused(settings, storage):
    engine = InferenceEngine(settings, storage)
    loaded = engine.base("tiny")
    with pytest.raises(AdapterNotFound, match="ftjob-missing"):
        engine.adapter(loaded, "ftjob-missing")
    with pytest.raises(ValueError, match="not a valid job id"):
        engine.adapter(loaded, "../escape")
    assert loaded.adapters == {}
    assert not (settings.work_dir / "inference" / "adapters" / "ftjob-missing").exists()


def test_adapter_names_are_identifiers_and_distinct():
    assert adapter_name("ftjob-abc") != adapter_name("ftjob_abc")
    assert adapter_name("ftjob_abc") == "a_ftjob_abc"
    assert all(adapter_name(job_id).isidentifier() for job_id in ("ftjob-abc", "x.y", "1-2"))


def test_the_device_follows_the_argument_then_the_settings(settings, storage):
    assert InferenceEngine(settings, storage, device="meta").device == "meta"
    assert InferenceEngine(settings, storage).device == "cpu"
    settings.worker_device = "auto"
    assert InferenceEngine(settings, storage).device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_weights_are_loaded_in_the_dtype_set_and_adapters_stay_in_fp32(settings, storage):
    settings.inference_dtype = "bfloat16"
    engine = InferenceEngine(settings, storage)
    with engine.acquire("tiny", JOB_A) as (loaded, name):
        assert loaded.dtype == torch.bfloat16 and engine.compute.dtype == "bfloat16"
        assert {p.dtype for n, p in loaded.model.named_parameters() if "lora_" not in n} == {torch.bfloat16}
        # Tiny LoRA matmuls are far cheaper in fp32 on a CPU; the update is added in bf16.
        assert {p.dtype for n, p in loaded.model.named_parameters() if "lora_" in n} == {torch.float32}
        request = GenerationRequest(render_prompt(loaded.tokenizer, PROMPT), adapter=name, max_new_tokens=4, temperature=0)
        submission = engine.loop.submit(loaded, [request])
        assert submission.wait(60) and len(submission.results()[0].token_ids) == 4


def test_acquire_loads_on_the_loop_thread_and_pins_what_it_returns(settings, storage):
    engine = InferenceEngine(settings, storage, max_adapters_per_base=1)
    with engine.acquire("tiny", JOB_A) as (loaded, name_a):
        assert name_a == adapter_name(JOB_A) and loaded.pins == {name_a: 1}
        # A second fine-tune goes beyond the limit of one adapter: A is in use, so it stays.
        with engine.acquire("tiny", JOB_B) as (same, name_b):
            assert same is loaded and set(loaded.model.peft_config) == {name_a, name_b}
            assert loaded.pins == {name_a: 1, name_b: 1}
        with engine.acquire("tiny", None) as (_, none):
            assert none is None and loaded.pins == {name_a: 1, None: 1}
    assert not loaded.pins
    with engine.acquire("tiny", JOB_B):  # A, no longer in use, is evicted now
        assert set(loaded.model.peft_config) == {adapter_name(JOB_B)}
    with pytest.raises(AdapterNotFound):
        with engine.acquire("tiny", "ftjob-missing"):
            pass


def test_a_base_in_use_is_not_unloaded_for_another(settings, storage, tiny_model_dir):
    import threading

    settings.base_models = {"tiny": f"path:{tiny_model_dir}", "tiny-again": f"path:{tiny_model_dir}"}
    engine = InferenceEngine(settings, storage, max_bases=1)
    got_second = threading.Event()

    def use_the_other() -> None:
        with engine.acquire("tiny-again", None):
            got_second.set()

    with engine.acquire("tiny", None) as (first, _):
        thread = threading.Thread(target=use_the_other)
        thread.start()
        assert not got_second.wait(1.5), "the second base was loaded while the first was in use"
    thread.join(30)
    assert got_second.is_set()
    assert engine.base("tiny") is not first  # unloaded for the other, then loaded again


def test_the_budget_is_measured_once_and_kept_on_disk(settings, storage):
    engine = InferenceEngine(settings, storage)
    loaded = engine.base("tiny")
    budget = engine.budget(loaded)
    assert budget.max_rows >= 1 and budget.prefill_tokens >= 64 and budget.how == "measured"
    assert engine.budget(loaded) is budget
    kept = settings.work_dir / "inference" / "budgets.json"
    assert kept.is_file() and "tiny|float32|" in kept.read_text()
    again = InferenceEngine(settings, storage)
    remembered = again.budget(again.base("tiny"))
    assert (remembered.max_rows, remembered.prefill_tokens, remembered.single_thread_rows) == (
        budget.max_rows, budget.prefill_tokens, budget.single_thread_rows)
    assert remembered.how.startswith("measured ")
    settings.inference_batch_size = 3
    fixed = InferenceEngine(settings, storage)
    assert fixed.budget(fixed.base("tiny")).max_rows == 3


def test_on_several_cpu_threads_the_decode_steps_are_also_measured_on_one(settings, storage):
    from worker.inference.budget import measure, torch_threads

    engine = InferenceEngine(settings, storage)
    model = engine.base("tiny").model
    with torch_threads(2):
        budget = measure(model, "cpu")
        assert torch.get_num_threads() == 2
    on_all, on_one = budget.figures["decode_tokens_per_second"], budget.figures["decode_tokens_per_second_one_thread"]
    assert on_all and on_one
    # The largest size where one thread was at least as fast (the figures are rounded: compared loosely).
    assert all(rows <= budget.single_thread_rows for rows, rate in on_one.items() if rate > on_all.get(rows, 0.0))
    if budget.single_thread_rows:
        assert on_one[budget.single_thread_rows] >= on_all.get(budget.single_thread_rows, 0.0)
    assert budget.max_rows in on_all.keys() | on_one.keys()
    # The one-thread ladder stops at the first size where it is clearly behind (below 0.8).
    assert all(on_one[rows] >= 0.79 * on_all.get(rows, 0.0) for rows in sorted(on_one)[:-1])
    assert "decode_tokens_per_second_one_thread" not in measure(model, "cpu").figures  # one thread already


def test_a_checkpoint_is_an_adapter_of_its_own_fetched_without_the_training_state(settings, storage, adapter_dirs):
    # A checkpoint's folder as training leaves it: the adapter of that step (here B's weights,
    # so that it differs from job A's final adapter) beside the optimizer's state.
    checkpoint_key = f"jobs/{JOB_A}/checkpoints/step-000004"
    for path in adapter_dirs[JOB_B].iterdir():
        storage.put_bytes(f"{checkpoint_key}/{path.name}", path.read_bytes())
    storage.put_bytes(f"{checkpoint_key}/training_state.pt", b"optimizer state, not for inference")
    engine = InferenceEngine(settings, storage)
    loaded = engine.base("tiny")
    final = engine.adapter(loaded, JOB_A)
    checkpoint_id = f"{JOB_A}.ckpt-step-4"
    checkpoint = engine.adapter(loaded, checkpoint_id, checkpoint_key)
    assert checkpoint != final and set(loaded.adapters) == {JOB_A, checkpoint_id}
    assert answer_loss(loaded, checkpoint) != pytest.approx(answer_loss(loaded, final), abs=1e-6)
    assert answer_loss(loaded, checkpoint) == pytest.approx(answer_loss(loaded, engine.adapter(loaded, JOB_B)), abs=1e-6)
    folder = settings.work_dir / "inference" / "adapters" / checkpoint_id
    assert sorted(path.name for path in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    with pytest.raises(ValueError, match="not where an adapter is stored"):
        engine.adapter(loaded, f"{JOB_A}.x", "files/file-abc")
