"""Attention for packed rows that computes each example's own causal block only.

A packed row holds several examples end to end. Through transformers' own
`sdpa` attention it is computed as one long sequence under a block-diagonal
causal mask: the work grows with the square of the row's length, and for
rows of ~90-token examples nearly all of it lands on masked blocks and is
thrown away (a CPU has no kernel that skips them). Here the row is cut at the
example boundaries that `pack_batch` recorded ("segments") and each example
runs through `scaled_dot_product_attention` on its own with `is_causal=True`:
the same math as the mask, without the masked blocks, and without building a
mask at all. The padding after a row's last example attends to nothing; its
output is zero (no label is ever read there, and no real token attends to it).

Registered with transformers' AttentionInterface under ATTENTION_NAME; the
model is loaded with that implementation when `segment_attention_supported`
says its architecture has nothing this function does not do (sliding windows,
logit soft-capping, attention sinks, non-causal layers). Every forward call
must then pass `segments=` (the recipe does); without it the call fails
rather than attending across examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from worker.models.catalog import has_plain_causal_attention

ATTENTION_NAME = "tunehouse_segments"
# (start, end) of each example in each row: segments[row] = ((0, 87), (87, 190), ...).
Segments = Sequence[Sequence[tuple[int, int]]]

# Whether a model's every attention layer is plain causal self-attention
# (the architectures this function serves).
segment_attention_supported = has_plain_causal_attention


def segment_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [rows, heads, length, head_dim]
    key: torch.Tensor,  # [rows, kv_heads, length, head_dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    segments: Segments | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract; returns ([rows, length, heads, head_dim], None)."""
    if segments is None:
        raise ValueError(
            f"attention '{ATTENTION_NAME}' needs the examples' segments (segments=...) with every forward call"
        )
    if attention_mask is not None or kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise ValueError(f"attention '{ATTENTION_NAME}' supports plain causal attention only")
    rows, _heads, length, _dim = query.shape
    if len(segments) != rows:
        raise ValueError(f"segments describe {len(segments)} rows, the batch has {rows}")
    gqa = key.shape[1] != query.shape[1]
    dropout = dropout if module.training else 0.0
    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # Attention in fp32 under CPU autocast: PyTorch's CPU flash kernel is
        # as fast in fp32 as in bf16 for example-sized segments, its backward
        # twice as fast at ~90 tokens (bench/README.md), and the scores and
        # softmax stay exact. (q and k arrive in fp32 from the rotary
        # embedding already; v is the bf16 output of v_proj.)
        with torch.autocast("cpu", enabled=False):
            return segment_attention(module, query.float(), key.float(), value.float(), attention_mask,
                                     dropout, scaling, segments, **kwargs)
    outputs = []
    # Rows and examples are taken apart with split, not by slicing: the
    # backward pass of a slice fills a zero tensor of the whole input and adds
    # the slice's gradient into it, once per example; split's puts all the
    # pieces' gradients together in one copy.
    for row, (row_query, row_key, row_value) in enumerate(zip(query.split(1), key.split(1), value.split(1))):
        row_segments = segments[row]
        sizes, end = [], 0
        for start, stop in row_segments:
            if start != end or stop <= start:
                raise ValueError(f"row {row}: segments must follow each other from 0, got {list(row_segments)}")
            sizes.append(stop - start)
            end = stop
        if end > length:
            raise ValueError(f"row {row}: segments end at {end}, after the row's {length} positions")
        padded = sizes + [length - end] if end < length else sizes  # the padding's piece is left out below
        pieces = [
            F.scaled_dot_product_attention(
                segment_query, segment_key, segment_value,
                dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa,
            )
            for segment_query, segment_key, segment_value in zip(
                row_query.split(padded, dim=2)[: len(sizes)],
                row_key.split(padded, dim=2)[: len(sizes)],
                row_value.split(padded, dim=2)[: len(sizes)],
            )
        ]
        if end < length:
            pieces.append(query.new_zeros(1, query.shape[1], length - end, value.shape[-1]))
        outputs.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2))
    output = outputs[0] if rows == 1 else torch.cat(outputs, dim=0)
    return output.transpose(1, 2).contiguous(), None


def register_segment_attention() -> str:
    """Makes ATTENTION_NAME known to transformers (idempotent); returns it."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, segment_attention)
    return ATTENTION_NAME
