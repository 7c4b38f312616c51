"""Attention for decode steps on the CPU: one query token per row.

transformers' `sdpa` attention calls PyTorch's CPU flash kernel, which is
built for long queries: for a decode step (one query token per row, a few
hundred cached keys) it took 64% of a 64-row SmolLM2 step in bf16 (5.6 ms per
layer; bench/README.md), more than every linear layer together. For one
query token attention is two small matmuls and a softmax, so that is what
this does: scores and softmax in fp32 (as the flash kernel accumulates), the
grouped query heads of each key/value head in one matmul, no repeated keys.
Anything else (prefill, a layer with soft-capping or a sliding window, an
unexpected mask) goes to transformers' `sdpa` function unchanged, and the
mask is built exactly as for `sdpa`.

Registered with transformers' AttentionInterface (and its mask interface)
under ATTENTION_NAME; the engine switches a CPU-loaded base to it when the
architecture is plain causal self-attention
(`worker.models.catalog.has_plain_causal_attention`).
"""

from __future__ import annotations

import torch

from worker.models.catalog import has_plain_causal_attention

ATTENTION_NAME = "tunehouse_decode"

def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """transformers' attention-function contract: query [rows, heads, q, dim],
    key/value [rows, kv_heads, length, dim]; returns ([rows, q, heads, dim], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, heads, query_length, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    plain_mask = attention_mask is None or (
        attention_mask.dtype == torch.bool and attention_mask.shape[-2] == 1 and attention_mask.shape[-1] == length
        and attention_mask.shape[1] == 1
    )
    if (query_length != 1 or module.training or heads % kv_heads or not plain_mask
            or kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # [rows, kv_heads, groups, dim] @ [rows, kv_heads, dim, length]: each key/value head once.
    grouped = query.reshape(rows, kv_heads, groups, dim).float()
    scores = torch.matmul(grouped, key.float().transpose(-1, -2))
    scores.mul_(scale)
    if attention_mask is not None:
        scores.masked_fill_(~attention_mask.reshape(rows, 1, 1, length), float("-inf"))
    probabilities = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(probabilities, value)  # [rows, kv_heads, groups, dim]
    return output.reshape(rows, 1, heads, dim), None


def register_decode_attention() -> str:
    """Makes ATTENTION_NAME known to transformers, its mask built as for sdpa (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, decode_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def use_decode_attention(model, device: str) -> bool:
    """Switches a CPU model to the decode attention where it applies; whether it did."""
    if not device.startswith("cpu") or not has_plain_causal_attention(model.config):
        return False
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False  # only ever replaces sdpa, whose mask and fallback it shares
    model.set_attn_implementation(register_decode_attention())
    return True
