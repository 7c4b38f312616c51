"""Helpers shared by the inference tests: models and LoRA adapters made on the spot."""

from pathlib import Path


def save_untied_model(tiny_model_dir: Path, dest: Path) -> Path:
    """The tiny Llama with its own random output layer instead of the tied embeddings.

    A random model whose output layer is its input embeddings mostly predicts the
    token it just read, so every answer is one token repeated and mistakes in
    padding or positions go unseen; a separate output layer gives varied text.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = False
    generator = torch.Generator().manual_seed(0)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator) * 0.02)
    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(dest)
    return dest


def save_random_lora_adapter(model_dir: Path, dest: Path, seed: int) -> Path:
    """A LoRA adapter (r=4 on q_proj and v_proj) that changes the model's outputs.

    PEFT initialises lora_B to zeros (the adapter starts as a no-op); random
    lora_B weights make it a real change. All LoRA weights come from `seed`
    alone, so the adapter does not depend on which tests ran before.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.save_pretrained(dest, safe_serialization=True)
    return dest
