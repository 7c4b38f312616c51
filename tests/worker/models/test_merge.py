"""Merged weights: base + LoRA adapter folded into a plain model that
computes what the adapter does."""

import pytest

from worker.models.catalog import BaseModelError, load_causal_lm, resolve_base_model
from worker.models.merge import merge_adapter


@pytest.fixture
def lora_adapter(tiny_model_dir, tmp_path):
    """A LoRA adapter on the tiny model whose lora_B is non-zero, so it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = resolve_base_model("tiny", str(tiny_model_dir), tmp_path)
    model = load_causal_lm(base, dtype=torch.float32).eval()
    input_ids = torch.tensor([[1, 17, 523, 88, 4012, 9, 2]])
    with torch.no_grad():
        base_logits = model(input_ids).logits

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.05)
        peft_logits = peft_model(input_ids).logits
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    return {
        "base": base,
        "adapter_dir": adapter_dir,
        "input_ids": input_ids,
        "base_logits": base_logits,
        "peft_logits": peft_logits,
    }


def test_merged_model_computes_what_the_adapter_does(lora_adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = merge_adapter(lora_adapter["base"], lora_adapter["adapter_dir"], tmp_path / "merged")

    names = {p.name for p in out_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.")]  # no staging leftovers

    merged = AutoModelForCausalLM.from_pretrained(out_dir, use_safetensors=True, trust_remote_code=False).eval()
    with torch.no_grad():
        merged_logits = merged(lora_adapter["input_ids"]).logits
    assert torch.allclose(merged_logits, lora_adapter["peft_logits"], atol=1e-5)
    assert (merged_logits - lora_adapter["base_logits"]).abs().max() > 1e-3


def test_merge_refuses_an_adapter_without_safetensors(lora_adapter, tmp_path):
    adapter_dir = lora_adapter["adapter_dir"]
    (adapter_dir / "adapter_model.safetensors").rename(adapter_dir / "adapter_model.bin")
    with pytest.raises(BaseModelError, match="safetensors"):
        merge_adapter(lora_adapter["base"], adapter_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
