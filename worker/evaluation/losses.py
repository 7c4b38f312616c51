"""Each evaluation item's loss on its reference, for the formats that are not
chat: a text item (the loss on every token of the text: its perplexity) and a
prompt/completion item (the loss on the completion and EOS given the prompt).

The tokens scored are exactly those training trains on for the same line
(worker/training/data.py's `tokenize_example`, no chat template), so the
numbers compare with the job's validation loss. Chat and preference items
are scored by worker/inference/generation.py's `reference_losses`, which puts
the reference in an assistant message.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.inference.lora import adapters_restored, forward_with_adapters
from worker.training.data import IGNORE_INDEX, pack_batch, tokenize_example, truncate


def example_losses(model, tokenizer, examples: list[dict], *, adapter: str | None, device: str = "cpu",
                   batch_size: int = 8, max_length: int | None = None) -> list[tuple[float, int]]:
    """(summed cross-entropy, scored tokens) of each text or prompt/completion
    example; an example longer than `max_length` tokens (the model's context)
    is scored on its first `max_length` tokens."""
    tokenized = [tokenize_example(tokenizer, example) for example in examples]
    if max_length is not None:
        tokenized = [truncate(example, max_length)[0] for example in tokenized]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out
    order = sorted(range(len(tokenized)), key=lambda index: len(tokenized[index]))  # less padding
    losses: list[tuple[float, int]] = [(0.0, 0)] * len(tokenized)
    with torch.inference_mode(), adapters_restored(model):
        for start in range(0, len(order), max(1, batch_size)):
            indices = order[start : start + batch_size]
            rows = [tokenized[index] for index in indices]
            inputs = pack_batch(rows, max(map(len, rows)), pad_id, packing=False)
            logits = forward_with_adapters(
                model, [adapter] * len(rows), use_cache=False,
                **{key: inputs[key].to(device) for key in ("input_ids", "attention_mask", "position_ids")},
            ).logits
            targets = inputs["labels"][:, 1:].to(device)  # position t predicts token t+1
            for row, index in enumerate(indices):  # row by row: fp32 logits of a batch can be large
                loss = F.cross_entropy(logits[row, :-1].float(), targets[row], ignore_index=IGNORE_INDEX,
                                       reduction="sum")
                losses[index] = (loss.item(), tokenized[index].trained_tokens)
    return losses
