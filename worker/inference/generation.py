"""Text generation and reference losses for chat completions, batches and
evaluations: what a request is (`GenerationRequest`), what it gets back, and
`generate`, which runs a list of requests as one batch in the calling thread.

A hand-written decode loop rather than `model.generate`, because the service
needs what `generate` does not give per row: each request in a batch has its
own sampling settings, its own seed (a row's output must not depend on what
else is in the batch), its own stop strings, its own streamed text, and its
own LoRA adapter; and rows join and leave a running batch (loop.py). The
batch itself (left padding, KV cache, last-position logits only, finished rows
dropped, adapters mixed) is batching.py; each row's adapter is applied by
lora.py.

Nothing here touches the database or the artifact store; see engine.py for
loading models and adapters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.inference.lora import adapters_restored, forward_with_adapters, is_peft_model
from worker.training.data import IGNORE_INDEX, _template_message, pack_batch, tokenize_example

MAX_STOP_STRINGS = 4


class GenerationCancelled(Exception):
    """should_stop() said yes: generation was abandoned and has no results."""


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    adapter: str | None = None  # name of an adapter loaded on a PeftModel; None = the base weights
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # per-request torch.Generator; None = random seed
    stop: tuple[str, ...] = ()  # stop strings (up to 4)


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens, excluding the eos / end-of-turn token
    text: str  # decoded (special tokens skipped), cut before the first stop string
    finish_reason: str  # "stop" (eos/end-of-turn or stop string) or "length"


# --------------------------------------------------------------------------
# Prompts


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt's token ids: the chat template with the assistant's turn opened.

    Rendered exactly as training renders conversations (same message clean-up),
    so a fine-tune sees at inference the format it was trained on.
    """
    conversation = [_template_message(message) for message in messages]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    # The template already wrote any special tokens (BOS etc.): add none again.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_of_turn_ids(tokenizer, model) -> set[int]:
    """Token ids that end the assistant's turn: the tokenizer's eos and the model's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(configured)
    return ids - {None}


# --------------------------------------------------------------------------
# Generation


def check_requests(model, requests: list[GenerationRequest]) -> None:
    """ValueError naming the first request that cannot run on `model`."""
    uses_peft = is_peft_model(model)
    known_adapters = set(model.peft_config) if uses_peft else set()
    for number, request in enumerate(requests, 1):
        where = f"request {number}"
        if not request.prompt_ids:
            raise ValueError(f"{where}: the prompt has no tokens")
        if request.max_new_tokens < 0:
            raise ValueError(f"{where}: max_new_tokens must not be negative")
        if request.temperature < 0:
            raise ValueError(f"{where}: temperature must not be negative")
        if not 0 < request.top_p <= 1:
            raise ValueError(f"{where}: top_p must be in (0, 1]")
        if len(request.stop) > MAX_STOP_STRINGS or any(not stop for stop in request.stop):
            raise ValueError(f"{where}: at most {MAX_STOP_STRINGS} stop strings, none of them empty")
        if request.adapter is not None and request.adapter not in known_adapters:
            if not uses_peft:
                raise ValueError(f"{where}: asks for adapter {request.adapter!r} but the model has no adapters")
            raise ValueError(f"{where}: adapter {request.adapter!r} is not loaded on the model")


class _Collected:
    """The owner of generate()'s rows: results in request order, text passed on."""

    def __init__(self, count: int, on_text: Callable[[int, str], None] | None):
        self.results: list[GenerationResult | None] = [None] * count
        self.streams = on_text is not None
        self._on_text = on_text

    def on_text(self, index: int, text: str) -> None:
        self._on_text(index, text)

    def on_result(self, index: int, result: GenerationResult) -> None:
        self.results[index] = result

    def cancelled(self) -> bool:
        return False


def generate(
    model,
    tokenizer,
    requests: list[GenerationRequest],
    *,
    eos_ids: set[int],
    device: str = "cpu",
    on_text: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[GenerationResult]:
    """Generate a completion for every request, all in one batch, in this
    thread (the decode loop of loop.py runs the same batches, joined by new
    rows as others finish).

    on_text(request_index, delta) streams each request's text as it becomes
    final; the deltas of a request add up to its result's text exactly.
    should_stop() is checked before every forward pass; when it says yes,
    GenerationCancelled is raised.
    """
    from worker.inference.batching import Batch, Handle, Prefill, finish, new_row

    check_requests(model, requests)
    owner = _Collected(len(requests), on_text)
    handle = Handle(model, tokenizer, eos_ids, device)
    rows = [new_row(request, owner, index, device) for index, request in enumerate(requests)]
    for row in rows:
        if row.request.max_new_tokens == 0:
            finish(handle, row, "length")
    running = [row for row in rows if not row.done]

    def check() -> None:
        if should_stop is not None and should_stop():
            raise GenerationCancelled("generation was cancelled")

    if running:
        with torch.inference_mode(), adapters_restored(model):
            prefill = Prefill(handle, running)
            while not prefill.finished:
                check()
                prefill.run_slice()
            batch = Batch(handle)
            batch.merge(prefill)
            while batch.rows:
                check()
                batch.step()
                batch.retire()
    return [result for result in owner.results]


# --------------------------------------------------------------------------
# Reference losses


def reference_losses(
    model,
    tokenizer,
    items: list[tuple[list[dict], str]],
    *,
    adapter: str | None,
    device: str = "cpu",
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """(summed cross-entropy, scored tokens) of each reference answer given its prompt.

    The scored tokens are exactly those training would train on for the
    conversation prompt + reference (the reference's content and its
    end-of-turn token), so the numbers compare with training's validation loss.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if adapter is not None and (not is_peft_model(model) or adapter not in model.peft_config):
        raise ValueError(f"adapter {adapter!r} is not loaded on the model")
    examples = [tokenize_example(tokenizer, _reference_example(prompt, reference)) for prompt, reference in items]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out: any id would do
    # Similar lengths batched together waste less compute on padding.
    order = sorted(range(len(examples)), key=lambda index: len(examples[index]))
    losses: list[tuple[float, int]] = [(0.0, 0)] * len(examples)

    with torch.inference_mode(), adapters_restored(model):
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = [examples[index] for index in indices]
            inputs = pack_batch(batch, max(len(example) for example in batch), pad_id, packing=False)
            forward_args = {key: inputs[key].to(device) for key in ("input_ids", "attention_mask", "position_ids")}
            logits = forward_with_adapters(model, [adapter] * len(batch), **forward_args, use_cache=False).logits
            # Position t predicts token t+1.
            targets = inputs["labels"][:, 1:].to(device)
            # Row by row: fp32 logits of a whole batch can take gigabytes with large vocabularies.
            for row, (index, example) in enumerate(zip(indices, batch, strict=True)):
                loss = F.cross_entropy(
                    logits[row, :-1].float(), targets[row], ignore_index=IGNORE_INDEX, reduction="sum"
                )
                losses[index] = (loss.item(), example.trained_tokens)
    return losses


def _reference_example(prompt_messages: list[dict], reference_text: str) -> dict:
    # Assistant turns inside the prompt are context, not scored.
    prompt = [{**message, "weight": 0} if message["role"] == "assistant" else message for message in prompt_messages]
    return {"messages": [*prompt, {"role": "assistant", "content": reference_text}]}
