"""Segment attention against dense attention under a block-diagonal causal mask."""

import types

import pytest
import torch
import torch.nn.functional as F

from worker.training.attention import segment_attention

SEGMENTS = [[(0, 3), (3, 7)], [(0, 9)], [(0, 2), (2, 4), (4, 5)]]
LENGTH = 9


def block_causal_mask(row_segments, length: int) -> torch.Tensor:
    """True where a position may attend: earlier positions of its own example.
    Padding attends to itself only (its output is not compared)."""
    allowed = torch.eye(length, dtype=torch.bool)
    for start, stop in row_segments:
        allowed[start:stop, start:stop] = torch.ones(stop - start, stop - start, dtype=torch.bool).tril()
    return allowed


def test_outputs_and_gradients_equal_dense_masked_attention():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 4, LENGTH, 8, generator=generator, requires_grad=True)  # 4 heads
    key = torch.randn(3, 2, LENGTH, 8, generator=generator, requires_grad=True)  # 2 kv heads (GQA)
    value = torch.randn(3, 2, LENGTH, 8, generator=generator, requires_grad=True)
    weights = torch.randn(3, LENGTH, 4, 8, generator=generator)
    real = torch.zeros(3, LENGTH, 1, 1)
    for row, row_segments in enumerate(SEGMENTS):
        real[row, : row_segments[-1][1]] = 1

    output, _ = segment_attention(types.SimpleNamespace(training=True), query, key, value, None,
                                  scaling=0.3, segments=SEGMENTS)
    assert output.shape == (3, LENGTH, 4, 8)
    assert torch.equal(output[0, 7:], torch.zeros(2, 4, 8))  # padding attends to nothing
    (output * weights * real).sum().backward()
    gradients = [tensor.grad.clone() for tensor in (query, key, value)]

    for tensor in (query, key, value):
        tensor.grad = None
    mask = torch.stack([block_causal_mask(row_segments, LENGTH) for row_segments in SEGMENTS])[:, None]
    dense = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3, enable_gqa=True)
    dense = dense.transpose(1, 2)
    (dense * weights * real).sum().backward()

    torch.testing.assert_close(output * real, dense * real)
    for got, expected in zip(gradients, (query.grad, key.grad, value.grad)):
        torch.testing.assert_close(got, expected)
    assert key.grad[0, :, 7:].abs().sum() == 0  # padding keys get no gradient


@pytest.mark.parametrize(
    "segments, message",
    [
        ([[(0, 3), (4, 9)]], "must follow each other"),
        ([[(0, 3), (3, 3)]], "must follow each other"),
        ([[(0, 10)]], "after the row's 9 positions"),
        ([[(0, 9)], [(0, 9)]], "segments describe 2 rows"),
        (None, "needs the examples' segments"),
    ],
)
def test_bad_segments_are_refused(segments, message):
    tensor = torch.zeros(1, 2, LENGTH, 4)
    with pytest.raises(ValueError, match=message):
        segment_attention(types.SimpleNamespace(training=False), tensor, tensor, tensor, None, segments=segments)
