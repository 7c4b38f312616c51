"""Examples -> token ids and labels -> batches.

Labels follow the transformers convention: aligned with `input_ids` (the
model shifts them by one when computing the loss), IGNORE_INDEX where a token
is not trained. `tokenize_example` dispatches on the example's keys
(domain/files/validation/formats.py), so the supervised recipe trains every
supervised format alike:

- chat (``messages``): the tokenizer's chat template; only the tokens of
  assistant messages (weight != 0) are trained, including the end-of-turn
  token so the model learns to stop.
- text (``text``): continued pretraining. The text's tokens, with the BOS the
  tokenizer adds if it adds one, then EOS; every token is trained. Examples
  are packed into rows by `pack_batch` like any other (packing is on by
  default); a text longer than max_seq_length is cut into rows of that
  length (`split_text`) instead of being truncated, so every token is trained.
- prompt/completion (``prompt``, ``completion``): the prompt's tokens (with
  the tokenizer's BOS, if any), the completion's tokens, then EOS; only the
  completion and EOS are trained. This is plain concatenation, deliberately
  without the chat template: these files come from completion-style data
  (OpenAI's legacy format, TRL's prompt/completion datasets) where the prompt
  is the exact text the model continues, separators and spacing included
  (put the space or newline between them in the data, e.g. a completion that
  starts with " "). Prompt and completion are tokenized separately, so the
  trained span starts exactly at the completion even where a tokenizer would
  merge characters across the boundary.

Preference pairs (``input``, ``preferred_output``, ``non_preferred_output``)
are trained by DPO (worker/training/preference.py), not tokenized here;
`load_split_data` reads them like the others.

Everywhere the first token of an example is never a target (nothing precedes
it), which also keeps a packed row from "predicting" the next example's first
token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from domain.files.split import split_lines
from domain.files.validation.formats import CHAT, PREFERENCE, PROMPT_COMPLETION, TEXT, detect_format, examples_format
from domain.jobs.hyperparameters import DatasetStats

IGNORE_INDEX = -100

# Our extension of OpenAI's message format; chat templates must not see it.
_TRAINING_ONLY_MESSAGE_KEYS = ("weight",)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX everywhere except trained assistant tokens

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


# --------------------------------------------------------------------------
# Tokenizing one example


def tokenize_example(tokenizer, example: dict) -> TokenizedExample:
    """Token ids and labels of one supervised example: chat, text or
    prompt/completion, told apart by its keys (see the module docstring)."""
    format_ = detect_format(example)
    if format_ == CHAT:
        return tokenize_chat(tokenizer, example)
    if format_ == TEXT:
        return tokenize_text(tokenizer, example["text"])
    if format_ == PROMPT_COMPLETION:
        return tokenize_prompt_completion(tokenizer, example["prompt"], example["completion"])
    if format_ == PREFERENCE:
        raise ValueError("a preference pair (input, preferred_output, non_preferred_output) is trained by "
                         "the DPO method, not by supervised fine-tuning")
    raise ValueError(f"an example with keys {sorted(example)} is in no known format")


def _with_eos(tokenizer, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None and ids[-1:] != [eos] else ids


def tokenize_text(tokenizer, text: str) -> TokenizedExample:
    """Continued pretraining: the text's tokens (with the BOS the tokenizer adds,
    if it adds one) and EOS, every one trained but the first."""
    input_ids = _with_eos(tokenizer, tokenizer(text, add_special_tokens=True)["input_ids"])
    return TokenizedExample(input_ids=input_ids, labels=[IGNORE_INDEX, *input_ids[1:]])


def tokenize_prompt_completion(tokenizer, prompt: str, completion: str) -> TokenizedExample:
    """The prompt's tokens (with the tokenizer's BOS, if any), then the
    completion's and EOS; only the completion and EOS are trained."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]  # an empty prompt: the BOS, if any
    if len(prompt_ids) > 1 and prompt_ids[-1] == tokenizer.eos_token_id:
        prompt_ids = prompt_ids[:-1]  # a tokenizer that also appends EOS: the text goes on
    completion_ids = _with_eos(tokenizer, tokenizer(completion, add_special_tokens=False)["input_ids"])
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    labels[0] = IGNORE_INDEX
    return TokenizedExample(input_ids=prompt_ids + completion_ids, labels=labels)


def tokenize_chat(tokenizer, example: dict) -> TokenizedExample:
    """Renders `example` with the tokenizer's own chat template and labels the
    tokens of its trained assistant messages.

    Each assistant message i is located by rendering the conversation twice:
    P = messages[:i] with the generation prompt, F = messages[:i+1]. The tokens
    of F beyond P are that message: its content and end-of-turn token are
    trained, what the template writes after end-of-turn (ChatML's newline) is
    not, since generation stops at end-of-turn. This only holds if
    the template renders prefix-consistently, which is checked: a template
    that is not raises ValueError instead of training on wrong labels.
    """
    messages = [_template_message(message) for message in example["messages"]]
    tools = example.get("tools") or None

    def render(conversation: list[dict], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            conversation, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(text: str) -> list[int]:
        # The template already wrote any special tokens (BOS etc.): add none again.
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    full_text = render(messages, add_generation_prompt=False)
    input_ids = encode(full_text)
    labels = [IGNORE_INDEX] * len(input_ids)
    end_of_turn_ids = {tokenizer.eos_token_id} - {None}

    for index, message in enumerate(example["messages"]):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        where = f"assistant message {index + 1}"
        if index == 0:
            raise ValueError(
                f"{where} is the first message: chat templates cannot render the prompt before it; "
                "start the conversation with a system or user message"
            )
        prompt_text = render(messages[:index], add_generation_prompt=True)
        through_text = render(messages[: index + 1], add_generation_prompt=False)
        if not through_text.startswith(prompt_text) or not full_text.startswith(through_text):
            raise ValueError(
                f"{where}: the chat template does not render conversations prefix-consistently "
                "(the conversation up to a message is not a prefix of the longer conversation), "
                "so the assistant tokens cannot be located; use a model whose chat template does"
            )
        prompt_ids = encode(prompt_text)
        through_ids = encode(through_text)
        if through_ids[: len(prompt_ids)] != prompt_ids or input_ids[: len(through_ids)] != through_ids:
            raise ValueError(
                f"{where}: tokenizing the conversation in parts does not give a prefix of the "
                "whole conversation's tokens (tokens merge across a message boundary), so the "
                "assistant tokens cannot be located"
            )
        start, end = len(prompt_ids), len(through_ids)
        end = _cut_after_last_end_of_turn(input_ids, start, end, end_of_turn_ids)
        labels[start:end] = input_ids[start:end]

    # Nothing precedes the first token, so it is never a target. This also keeps
    # a packed row from "predicting" the next example's first token.
    if labels:
        labels[0] = IGNORE_INDEX
    return TokenizedExample(input_ids=input_ids, labels=labels)


def _template_message(message: dict) -> dict:
    rendered = {key: value for key, value in message.items() if key not in _TRAINING_ONLY_MESSAGE_KEYS}
    # A tool-calling assistant message may have no content; templates concatenate strings.
    if rendered.get("content") is None:
        rendered["content"] = ""
    if "tool_calls" in rendered:
        rendered["tool_calls"] = [_template_tool_call(call) for call in rendered["tool_calls"]]
    return rendered


def _template_tool_call(call: dict) -> dict:
    # OpenAI sends arguments as a JSON string; Hugging Face chat templates expect an object.
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            function["arguments"] = parsed
    return {**call, "function": function}


def _cut_after_last_end_of_turn(input_ids: list[int], start: int, end: int, end_of_turn_ids: set[int]) -> int:
    """The end of the trained span: just after the message's last end-of-turn
    token. What a template writes after it (ChatML's newline) is glue the model
    never generates, since generation stops at end-of-turn."""
    for position in range(end - 1, start - 1, -1):
        if input_ids[position] in end_of_turn_ids:
            return position + 1
    return end


def tokenize_dataset(tokenizer, examples: list[dict]) -> list[TokenizedExample]:
    tokenized = []
    for number, example in enumerate(examples, 1):
        try:
            tokenized.append(tokenize_example(tokenizer, example))
        except ValueError as error:
            raise ValueError(f"example {number}: {error}") from error
    return tokenized


def split_text(example: TokenizedExample, max_seq_length: int) -> list[TokenizedExample]:
    """A long text as rows of at most `max_seq_length` tokens. Each row begins
    with the last token of the row before it, as context only: it predicts the
    row's second token, so every token but the text's first is trained exactly
    once, as in one long row."""
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be at least 2 to split a text, got {max_seq_length}")
    ids = example.input_ids
    rows = [TokenizedExample(ids[:max_seq_length], example.labels[:max_seq_length])]
    for start in range(max_seq_length - 1, len(ids) - 1, max_seq_length - 1):
        window = ids[start : start + max_seq_length]
        rows.append(TokenizedExample(window, [IGNORE_INDEX, *window[1:]]))
    return rows


def truncate(example: TokenizedExample, max_seq_length: int) -> tuple[TokenizedExample, bool]:
    """Keeps the first `max_seq_length` tokens; the bool says whether any were cut."""
    if len(example.input_ids) <= max_seq_length:
        return example, False
    return TokenizedExample(example.input_ids[:max_seq_length], example.labels[:max_seq_length]), True


# --------------------------------------------------------------------------
# Batches


def pack_batch(
    examples: list[TokenizedExample], max_seq_length: int, pad_token_id: int, packing: bool
) -> dict[str, Any]:
    """The model inputs for one (micro-)batch.

    packing=True ("padding-free batching"): examples share rows of at most
    `max_seq_length` tokens (first-fit decreasing); position_ids restart at 0
    for each example and for the padding tail, and there is no attention_mask:
    transformers' sdpa attention then derives a block-diagonal causal mask
    from the restarting position_ids, and the recipe's segment attention
    (worker/training/attention.py) reads `segments`, so no example attends
    to another.

    packing=False: one example per row, right-padded, with an attention_mask.

    Returns input_ids, labels, position_ids ([rows, length] tensors), an
    attention_mask when packing=False, segments (per row, the (start, end)
    of each example in it, in order from 0: what worker/training/attention.py
    needs to attend within each example), and the ints num_tokens
    (non-padding) and num_trained_tokens.
    """
    if not examples:
        raise ValueError("pack_batch needs at least one example")
    for example in examples:
        if len(example) > max_seq_length:
            raise ValueError(f"an example has {len(example)} tokens, more than max_seq_length={max_seq_length}; truncate first")
        if len(example) == 0:
            raise ValueError("an example has no tokens")

    rows = _first_fit_decreasing(examples, max_seq_length) if packing else [[example] for example in examples]
    length = max(sum(len(example) for example in row) for row in rows)

    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    segments: list[tuple[tuple[int, int], ...]] = []
    for row_index, row in enumerate(rows):
        offset = 0
        row_segments = []
        for example in row:
            size = len(example)
            row_segments.append((offset, offset + size))
            input_ids[row_index, offset : offset + size] = torch.tensor(example.input_ids)
            labels[row_index, offset : offset + size] = torch.tensor(example.labels)
            position_ids[row_index, offset : offset + size] = torch.arange(size)
            attention_mask[row_index, offset : offset + size] = 1
            offset += size
        # The padding tail is one more "sequence" of its own, starting at 0.
        position_ids[row_index, offset:] = torch.arange(length - offset)
        segments.append(tuple(row_segments))

    batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if not packing:
        batch["attention_mask"] = attention_mask
    batch["segments"] = segments
    batch["num_tokens"] = sum(len(example) for example in examples)
    batch["num_trained_tokens"] = sum(example.trained_tokens for example in examples)
    return batch


def _first_fit_decreasing(examples: list[TokenizedExample], capacity: int) -> list[list[TokenizedExample]]:
    rows: list[list[TokenizedExample]] = []
    room: list[int] = []
    # sorted() is stable: equal lengths keep their order, so rows are deterministic.
    for example in sorted(examples, key=len, reverse=True):
        for row_index, free in enumerate(room):
            if len(example) <= free:
                rows[row_index].append(example)
                room[row_index] -= len(example)
                break
        else:
            rows.append([example])
            room.append(capacity - len(example))
    return rows


# ------------------------------------------------ a job's data, split and measured


@dataclass
class SplitData:
    train: list[dict]
    eval: list[dict]
    eval_source: str  # "test split" | "validation file"
    # The file's format (domain/files/validation/formats.py): "chat", "preference",
    # "text" or "prompt_completion"; None for a file without examples.
    format: str | None = None


def load_split_data(train_chunks, split_seed: int, validation_chunks=None) -> SplitData:
    """The same deterministic split the upload report showed; TEST is never
    trained on. Any format, preference pairs included; a validation file must
    be in the training file's format."""
    train, test = [], []
    for _line, example, split in split_lines(train_chunks, split_seed):
        example.pop("split", None)
        (train if split == "TRAIN" else test).append(example)
    format_ = examples_format(train + test)
    if validation_chunks is None:
        return SplitData(train, test, "test split", format_)
    validation = [example for _line, example, _split in split_lines(validation_chunks, split_seed)]
    for example in validation:
        example.pop("split", None)
    validation_format = examples_format(validation)
    if validation_format is not None and format_ is not None and validation_format != format_:
        raise ValueError(f"the validation file is in the {validation_format} format but the training file "
                         f"in the {format_} format; both must be in the same format")
    return SplitData(train, validation, "validation file", format_)


def dataset_stats(tokenizer, data: SplitData) -> tuple[DatasetStats, dict]:
    """The statistics hyperparameters are resolved from, and the data summary
    the job's recipe records (with the file's format)."""
    lengths = [len(example.input_ids) for example in tokenize_dataset(tokenizer, data.train)]
    eval_tokens = sum(len(example.input_ids) for example in tokenize_dataset(tokenizer, data.eval))
    return stats_of_lengths(data, lengths, eval_tokens)


def stats_of_lengths(data: SplitData, lengths: list[int], eval_tokens: int) -> tuple[DatasetStats, dict]:
    """DatasetStats and the recipe's data summary from the token length of
    every training row and the evaluation data's token count."""
    lengths = sorted(lengths)
    p99 = lengths[max(0, -(-len(lengths) * 99 // 100) - 1)] if lengths else 0
    stats = DatasetStats(
        train_examples=len(data.train),
        eval_examples=len(data.eval),
        token_length_p99=p99,
        token_length_max=lengths[-1] if lengths else 0,
        train_tokens=sum(lengths),
    )
    summary = {
        "format": data.format,
        "train_examples": stats.train_examples,
        "eval_examples": stats.eval_examples,
        "eval_source": data.eval_source,
        "train_tokens": stats.train_tokens,
        "eval_tokens": eval_tokens,
        "token_length_p99": stats.token_length_p99,
        "token_length_max": stats.token_length_max,
    }
    return stats, summary
