"""What the inference unit tests share: the tiny Llama with an output layer of
its own, two LoRA adapters of it on a PeftModel, prompts, one thread."""

from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.worker.inference import save_random_lora_adapter, save_untied_model
from worker.inference.generation import end_of_turn_ids, render_prompt

SHORT = [{"role": "user", "content": "Hi"}]
LONG = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Tell me about the weather in Paris in spring, and what to wear there."},
]
MULTI_TURN = [
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "A pear."},
    {"role": "user", "content": "Another one?"},
]


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    # Files only read (each module loads its own model objects): once a session.
    return save_untied_model(tiny_model_dir, tmp_path_factory.mktemp("untied"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def plain_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def peft_model(model_dir, tmp_path_factory):
    adapters = tmp_path_factory.mktemp("adapters")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir),
        save_random_lora_adapter(model_dir, adapters / "a", seed=1),
        adapter_name="A",
    )
    model.load_adapter(save_random_lora_adapter(model_dir, adapters / "b", seed=2), adapter_name="B")
    return model.eval()


@pytest.fixture(scope="module")
def eos_ids(tokenizer, plain_model) -> set[int]:
    return end_of_turn_ids(tokenizer, plain_model)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> dict[str, list[int]]:
    return {"short": render_prompt(tokenizer, SHORT), "long": render_prompt(tokenizer, LONG),
            "multi": render_prompt(tokenizer, MULTI_TURN)}


