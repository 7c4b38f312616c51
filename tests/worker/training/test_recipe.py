"""The training recipe, end to end on the tiny random Llama (CPU, fp32
unless a test says otherwise: the auto dtype depends on the machine).

Runs are a few steps each; runs that several tests look at are made once per
module. Everything runs on one thread so that equal seeds give bit-equal losses.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker.training.recipe import TrainingConfig, TrainingHooks, TrainingResult, token_lengths, train

WORDS = ("apple", "pear", "plum", "fig", "kiwi", "lime", "date", "lemon", "melon", "grape")

BASE_HYPERPARAMETERS = dict(
    n_epochs=2,
    batch_size=4,  # 10 examples: 3 steps an epoch, the last one with 2 examples
    learning_rate=2e-2,
    learning_rate_multiplier=1.0,  # present in resolved values; ignored
    adapter="lora",
    lora_r=8,
    lora_alpha=16,
    lora_dropout=0.0,
    target_modules="all-linear",
    max_seq_length=128,
    warmup_ratio=0.1,  # ceil(0.6) = 1 warmup step
    lr_scheduler="linear",
    weight_decay=0.0,
    gradient_accumulation_steps=1,
    packing=True,
    compute_dtype="float32",
    checkpoint_interval=0,  # epoch ends only
    eval_interval=4,
)
TOTAL_STEPS = 6
METRIC_KEYS = {"step", "total_steps", "epoch", "train_loss", "learning_rate", "tokens_per_second", "trained_tokens",
               "peak_memory_bytes", "device_memory_bytes"}  # memory: worker/training/memory.py (CPU: no reserved figure)


def repeat_example(word: str, times: int) -> dict:
    return {"messages": [
        {"role": "system", "content": "Repeat words."},
        {"role": "user", "content": f"Say {word} {times} times."},
        {"role": "assistant", "content": " ".join([word] * times)},
    ]}


TRAIN_EXAMPLES = [repeat_example(word, 1 + index % 4) for index, word in enumerate(WORDS)]
EVAL_EXAMPLES = [repeat_example("apple", 2), repeat_example("kiwi", 3)]


@dataclass
class Run:
    result: TrainingResult
    work_dir: Path
    metrics: list[dict] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    checkpoints: list[tuple[int, list[str]]] = field(default_factory=list)  # (step, file names)

    @property
    def losses(self) -> list[float]:
        return [m["train_loss"] for m in self.metrics]


def run_training(model_dir, work_dir, *, seed=0, train_examples=TRAIN_EXAMPLES, eval_examples=EVAL_EXAMPLES,
                 stop_after_step=None, pause_after_step=None, resume_from=None, method="supervised",
                 **overrides) -> Run:
    hyperparameters = {**BASE_HYPERPARAMETERS, **overrides}
    metrics, messages, checkpoints = [], [], []

    def on_checkpoint(step, checkpoint_dir, step_metrics):
        assert checkpoint_dir.name == f"step-{step:06d}" and step_metrics["step"] == step
        checkpoints.append((step, sorted(path.name for path in checkpoint_dir.iterdir())))

    def should_stop():
        return stop_after_step is not None and bool(metrics) and metrics[-1]["step"] >= stop_after_step

    def should_pause():
        return pause_after_step is not None and bool(metrics) and metrics[-1]["step"] >= pause_after_step

    hooks = TrainingHooks(
        on_message=lambda message, data=None: messages.append(message),
        on_metrics=metrics.append,
        on_checkpoint=on_checkpoint,
        should_stop=should_stop,
        should_pause=should_pause,
    )
    config = TrainingConfig(base_model_dir=model_dir, hyperparameters=hyperparameters, seed=seed, device="cpu",
                            method=method)
    result = train(config, train_examples, eval_examples, work_dir, hooks=hooks, resume_from=resume_from)
    return Run(result=result, work_dir=work_dir, metrics=metrics, messages=messages, checkpoints=checkpoints)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, runs_dir) -> Run:
    return run_training(tiny_model_dir, runs_dir / "baseline")


@pytest.fixture(scope="module")
def with_dropout(tiny_model_dir, runs_dir) -> Run:
    """Dropout draws random numbers every step: what determinism and resuming must get right."""
    return run_training(tiny_model_dir, runs_dir / "dropout", lora_dropout=0.1, checkpoint_interval=2)


@pytest.fixture(scope="module")
def stopped(tiny_model_dir, runs_dir) -> Run:
    return run_training(tiny_model_dir, runs_dir / "resumed", lora_dropout=0.1, checkpoint_interval=2,
                        stop_after_step=2)


def adapter_weights(run: Run) -> dict[str, torch.Tensor]:
    return load_file(run.result.adapter_dir / "adapter_model.safetensors")


# --------------------------------------------------------------------------- tests


def test_a_short_run_lowers_the_loss_and_saves_a_working_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # One example over and over: each step's loss is comparable to the last.
    # (The tiny model's frozen, tied output layer keeps the loss near ln(49152) ~ 10.8.)
    same = [repeat_example("apple", 3)] * 8
    run = run_training(tiny_model_dir, tmp_path, train_examples=same, eval_examples=same[:1],
                       n_epochs=3, warmup_ratio=0)
    result = run.result
    assert not result.stopped and result.steps == result.total_steps == 6
    assert run.losses[-1] < run.losses[0] - 0.3
    assert result.train_loss == run.losses[-1]
    assert result.valid_loss == run.metrics[-1]["valid_loss"] < run.losses[0] - 0.3
    compute = result.method.pop("compute")
    assert result.method == {
        "adapter": "lora", "device": "cpu", "dtype": "float32", "compute_dtype": "float32", "autocast": False,
        "attention": "tunehouse_segments", "quantization": None,
        "optimizer": "adamw_torch", "gradient_checkpointing": False,
        "target_modules": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
        "training_method": "supervised",
    }
    assert compute["dtype"] == "float32" and compute["reason"].startswith("set to float32")
    assert result.adapter_dir == tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in result.adapter_dir.iterdir()}
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    input_ids = torch.tensor([[1, 4093, 198, 19556, 2, 198]])
    with torch.no_grad():
        before = base(input_ids=input_ids).logits
        tuned = PeftModel.from_pretrained(base, result.adapter_dir).eval()
        after = tuned(input_ids=input_ids).logits
    assert not torch.allclose(before, after, atol=1e-3)


def test_metrics_hook_gets_every_step(baseline, tokenizer_lengths):
    assert [m["step"] for m in baseline.metrics] == list(range(1, TOTAL_STEPS + 1))
    for metrics in baseline.metrics:
        expected = METRIC_KEYS | ({"valid_loss"} if metrics["step"] in (4, 6) else set())
        assert set(metrics) == expected, metrics["step"]
        assert metrics["total_steps"] == TOTAL_STEPS
        assert metrics["tokens_per_second"] > 0
    assert [m["epoch"] for m in baseline.metrics] == [0.3333, 0.6667, 1.0, 1.3333, 1.6667, 2.0]
    # Linear schedule, one warmup step.
    assert [m["learning_rate"] for m in baseline.metrics] == pytest.approx([0.0, 0.02, 0.016, 0.012, 0.008, 0.004])
    # trained_tokens: non-padding tokens, cumulative, all epochs.
    assert baseline.metrics[-1]["trained_tokens"] == baseline.result.trained_tokens == 2 * sum(tokenizer_lengths)
    assert [m["trained_tokens"] for m in baseline.metrics] == sorted(m["trained_tokens"] for m in baseline.metrics)


@pytest.fixture(scope="module")
def tokenizer_lengths(tiny_model_dir) -> list[int]:
    from transformers import AutoTokenizer

    return token_lengths(AutoTokenizer.from_pretrained(tiny_model_dir), TRAIN_EXAMPLES)


def test_phase_messages_and_checkpoints(baseline):
    assert baseline.messages == [
        "Loading base model",
        "Tokenized 12 examples (0 truncated to 128 tokens)",
        "Epoch 1/2",
        "Checkpoint at step 3",
        "Epoch 2/2",
        "Evaluating",
        "Evaluating",
        "Checkpoint at step 6",
        "Training done",
    ]
    files = ["README.md", "adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "training_state.pt"]
    assert baseline.checkpoints == [(3, files), (6, files)]
    # Older local checkpoints go once the caller had its turn.
    assert [p.name for p in (baseline.work_dir / "checkpoints").iterdir()] == ["step-000006"]
    state = json.loads((baseline.work_dir / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["metrics"]["valid_loss"] == baseline.result.valid_loss


def test_same_seed_gives_identical_losses_and_another_seed_does_not(with_dropout, tiny_model_dir, runs_dir):
    again = run_training(tiny_model_dir, runs_dir / "dropout-again", lora_dropout=0.1, checkpoint_interval=2)
    other_seed = run_training(tiny_model_dir, runs_dir / "dropout-seed-1", seed=1, lora_dropout=0.1)

    assert again.losses == with_dropout.losses
    assert [m.get("valid_loss") for m in again.metrics] == [m.get("valid_loss") for m in with_dropout.metrics]
    for name, tensor in adapter_weights(again).items():
        assert torch.equal(tensor, adapter_weights(with_dropout)[name])
    assert other_seed.losses != with_dropout.losses


def test_a_stopped_run_writes_nothing_further(stopped):
    result = stopped.result
    assert result.stopped and result.adapter_dir is None
    assert result.steps == 2 and result.total_steps == TOTAL_STEPS
    assert [m["step"] for m in stopped.metrics] == [1, 2]
    assert [step for step, _ in stopped.checkpoints] == [2]
    assert sorted(p.name for p in stopped.work_dir.iterdir()) == ["checkpoints"]
    assert [p.name for p in (stopped.work_dir / "checkpoints").iterdir()] == ["step-000002"]
    assert "Training done" not in stopped.messages


def test_stop_before_the_first_step(tiny_model_dir, tmp_path):
    hooks = TrainingHooks(should_stop=lambda: True)
    config = TrainingConfig(tiny_model_dir, dict(BASE_HYPERPARAMETERS), seed=0, device="cpu")
    result = train(config, TRAIN_EXAMPLES, EVAL_EXAMPLES, tmp_path, hooks=hooks)
    assert result.stopped and result.steps == 0 and result.adapter_dir is None
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_resume_continues_exactly_where_the_checkpoint_was(with_dropout, stopped, tiny_model_dir, tmp_path):
    # As the worker does after a crash: the checkpoint comes back from storage into a fresh work dir.
    checkpoint = shutil.copytree(stopped.work_dir / "checkpoints" / "step-000002", tmp_path / "downloaded")
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)  # plain data only
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 0, 2)

    resumed = run_training(tiny_model_dir, tmp_path / "work", lora_dropout=0.1, checkpoint_interval=2,
                           resume_from=checkpoint)

    assert resumed.messages[:3] == ["Loading base model", "Tokenized 12 examples (0 truncated to 128 tokens)",
                                    "Resumed from step 2"]
    assert [m["step"] for m in resumed.metrics] == [3, 4, 5, 6]
    torch.testing.assert_close(resumed.losses, with_dropout.losses[2:], rtol=1e-5, atol=0)
    assert resumed.metrics[-1]["trained_tokens"] == with_dropout.metrics[-1]["trained_tokens"]
    assert resumed.result.valid_loss == pytest.approx(with_dropout.result.valid_loss, rel=1e-5)
    expected = adapter_weights(with_dropout)
    for name, tensor in adapter_weights(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-7)
    assert [step for step, _ in resumed.checkpoints] == [3, 4, 6]


def test_a_paused_run_checkpoints_the_steps_it_did_and_resumes_exactly(with_dropout, tiny_model_dir, tmp_path):
    # A worker shutting down pauses between checkpoints (interval 2, paused after step 3):
    # it saves step 3 so that no step is lost or done twice.
    paused = run_training(tiny_model_dir, tmp_path / "paused", lora_dropout=0.1, checkpoint_interval=2,
                          pause_after_step=3)
    assert paused.result.stopped and paused.result.paused and paused.result.adapter_dir is None
    assert [m["step"] for m in paused.metrics] == [1, 2, 3]
    assert [step for step, _ in paused.checkpoints] == [2, 3]
    checkpoint = shutil.copytree(paused.work_dir / "checkpoints" / "step-000003", tmp_path / "downloaded")
    resumed = run_training(tiny_model_dir, tmp_path / "work", lora_dropout=0.1, checkpoint_interval=2,
                           resume_from=checkpoint)
    assert [m["step"] for m in resumed.metrics] == [4, 5, 6]
    torch.testing.assert_close(resumed.losses, with_dropout.losses[3:], rtol=1e-5, atol=0)
    expected = adapter_weights(with_dropout)
    for name, tensor in adapter_weights(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-7)


def test_a_pause_right_after_a_checkpoint_saves_no_second_copy(tiny_model_dir, tmp_path):
    paused = run_training(tiny_model_dir, tmp_path, lora_dropout=0.1, checkpoint_interval=2, pause_after_step=2)
    assert paused.result.paused and [step for step, _ in paused.checkpoints] == [2]


def test_resume_from_the_last_checkpoint_only_saves_the_adapter(with_dropout, tiny_model_dir, tmp_path):
    # The worker died after the final checkpoint but before the adapter was saved.
    checkpoint = shutil.copytree(with_dropout.work_dir / "checkpoints" / "step-000006", tmp_path / "downloaded")
    resumed = run_training(tiny_model_dir, tmp_path / "work", lora_dropout=0.1, checkpoint_interval=2,
                           resume_from=checkpoint)
    assert resumed.metrics == [] and resumed.checkpoints == []
    assert resumed.result.steps == TOTAL_STEPS and not resumed.result.stopped
    assert resumed.result.valid_loss == with_dropout.result.valid_loss
    assert resumed.result.train_loss == with_dropout.result.train_loss
    expected = adapter_weights(with_dropout)
    for name, tensor in adapter_weights(resumed).items():
        assert torch.equal(tensor, expected[name])


def test_resume_refuses_a_checkpoint_of_another_run_shape(stopped, tiny_model_dir, tmp_path):
    checkpoint = stopped.work_dir / "checkpoints" / "step-000002"
    with pytest.raises(ValueError, match="different run"):
        run_training(tiny_model_dir, tmp_path, batch_size=2, resume_from=checkpoint)


def test_gradient_accumulation_does_not_change_the_losses(baseline, tiny_model_dir, runs_dir):
    accumulated = run_training(tiny_model_dir, runs_dir / "accumulated", gradient_accumulation_steps=2)
    torch.testing.assert_close(accumulated.losses, baseline.losses, rtol=1e-5, atol=1e-5)
    assert accumulated.result.trained_tokens == baseline.result.trained_tokens


def test_packing_does_not_change_the_losses(baseline, tiny_model_dir, runs_dir):
    padded = run_training(tiny_model_dir, runs_dir / "padded", packing=False)
    torch.testing.assert_close(padded.losses, baseline.losses, rtol=0, atol=1e-4)
    torch.testing.assert_close(padded.result.valid_loss, baseline.result.valid_loss, rtol=0, atol=1e-4)
    assert padded.result.trained_tokens == baseline.result.trained_tokens


def test_segment_attention_computes_what_dense_masked_attention_does(baseline, tiny_model_dir, runs_dir,
                                                                    monkeypatch):
    """The same run through transformers' sdpa, which masks a packed row's
    examples from each other instead of cutting the row at their boundaries."""
    from worker.training import recipe

    monkeypatch.setattr(recipe, "segment_attention_supported", lambda config: False)
    dense = run_training(tiny_model_dir, runs_dir / "dense")
    assert dense.result.method["attention"] == "sdpa"
    torch.testing.assert_close(dense.losses, baseline.losses, rtol=0, atol=1e-4)
    torch.testing.assert_close(dense.result.valid_loss, baseline.result.valid_loss, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def same_example_runs(tiny_model_dir, runs_dir) -> dict[str, Run]:
    """fp32 and bf16 autocast, same seed, same batches: one example over and
    over, so the loss falls steadily and each step is comparable."""
    same = [repeat_example("apple", 3)] * 8
    return {
        dtype: run_training(tiny_model_dir, runs_dir / f"same-{dtype}", train_examples=same, eval_examples=same[:1],
                            n_epochs=3, warmup_ratio=0, lora_dropout=0.0, compute_dtype=dtype)
        for dtype in ("float32", "bfloat16")
    }


# bf16 keeps 8 bits of mantissa: logits of ~10 carry errors of a few hundredths
# per token. Measured on this model: at most 0.012 per step (0.1%), 0.003 on the
# validation loss (with the LoRA sums in fp32, recipe.lora_sums_in_fp32).
BF16_LOSS_TOLERANCE = 0.05


def test_bf16_autocast_trains_to_the_fp32_loss(same_example_runs):
    fp32, bf16 = same_example_runs["float32"], same_example_runs["bfloat16"]
    assert bf16.result.method["compute_dtype"] == "bfloat16" and bf16.result.method["autocast"]
    assert bf16.result.method["dtype"] == "float32"  # master weights; bf16 only in the matmuls
    assert bf16.losses[-1] < bf16.losses[0] - 0.3  # it learns
    torch.testing.assert_close(bf16.losses, fp32.losses, rtol=0, atol=BF16_LOSS_TOLERANCE)
    torch.testing.assert_close(bf16.result.valid_loss, fp32.result.valid_loss, rtol=0, atol=BF16_LOSS_TOLERANCE)
    # The adapter and the optimizer state stay fp32.
    assert {tensor.dtype for tensor in adapter_weights(bf16).values()} == {torch.float32}
    state = torch.load(bf16.work_dir / "checkpoints" / "step-000006" / "training_state.pt", weights_only=True)
    assert {t.dtype for s in state["optimizer"]["state"].values() for t in s.values() if t.dim()} == {torch.float32}


def test_the_compute_dtype_is_measured_or_forced_and_recorded(same_example_runs, tiny_model_dir, tmp_path):
    from worker.compute import choose_compute_dtype

    forced = same_example_runs["bfloat16"].result.method["compute"]
    assert forced["dtype"] == "bfloat16" and forced["reason"].startswith("set to bfloat16")
    assert forced["fp32_gflops"] > 0 and forced["bf16_gflops"] > 0  # the probe's figures, always on CPU
    assert same_example_runs["float32"].result.method["compute"]["reason"].startswith("set to float32")

    auto = run_training(tiny_model_dir, tmp_path, n_epochs=1, eval_examples=[], compute_dtype="auto").result.method
    measured = choose_compute_dtype("cpu")  # the same process: the same cached probe
    assert auto["compute"] == measured.as_dict()
    assert auto["compute_dtype"] == measured.dtype and auto["autocast"] == (measured.dtype == "bfloat16")
    if measured.dtype == "bfloat16":
        assert measured.bf16_gflops >= 1.2 * measured.fp32_gflops and "faster than fp32" in measured.reason
    else:
        assert measured.bf16_gflops < 1.2 * measured.fp32_gflops


def test_truncated_examples_are_counted(tiny_model_dir, tmp_path, tokenizer_lengths):
    max_seq_length = sorted(tokenizer_lengths)[len(tokenizer_lengths) // 2]
    too_long = sum(length > max_seq_length for length in tokenizer_lengths)
    assert 0 < too_long < len(TRAIN_EXAMPLES)

    run = run_training(tiny_model_dir, tmp_path, eval_examples=[], n_epochs=1, batch_size=10,
                       max_seq_length=max_seq_length)

    assert run.result.truncated_examples == too_long
    assert f"Tokenized 10 examples ({too_long} truncated to {max_seq_length} tokens)" in run.messages
    assert run.result.trained_tokens <= len(TRAIN_EXAMPLES) * max_seq_length
    assert run.result.valid_loss is None and "Evaluating" not in run.messages


def test_qlora_on_cpu_uses_4bit_weights_with_fp32_compute(tiny_model_dir, tmp_path):
    run = run_training(tiny_model_dir, tmp_path, adapter="qlora", n_epochs=1)
    assert run.result.method["quantization"] == {
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "float32",
    }
    assert run.result.method["optimizer"] == "adamw_torch"
    assert (run.result.adapter_dir / "adapter_model.safetensors").exists()


def test_qlora_on_cpu_computes_in_fp32_even_when_bf16_is_asked(tiny_model_dir, tmp_path):
    run = run_training(tiny_model_dir, tmp_path, adapter="qlora", n_epochs=1, eval_examples=[], compute_dtype="bfloat16")
    method = run.result.method
    assert method["compute_dtype"] == "float32" and not method["autocast"]
    assert method["compute"]["reason"].startswith("qlora on CPU computes in fp32")


def test_environment_info_on_cpu():
    from worker.training.environment import environment_info

    info = environment_info("cpu")
    assert info["device"] == "cpu" and info["cpu_cores"] >= 1 and info["cpu"]
    assert info["torch"] == torch.__version__
    for name in ("python", "transformers", "peft", "accelerate"):
        assert info[name]
    assert "bitsandbytes" in info
