"""The worker's CUDA path, for a machine with an NVIDIA GPU (CI has none):

    python bench/cuda_check.py --model DIR

DIR: a Llama model folder (config, safetensors, tokenizer); `--make-tiny DIR`
on a machine with the bundled SmolLM2 writes the tiny random Llama the tests
use, small enough to carry to a GPU machine.

1. Fork safety of the worker's preload (worker/celery_app.py preload_ml_stack): the
   parent imports torch, transformers' Llama and the training recipe and must
   leave CUDA uninitialised; a forked child, as Celery's pool makes one for
   every task, then imports peft and bitsandbytes and uses the GPU.
2. In that child, QLoRA training with the service's recipe: 4-bit NF4 base
   (bitsandbytes), bf16 compute, LoRA adapter; the loss must fall.
3. Inference on CUDA with worker/inference: the engine loads the base in bf16
   and attaches the new adapter; one padded batch mixing base and fine-tune
   rows is compared with each row generated alone (seeded sampling); reference losses
   of the base and the fine-tune are computed on the GPU.

Prints what it checked; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HYPERPARAMETERS = dict(
    n_epochs=3, batch_size=4, learning_rate=2e-3, learning_rate_multiplier=1.0, adapter="qlora", lora_r=8,
    lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", max_seq_length=128, warmup_ratio=0.1,
    lr_scheduler="linear", weight_decay=0.0, gradient_accumulation_steps=1, packing=True, checkpoint_interval=0,
    eval_interval=0,
)
WORDS = ("apple", "pear", "plum", "fig", "kiwi", "lime", "date", "lemon", "melon", "grape", "peach", "cherry")


def examples() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Say {word} {1 + i % 3} times."},
                      {"role": "assistant", "content": " ".join([word] * (1 + i % 3))}]}
        for i, word in enumerate(WORDS)
    ]


def child(model_dir: Path, work: Path) -> int:
    import bitsandbytes  # noqa: F401  (what peft pulls in on import, here after the fork)
    import peft  # noqa: F401
    import torch

    from domain.settings import Settings
    from domain.storage import storage_from_url
    from worker.inference.engine import InferenceEngine
    from worker.inference.generation import GenerationRequest, generate, reference_losses, render_prompt
    from worker.training.recipe import TrainingConfig, TrainingHooks, train

    print(f"[child {os.getpid()}] GPU {torch.cuda.get_device_name(0)}")
    failures = []
    losses: list[float] = []
    config = TrainingConfig(base_model_dir=model_dir, hyperparameters=HYPERPARAMETERS, seed=0, device="cuda")
    result = train(config, examples(), [], work / "train", TrainingHooks(on_metrics=lambda m: losses.append(m["train_loss"])))
    print(f"[child {os.getpid()}] QLoRA: {result.steps} steps, method {result.method}")
    print(f"  losses: {[round(x, 3) for x in losses]}")
    if result.stopped or result.adapter_dir is None or not losses[-1] < losses[0]:
        failures.append("QLoRA training did not lower the loss")
    if "4" not in str(result.method.get("quantization")):
        failures.append(f"the base was not 4-bit quantised: {result.method}")

    # Inference: the adapter as a job leaves it in the artifact store.
    storage = storage_from_url(str(work / "artifacts"))
    for path in result.adapter_dir.iterdir():
        if path.is_file():
            storage.put_bytes(f"jobs/ftjob-cuda/adapter/{path.name}", path.read_bytes())
    settings = Settings(data_dir=work / "data", base_models={"tiny": f"path:{model_dir}"}, worker_device="cuda")
    engine = InferenceEngine(settings, storage)
    loaded = engine.base("tiny")
    name = engine.adapter(loaded, "ftjob-cuda")
    print(f"  engine: base on {loaded.device}, dtype {next(loaded.model.parameters()).dtype}, adapter {name}")
    prompts = [[{"role": "user", "content": f"Say {word} 2 times."}] for word in WORDS[:6]]
    requests = [
        GenerationRequest(render_prompt(loaded.tokenizer, p), adapter=name if i % 2 else None, max_new_tokens=8,
                          temperature=1.0, seed=i)  # seeded sampling: varied tokens, still reproducible per row
        for i, p in enumerate(prompts)
    ]
    batched = generate(loaded.model, loaded.tokenizer, requests, eos_ids=loaded.eos_ids, device=loaded.device)
    alone = [generate(loaded.model, loaded.tokenizer, [r], eos_ids=loaded.eos_ids, device=loaded.device)[0] for r in requests]
    same = sum(b.token_ids == a.token_ids for b, a in zip(batched, alone))
    print(f"  mixed batch of {len(requests)} (base and fine-tune rows) equal to each row alone: {same}/{len(requests)}")
    for request, answer in zip(requests, batched):
        print(f"    {'fine-tune' if request.adapter else 'base     '}: {answer.text!r} ({answer.finish_reason})")
    if same < len(requests):
        failures.append("batched generation differs from generation alone")
    items = [(p, " ".join([w] * 2)) for p, w in zip(prompts, WORDS)]
    base_losses = reference_losses(loaded.model, loaded.tokenizer, items, adapter=None, device=loaded.device)
    tuned_losses = reference_losses(loaded.model, loaded.tokenizer, items, adapter=name, device=loaded.device)
    base_mean = sum(loss for loss, _ in base_losses) / len(items)
    tuned_mean = sum(loss for loss, _ in tuned_losses) / len(items)
    print(f"  reference loss: base {base_mean:.3f}, fine-tune {tuned_mean:.3f}")
    if not tuned_mean < base_mean:
        failures.append("the fine-tune's reference loss is not below the base's")
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a Llama model folder to train and serve")
    parser.add_argument("--make-tiny", type=Path, help="write the tests' tiny random Llama here and exit")
    args = parser.parse_args()
    if args.make_tiny:
        from tests.tiny_model import build_tiny_llama, save_smollm2_tokenizer

        tokenizer_dir = save_smollm2_tokenizer(Path(tempfile.mkdtemp()))
        print(build_tiny_llama(args.make_tiny, tokenizer_dir))
        return 0

    # The parent: what preload_ml_stack imports, minus the service modules
    # around them (database, queue), which touch no GPU.
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401

    import worker.training.recipe  # noqa: F401

    print(f"torch {torch.__version__}")
    if torch.cuda.is_initialized():
        print("FAILED: the preload initialised CUDA in the parent")
        return 1
    print(f"[parent {os.getpid()}] preload done; CUDA not initialised; forking")
    with tempfile.TemporaryDirectory() as work:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(args.model.resolve(), Path(work))
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print("all checks passed" if code == 0 else f"child exited {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
