"""GGUF export on SmolLM2-135M-Instruct (CPU): time, size and agreement.

    .venv/bin/python bench/gguf_export.py [--data-dir DIR] [--lora-rank 16]

Merges a LoRA adapter (random, non-zero, every linear layer, as a LoRA job's
export merges its adapter) into the bundled SmolLM2, writes the merged model
as f16, q8_0 and q4_k_m GGUF files with worker/models/gguf_export.py, loads
each in llama.cpp (llama-cpp-python) and prints:

  - the merge time, each file's write time and size;
  - on FIXED_TEXT (every position's next-token distribution): top-1
    agreement and mean KL(reference || file) against transformers (fp32, the
    merged model) and, for q8_0 and q4_k_m, against the f16 file;
  - greedy decoding (up to 32 tokens, to the end of turn) on three chat
    prompts rendered by the tokenizer's chat template: how many answers are
    identical to transformers', and the share of transformers' tokens before
    the first difference.

The bundled model is converted once into --data-dir (a temporary folder by
default).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIXED_TEXT = """<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
Explain in a few sentences why the sky is blue.<|im_end|>
<|im_start|>assistant
Sunlight is made of many colours. When it passes through the atmosphere, the
short blue wavelengths are scattered by the molecules of the air much more than
the long red ones, so blue light reaches our eyes from every direction of the
sky. At sunrise and sunset the light travels through more air, most of the blue
is scattered away before it reaches us, and the sky turns orange and red.<|im_end|>
<|im_start|>user
Write a short list of three fruits and their colours.<|im_end|>
<|im_start|>assistant
1. Banana: yellow
2. Strawberry: red
3. Blueberry: dark blue<|im_end|>
The history of the bicycle begins in the early nineteenth century, when a
German inventor built a wooden running machine without pedals in 1817. Pedals
were added to the front wheel in the 1860s, and by 1885 the safety bicycle,
with two wheels of equal size and a chain driving the rear one, looked much
like the bicycles we ride today. Pneumatic tyres followed in 1888.
"""
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
GREEDY_TOKENS = 32


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    p, q = log_softmax(reference), log_softmax(other)
    return float((reference.argmax(-1) == other.argmax(-1)).mean()), float((np.exp(p) * (p - q)).sum(-1).mean())


def merged_smollm2(data_dir: Path, rank: int) -> tuple[Path, float]:
    import torch
    from peft import LoraConfig, get_peft_model

    from worker.models.catalog import BUNDLED_SMOLLM2_ID, load_causal_lm, resolve_base_model
    from worker.models.merge import merge_adapter

    base = resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", data_dir)
    model = load_causal_lm(base, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(0)  # lora_A's initialisation too: every run merges the same adapter
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 1e-3)
    peft_model.save_pretrained(data_dir / "bench-adapter")
    started = time.perf_counter()
    merged = merge_adapter(base, data_dir / "bench-adapter", data_dir / "bench-merged")
    return merged, time.perf_counter() - started


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def llama_cpp_greedy(path: Path, prompts: list[list[int]], eos: int) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, logits_all=True, verbose=False)
    answers = []
    try:
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            answer = []
            for _ in range(GREEDY_TOKENS):
                answer.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                if answer[-1] == eos:
                    break
                llm.eval([answer[-1]])
            answers.append(answer)
    finally:
        llm.close()
    return answers


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.models.gguf_export import write_gguf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="gguf-bench-"))

    merged, merge_seconds = merged_smollm2(data_dir, args.lora_rank)
    print(f"merge (LoRA r{args.lora_rank}, all linear layers, fp32): {merge_seconds:.1f} s")
    files = {}
    for quantization in ("f16", "q8_0", "q4_k_m"):
        files[quantization] = data_dir / f"smollm2-{quantization}.gguf"
        started = time.perf_counter()
        write_gguf(merged, files[quantization], quantization, name=f"smollm2-{quantization}")
        seconds = time.perf_counter() - started
        print(f"{quantization:7s} written in {seconds:5.1f} s, {files[quantization].stat().st_size / 2**20:6.1f} MiB")

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    ids = tokenizer(FIXED_TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].double().numpy()
    logits = {quantization: llama_cpp_logits(path, ids) for quantization, path in files.items()}
    print(f"\nnext-token distributions on FIXED_TEXT ({len(ids)} positions): top-1 agreement, mean KL (nats)")
    for quantization in files:
        top1, kl = agreement(reference, logits[quantization])
        line = f"{quantization:7s} vs transformers: {top1:.4f}, {kl:.5f}"
        if quantization != "f16":
            top1, kl = agreement(logits["f16"], logits[quantization])
            line += f"   vs f16: {top1:.4f}, {kl:.5f}"
        print(line)

    prompts = [
        tokenizer(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for chat in CHATS
    ]
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            output = model.generate(
                torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
            expected.append(output[0, len(prompt):].tolist())
    print(f"\ngreedy, up to {GREEDY_TOKENS} tokens on {len(CHATS)} chat prompts, against transformers:")
    for quantization, path in files.items():
        answers = llama_cpp_greedy(path, prompts, tokenizer.eos_token_id)
        same = sum(a == e for a, e in zip(answers, expected))
        prefix = []
        for answer, reference_answer in zip(answers, expected):
            common = next((i for i, (a, b) in enumerate(zip(answer, reference_answer)) if a != b), len(reference_answer))
            prefix.append(common / len(reference_answer))
        print(f"{quantization:7s} identical {same}/{len(CHATS)}, tokens before the first difference {np.mean(prefix):.0%}")
    print(f"\nfirst answer (transformers): {tokenizer.decode(expected[0])!r}")


if __name__ == "__main__":
    main()
