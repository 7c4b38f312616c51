"""Each row's adapter applied by our hooks (worker/inference/lora.py): the same
outputs as PEFT's own forward, one adapter or several per batch, and PEFT's
mixed batch for the adapters the hooks do not implement."""

from dataclasses import replace

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from worker.inference.generation import GenerationRequest, generate
from worker.inference.lora import adapter_groups, forward_with_adapters


def test_adapter_groups_are_runs_of_one_adapter_without_the_base():
    assert adapter_groups([None, None, "A", "A", "B", None]) == [("A", 2, 4), ("B", 4, 5)]
    assert adapter_groups(["A"]) == [("A", 0, 1)]
    assert adapter_groups([None]) == [] and adapter_groups([]) == []


def test_routed_rows_match_peft_with_that_adapter_active(peft_model, prompts):
    ids = torch.tensor([prompts["long"]] * 3)
    with torch.inference_mode():
        routed = forward_with_adapters(peft_model, [None, "A", "B"], input_ids=ids).logits
        expected = []
        for name in (None, "A", "B"):
            for layer in peft_model.modules():
                if hasattr(layer, "enable_adapters") and hasattr(layer, "lora_A"):
                    layer.enable_adapters(name is not None)
            if name is not None:
                peft_model.set_adapter(name)
            expected.append(peft_model.get_base_model()(input_ids=ids[:1]).logits[0])
        peft_model.set_adapter("A")
    for row, logits in enumerate(expected):
        assert torch.allclose(routed[row], logits, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)


def test_dora_adapters_cannot_share_a_batch_and_are_named(model_dir, tmp_path):
    from worker.inference.lora import unsupported

    dora = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True, task_type="CAUSAL_LM"))
    dora.save_pretrained(tmp_path / "dora")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "dora", adapter_name="D")
    assert "DoRA" in unsupported(model, "D")


def test_lora_on_the_embeddings_runs_through_peft_mixed_batches(model_dir, tokenizer, eos_ids, prompts, tmp_path):
    torch.manual_seed(3)
    embedded = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(
        r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    embedded.save_pretrained(tmp_path / "embedded")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "embedded",
                                      adapter_name="E").eval()
    requests = [GenerationRequest(prompts[name], adapter=adapter, max_new_tokens=6, temperature=0)
                for name, adapter in (("short", None), ("long", "E"), ("multi", "E"))]
    batched = generate(model, tokenizer, requests, eos_ids=eos_ids)
    assert batched == [generate(model, tokenizer, [request], eos_ids=eos_ids)[0] for request in requests]
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert batched[0] == generate(plain, tokenizer, [requests[0]], eos_ids=eos_ids)[0]
    assert batched[1] != generate(plain, tokenizer, [replace(requests[1], adapter=None)], eos_ids=eos_ids)[0]
