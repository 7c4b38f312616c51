"""Batched text generation and reference losses for chat completions, batches
and evaluations.

A hand-written decode loop rather than `model.generate`, because the service
needs what `generate` does not give per row: each request in a batch has its
own sampling settings, its own seed (a row's output must not depend on what
else is in the batch), its own stop strings, its own streamed text, and its
own LoRA adapter. With a PEFT model, one padded batch mixes rows of several
adapters and of the base weights (PEFT's `adapter_names` forward argument).

The loop: left-pad all prompts into one batch, run the prompt once to fill the
KV cache, then one forward per new token for the whole batch. Rows that finish
are dropped from the batch (and its cache) once enough of them have finished
to make the copy worth it, so a long answer does not keep short ones costing
compute.

Nothing here touches the database or the artifact store; see engine.py for
loading models and adapters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from worker.training.data import IGNORE_INDEX, _template_message, pack_batch, tokenize_example

MAX_STOP_STRINGS = 4
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in adapter_names
# Finished rows are dropped from the batch once they are at least this share of
# it: dropping copies the whole KV cache, so doing it for every single finished
# row would cost more than it saves.
DROP_FINISHED_SHARE = 0.25


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


@dataclass
class _Row:
    """One request's progress."""

    request: GenerationRequest
    generator: torch.Generator | None  # None for greedy rows
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    streamed: int = 0  # characters of `text` already passed to on_text
    finish_reason: str | None = None


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
    """Generate a completion for every request, all in one batch.

    on_text(request_index, delta) streams each request's text as it becomes
    final; the deltas of a request add up to its result's text exactly.
    should_stop() is checked before every forward pass; when it says yes,
    GenerationCancelled is raised.
    """
    uses_peft = _is_peft_model(model)
    _check_requests(model, requests, uses_peft)
    rows = [_Row(request, _generator_for(request, device)) for request in requests]
    for index, row in enumerate(rows):
        if row.request.max_new_tokens == 0:
            _finish(row, index, "length", tokenizer, on_text)
    # Batch position b holds request in_batch[b].
    in_batch = [index for index, row in enumerate(rows) if row.finish_reason is None]
    if not in_batch:
        return [_result(row) for row in rows]

    prompts = [requests[index].prompt_ids for index in in_batch]
    input_ids, attention_mask = _left_padded(prompts, _pad_id(tokenizer), device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = _new_cache(model)

    with torch.inference_mode():
        while True:
            if should_stop is not None and should_stop():
                raise GenerationCancelled("generation was cancelled")
            forward_args = dict(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,  # only the last position's logits are needed
            )
            if uses_peft:
                forward_args["adapter_names"] = [requests[index].adapter or BASE_ADAPTER for index in in_batch]
            output = model(**forward_args)
            cache = output.past_key_values
            next_tokens = _sample([rows[index] for index in in_batch], output.logits[:, -1, :])

            for index, token in zip(in_batch, next_tokens.tolist(), strict=True):  # one device sync per step
                if rows[index].finish_reason is None:
                    _advance(rows[index], index, token, eos_ids, tokenizer, on_text)

            still_running = [position for position, index in enumerate(in_batch) if rows[index].finish_reason is None]
            if not still_running:
                break
            if len(in_batch) - len(still_running) >= DROP_FINISHED_SHARE * len(in_batch):
                keep = torch.tensor(still_running, device=attention_mask.device)
                cache.batch_select_indices(keep)
                attention_mask = attention_mask[keep]
                next_tokens = next_tokens[keep]
                in_batch = [in_batch[position] for position in still_running]

            input_ids = next_tokens.unsqueeze(-1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(in_batch), 1))], dim=-1)
            position_ids = attention_mask.sum(-1, keepdim=True) - 1

    return [_result(row) for row in rows]


def _is_peft_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _check_requests(model, requests: list[GenerationRequest], uses_peft: bool) -> None:
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


def _generator_for(request: GenerationRequest, device: str) -> torch.Generator | None:
    if request.temperature == 0:
        return None
    generator = torch.Generator(device=device)
    if request.seed is None:
        generator.seed()  # a non-deterministic seed
    else:
        generator.manual_seed(request.seed)
    return generator


def _pad_id(tokenizer) -> int:
    # Padding is masked out of attention and loss: any id would do.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _left_padded(prompts: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Left padding puts every prompt's last token in the last column, where the next token is predicted.
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, length - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _new_cache(model):
    from transformers import DynamicCache

    # The config tells the cache which layers use sliding-window attention.
    return DynamicCache(config=model.config)


def _sample(rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
    """The next token of every row of the batch: argmax for greedy rows, else
    temperature and top-p, drawn with the row's own generator."""
    next_tokens = logits.argmax(dim=-1)
    sampled = [position for position, row in enumerate(rows) if row.generator is not None and row.finish_reason is None]
    if not sampled:
        return next_tokens
    temperatures = torch.tensor([rows[p].request.temperature for p in sampled], device=logits.device)
    probabilities = torch.softmax(logits[sampled].float() / temperatures.unsqueeze(-1), dim=-1)
    top_ps = torch.tensor([rows[p].request.top_p for p in sampled], device=logits.device)
    if bool((top_ps < 1).any()):
        probabilities = _top_p_filtered(probabilities, top_ps)
    for position, row_probabilities in zip(sampled, probabilities, strict=True):
        next_tokens[position] = torch.multinomial(row_probabilities, 1, generator=rows[position].generator)[0]
    return next_tokens


def _top_p_filtered(probabilities: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose probabilities
    reach top_p (nucleus sampling); multinomial does not need them renormalized."""
    sorted_probabilities, order = probabilities.sort(dim=-1, descending=True)
    mass_before = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities
    # Rows with top_p 1 keep everything, exactly as when no row of the batch filters
    # (their rounded cumulative sums could otherwise reach 1 before the last token).
    thresholds = top_ps.masked_fill(top_ps >= 1, float("inf")).unsqueeze(-1)
    # A token is kept while the tokens more likely than it hold less than top_p; the first always is.
    sorted_probabilities[mass_before >= thresholds] = 0
    return torch.zeros_like(probabilities).scatter_(-1, order, sorted_probabilities)


def _advance(
    row: _Row, index: int, token: int, eos_ids: set[int], tokenizer, on_text: Callable[[int, str], None] | None
) -> None:
    """Take one generated token into the row: finish it, or stream what became final."""
    if token in eos_ids:
        _finish(row, index, "stop", tokenizer, on_text)
        return
    row.token_ids.append(token)
    if row.request.stop or on_text is not None:
        row.text = _decode(tokenizer, row.token_ids)
        stop_at = _first_stop(row.text, row.request.stop)
        if stop_at is not None:
            row.text = row.text[:stop_at]
            _finish(row, index, "stop", tokenizer, on_text, text_is_final=True)
            return
    if len(row.token_ids) >= row.request.max_new_tokens:
        _finish(row, index, "length", tokenizer, on_text)
        return
    if on_text is not None:
        final_until = _final_text_length(row.text, row.request.stop)
        if final_until > row.streamed:
            on_text(index, row.text[row.streamed : final_until])
            row.streamed = final_until


def _finish(
    row: _Row,
    index: int,
    reason: str,
    tokenizer,
    on_text: Callable[[int, str], None] | None,
    text_is_final: bool = False,
) -> None:
    row.finish_reason = reason
    if not text_is_final:
        row.text = _decode(tokenizer, row.token_ids)
    if on_text is not None and len(row.text) > row.streamed:
        on_text(index, row.text[row.streamed :])
        row.streamed = len(row.text)


def _decode(tokenizer, token_ids: list[int]) -> str:
    # No clean-up of spaces: it can rewrite earlier text when more tokens
    # arrive (" 's" -> "'s"), and text already streamed cannot be taken back.
    return tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [position for position in (text.find(stop) for stop in stops) if position >= 0]
    return min(positions) if positions else None


def _final_text_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can no longer change: not a trailing incomplete
    multi-byte character (decoded as U+FFFD), not a tail that may be the start
    of a stop string."""
    end = len(text.rstrip("\ufffd"))
    longest_possible_start = min(max((len(stop) - 1 for stop in stops), default=0), end)
    for length in range(longest_possible_start, 0, -1):
        tail = text[end - length : end]
        if any(stop.startswith(tail) for stop in stops):
            return end - length
    return end


def _result(row: _Row) -> GenerationResult:
    return GenerationResult(token_ids=row.token_ids, text=row.text, finish_reason=row.finish_reason or "length")


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
    uses_peft = _is_peft_model(model)
    if adapter is not None and (not uses_peft or adapter not in model.peft_config):
        raise ValueError(f"adapter {adapter!r} is not loaded on the model")
    examples = [tokenize_example(tokenizer, _reference_example(prompt, reference)) for prompt, reference in items]
    pad_id = _pad_id(tokenizer)
    # Similar lengths batched together waste less compute on padding.
    order = sorted(range(len(examples)), key=lambda index: len(examples[index]))
    losses: list[tuple[float, int]] = [(0.0, 0)] * len(examples)

    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = [examples[index] for index in indices]
            inputs = pack_batch(batch, max(len(example) for example in batch), pad_id, packing=False)
            forward_args = {key: inputs[key].to(device) for key in ("input_ids", "attention_mask", "position_ids")}
            if uses_peft:
                forward_args["adapter_names"] = [adapter or BASE_ADAPTER] * len(batch)
            logits = model(**forward_args, use_cache=False).logits
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
