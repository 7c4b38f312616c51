"""A tiny Llama built locally from a config, with SmolLM2's real tokenizer and
chat template, so a whole fine-tuning job runs on the CPU in seconds."""

from pathlib import Path

from worker.models.gguf import bundled_gguf_path

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def save_smollm2_tokenizer(dest: Path) -> Path:
    from transformers import AutoTokenizer

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(dest)
    return dest


def build_tiny_llama(dest: Path, tokenizer_dir: Path, seed: int = 0, *, config_class=None, **config) -> Path:
    """Random-init tiny Llama (safetensors) + tokenizer files in `dest`;
    `config_class` (e.g. Qwen2Config) and `config` change the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = (config_class or LlamaConfig)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_CONFIG, **config},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest
