"""The decode attention (worker/inference/attention.py) against transformers' sdpa."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.integrations import sdpa_attention

from worker.inference.attention import ATTENTION_NAME, use_decode_attention
from worker.inference.batching import left_padded, new_cache
from worker.inference.generation import GenerationRequest, generate


@pytest.fixture(scope="module")
def decode_model(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert use_decode_attention(model, "cpu")
    assert model.config._attn_implementation == ATTENTION_NAME
    return model


def decode_step_logits(model, prompts: list[list[int]]) -> torch.Tensor:
    """Prefill left-padded prompts, then one decode step; its logits."""
    input_ids, mask = left_padded(prompts, 0, "cpu")
    cache = new_cache(model)
    with torch.inference_mode():
        model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
              past_key_values=cache, use_cache=True)
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=-1)
        return model(input_ids=torch.full((len(prompts), 1), 5), attention_mask=mask,
                     position_ids=mask.sum(-1, keepdim=True) - 1, past_key_values=cache, use_cache=True).logits[:, -1]


def test_a_decode_step_equals_sdpa_with_padding_and_grouped_heads(plain_model, decode_model, prompts, monkeypatch):
    assert plain_model.config.num_key_value_heads < plain_model.config.num_attention_heads  # grouped heads
    batch = [prompts["short"], prompts["long"], prompts["multi"]]  # different lengths: padding
    expected = decode_step_logits(plain_model, batch)
    sdpa_queries = []
    sdpa = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda module, query, *args, **kwargs: sdpa_queries.append(query.shape[2]) or sdpa(module, query, *args, **kwargs))
    got = decode_step_logits(decode_model, batch)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The prefill went to sdpa, the decode step did not.
    assert sdpa_queries == [max(map(len, batch))] * decode_model.config.num_hidden_layers


def test_generation_with_the_decode_attention_equals_sdpa(plain_model, decode_model, tokenizer, eos_ids, prompts):
    requests = [GenerationRequest(prompt, max_new_tokens=12, temperature=0) for prompt in prompts.values()]
    expected = generate(plain_model, tokenizer, requests, eos_ids=eos_ids)
    got = generate(decode_model, tokenizer, requests, eos_ids=eos_ids)
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]


def test_only_cpu_models_with_plain_causal_attention_switch(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not use_decode_attention(model, "cuda:0")
    model.config.sliding_window, model.config.use_sliding_window = 16, True
    assert not use_decode_attention(model, "cpu")
    assert model.config._attn_implementation == "sdpa"
