"""The rows of one model decoding together, and new rows joining them.

A `Batch` is the rows of one model that generate together: one KV cache, one
attention mask, one forward per new token for all of them. A `Prefill` runs
new rows' prompts (left-padded; in slices when the caller gives a token budget,
so that a long prompt does not stall the rows already decoding for long) and
samples their first token. `Batch.merge` then takes them in: the shorter of the
two caches is padded on the left with masked-out zeros and the two are joined
along the batch dimension, ordered by adapter so that each adapter's rows are
contiguous (lora.py). Positions come from each row's own attention mask, so the
padding a row gets from its batch mates changes neither its positions nor what
it attends to. Rows that finish, or whose owner cancelled them, leave the batch
and its cache.

Each row has its own sampling settings, generator (seed), stop strings, adapter
and owner (`RowOwner`: whom its text and result go to). Everything here runs on
one thread at a time: the decode loop's (loop.py), or the caller's of
`generation.generate`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from worker.inference.generation import GenerationRequest, GenerationResult
from worker.inference.lora import forward_with_adapters, is_peft_model

# Finished rows are dropped from the batch once they are at least this share of
# it (or at once when new rows wait for room): dropping copies the whole KV
# cache, so doing it for every single finished row would cost more than it saves.
DROP_FINISHED_SHARE = 0.25


class RowOwner(Protocol):
    """Whom a row's text and result go to (a request, a batch line, ...)."""

    streams: bool  # wants on_text as the text becomes final

    def on_text(self, index: int, text: str) -> None: ...

    def on_result(self, index: int, result: GenerationResult) -> None: ...

    def cancelled(self) -> bool: ...


@dataclass
class Handle:
    """What generation needs of a loaded model; engine.LoadedBase is one too."""

    model: Any
    tokenizer: Any
    eos_ids: set[int]
    device: str
    tokenizer_lock: Any = None


@dataclass(eq=False)
class Row:
    """One generation in progress."""

    request: GenerationRequest
    owner: RowOwner
    index: int  # the row's number for its owner
    generator: torch.Generator | None  # None for greedy rows
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    streamed: int = 0  # characters of `text` already passed to on_text
    finish_reason: str | None = None
    dropped: bool = False  # cancelled by its owner: leaves without a result

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.dropped

    @property
    def adapter_key(self) -> str:
        return self.request.adapter or ""


def new_row(request: GenerationRequest, owner: RowOwner, index: int, device: str) -> Row:
    return Row(request, owner, index, _generator_for(request, device))


def _generator_for(request: GenerationRequest, device: str) -> torch.Generator | None:
    if request.temperature == 0:
        return None
    generator = torch.Generator(device=device)
    if request.seed is None:
        generator.seed()  # a non-deterministic seed
    else:
        generator.manual_seed(request.seed)
    return generator


# --------------------------------------------------------------------------
# Forward passes


_CACHE_ARGUMENT: dict[type, str] = {}


def _cache_argument(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache` (the old name warns)."""
    inner = model.get_base_model() if is_peft_model(model) else model
    kind = type(inner)
    if kind not in _CACHE_ARGUMENT:
        parameters = inspect.signature(kind.forward).parameters
        _CACHE_ARGUMENT[kind] = "cache" if "cache" in parameters else "past_key_values"
    return _CACHE_ARGUMENT[kind]


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_output_projection(model) -> None:
    """The output projection gets a contiguous input (once per model).

    `logits_to_keep=1` hands it a strided view (each row's last position of a
    [rows, columns, hidden] prefill), and on a CPU a 3-D strided input sends
    `F.linear` to a slow path: SmolLM2's 49k-token projection of 11 such
    rows took 400 ms in bf16 (2 ms contiguous) and 45 ms in fp32 (23 ms),
    most of a prefill. The copy of one position per row costs nothing."""
    head = model.get_output_embeddings()
    if head is not None and not head.__dict__.get("_tunehouse_contiguous"):
        head.register_forward_pre_hook(_contiguous_input, prepend=True)  # before anyone else's hooks
        head.__dict__["_tunehouse_contiguous"] = True


def forward_last_logits(handle: Handle, rows: list[Row], input_ids, attention_mask, position_ids, cache):
    """One forward of the rows' new tokens; the logits of each row's last position."""
    model = handle.model
    output = forward_with_adapters(
        model,
        [row.request.adapter for row in rows],
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,  # only the last position's logits are needed
        **{_cache_argument(model): cache},
    )
    return output.logits[:, -1, :]


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A full-attention layer's keys and values in buffers with room for
        more tokens: a decode step writes its token in place, where
        DynamicLayer concatenates (copies the whole cache of every layer at
        every step: a third of a decode step's time on a CPU). Whoever
        replaces `keys`/`values` (dropping rows, merging) just assigns them;
        the next update moves them into a new buffer."""

        def __init__(self):
            super().__init__()
            self._keys_buffer = self._values_buffer = self._keys_view = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            total = length + key_states.shape[-2]
            buffer = self._keys_buffer
            if (
                buffer is None
                or self.keys is not self._keys_view
                or buffer.shape[-2] < total
                or buffer.shape[0] != key_states.shape[0]
            ):
                room = total + max(32, total // 4)
                keys = key_states.new_empty((*key_states.shape[:2], room, key_states.shape[-1]))
                values = value_states.new_empty((*value_states.shape[:2], room, value_states.shape[-1]))
                if length:
                    keys[:, :, :length] = self.keys
                    values[:, :, :length] = self.values
                self._keys_buffer, self._values_buffer = keys, values
            self._keys_buffer[:, :, length:total] = key_states
            self._values_buffer[:, :, length:total] = value_states
            self.keys = self._keys_view = self._keys_buffer[:, :, :total]
            self.values = self._values_buffer[:, :, :total]
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            """Only these rows, kept in buffers with room (one copy, not two)."""
            if self._keys_buffer is None or self.keys is not self._keys_view or not self.get_seq_length():
                super().batch_select_indices(indices)
                return
            length = self.keys.shape[-2]
            self.adopt(self._keys_buffer.index_select(0, indices), self._values_buffer.index_select(0, indices), length)

        def adopt(self, keys_buffer, values_buffer, length: int) -> None:
            """Buffers made elsewhere (a merge), holding `length` tokens and room after them."""
            self._keys_buffer, self._values_buffer = keys_buffer, values_buffer
            self.keys = self._keys_view = keys_buffer[:, :, :length]
            self.values = values_buffer[:, :, :length]

    return GrowingLayer


_GROWING_LAYER = None


def new_cache(model):
    """A KV cache for the model; full-attention layers grow in place."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    global _GROWING_LAYER
    if _GROWING_LAYER is None:
        _GROWING_LAYER = _growing_layer_class()
    # The config tells the cache which layers use sliding-window attention.
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_GROWING_LAYER() for _ in cache.layers]
    return cache


def mergeable(cache) -> bool:
    """Whether rows can join or leave this cache's batch mid-way: plain
    full-attention layers only (sliding windows and other kinds keep state
    that a padded join would break)."""
    return bool(cache.layers) and all(type(layer) is _GROWING_LAYER for layer in cache.layers)


def _pad_id(tokenizer) -> int:
    # Padding is masked out of attention and loss: any id would do.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def left_padded(prompts: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Left padding puts every prompt's last token in the last column, where the next token is predicted.
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, length - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


# --------------------------------------------------------------------------
# New rows: prompts


class Prefill:
    """New rows' prompts run into a KV cache of their own, then their first token sampled."""

    def __init__(self, handle: Handle, rows: list[Row], slice_tokens: int | None = None):
        self.handle = handle
        contiguous_output_projection(handle.model)  # a prefill's last positions are a strided view
        # Grouped by adapter (stable), as the batch they join is.
        self.rows = sorted(rows, key=lambda row: row.adapter_key)
        self.input_ids, self.mask = left_padded(
            [row.request.prompt_ids for row in self.rows], _pad_id(handle.tokenizer), handle.device
        )
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = new_cache(handle.model)
        self.width = self.input_ids.shape[1]
        self.done_columns = 0
        self.columns = self.width if slice_tokens is None else max(1, slice_tokens // len(self.rows))
        self.next_tokens: torch.Tensor | None = None

    @property
    def finished(self) -> bool:
        return self.done_columns == self.width

    @property
    def tokens(self) -> int:
        return len(self.rows) * self.width

    def run_slice(self) -> None:
        """The next slice of the prompts; after the last one, each row's first token."""
        start, end = self.done_columns, min(self.width, self.done_columns + self.columns)
        logits = forward_last_logits(
            self.handle, self.rows, self.input_ids[:, start:end], self.mask[:, :end], self.positions[:, start:end],
            self.cache,
        )
        self.done_columns = end
        if self.finished:
            tokens = sample(self.rows, logits)
            advance_all(self.handle, self.rows, tokens)
            self.next_tokens = tokens


# --------------------------------------------------------------------------
# The running batch


class Batch:
    """Rows of one model decoding together, one forward per token for all."""

    def __init__(self, handle: Handle):
        self.handle = handle
        self.rows: list[Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.next_tokens: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def live(self) -> int:
        return sum(1 for row in self.rows if not row.done)

    @property
    def joinable(self) -> bool:
        """Whether new rows can join now: an empty batch always can."""
        return self.cache is None or not self.rows or mergeable(self.cache)

    def drop_cancelled(self) -> None:
        for row in self.rows:
            if not row.done and row.owner.cancelled():
                row.dropped = True

    def step(self) -> None:
        """One new token for every row."""
        count = len(self.rows)
        self.mask = torch.cat([self.mask, self.mask.new_ones((count, 1))], dim=-1)
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits = forward_last_logits(
            self.handle, self.rows, self.next_tokens.unsqueeze(-1), self.mask, positions, self.cache
        )
        tokens = sample(self.rows, logits)
        advance_all(self.handle, self.rows, tokens)
        self.next_tokens = tokens

    def retire(self, *, room_wanted: bool = False) -> None:
        """Drop finished and cancelled rows: all at once when every row is
        done, else when new rows want the room or enough of them are done to
        be worth the copy of the cache."""
        done = sum(1 for row in self.rows if row.done)
        if not done:
            return
        if done == len(self.rows):
            self.rows, self.cache, self.mask, self.next_tokens = [], None, None, None
            return
        if not room_wanted and done < DROP_FINISHED_SHARE * len(self.rows):
            return
        keep = [position for position, row in enumerate(self.rows) if not row.done]
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_tokens = self.next_tokens[index]
        self.rows = [self.rows[position] for position in keep]
        self._trim_left()

    def _trim_left(self) -> None:
        """Columns that are padding in every row left are of no use any more."""
        if not mergeable(self.cache):
            return
        used = self.mask.any(dim=0)
        first = int(used.to(torch.int8).argmax())
        if first == 0:
            return
        for layer in self.cache.layers:
            if layer.is_initialized and layer.keys.numel():
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]
        self.mask = self.mask[:, first:]

    def merge(self, prefill: Prefill) -> None:
        """Take in a finished prefill's rows that still run."""
        new_keep = [position for position, row in enumerate(prefill.rows) if not row.done]
        if not new_keep:
            return
        old_keep = [position for position, row in enumerate(self.rows) if not row.done]
        if not old_keep:
            self._adopt(prefill, new_keep)
            return
        if not (mergeable(self.cache) and mergeable(prefill.cache)):
            raise RuntimeError("this model's cache cannot take rows mid-way")
        rows = [self.rows[p] for p in old_keep] + [prefill.rows[p] for p in new_keep]
        order = sorted(range(len(rows)), key=lambda i: rows[i].adapter_key)  # stable
        destination = [0] * len(rows)
        for final_position, source in enumerate(order):
            destination[source] = final_position
        device = self.mask.device
        old_to = torch.tensor(destination[: len(old_keep)], device=device)
        new_to = torch.tensor(destination[len(old_keep) :], device=device)
        old_from = None if len(old_keep) == len(self.rows) else torch.tensor(old_keep, device=device)
        new_from = None if len(new_keep) == len(prefill.rows) else torch.tensor(new_keep, device=device)
        length = max(self.mask.shape[-1], prefill.mask.shape[-1])

        def joined(old: torch.Tensor, new: torch.Tensor, seq_dim: int, room: int = 0) -> torch.Tensor:
            # One allocation (with room for the next tokens); each side copied
            # once into its rows, right-aligned; the padding zeros, masked out.
            shape = list(old.shape)
            shape[0], shape[seq_dim] = len(rows), length + room
            out = old.new_zeros(shape)
            for source, source_rows, to in ((old, old_from, old_to), (new, new_from, new_to)):
                if source_rows is not None:
                    source = source.index_select(0, source_rows)
                out.narrow(seq_dim, length - source.shape[seq_dim], source.shape[seq_dim]).index_copy_(0, to, source)
            return out

        room = max(32, length // 4)
        for layer, new_layer in zip(self.cache.layers, prefill.cache.layers, strict=True):
            layer.adopt(joined(layer.keys, new_layer.keys, 2, room), joined(layer.values, new_layer.values, 2, room), length)
        self.mask = joined(self.mask, prefill.mask, 1)
        tokens = torch.empty(len(rows), dtype=self.next_tokens.dtype, device=device)
        tokens[old_to] = self.next_tokens if old_from is None else self.next_tokens[old_from]
        tokens[new_to] = prefill.next_tokens if new_from is None else prefill.next_tokens[new_from]
        self.next_tokens = tokens
        self.rows = [rows[i] for i in order]

    def _adopt(self, prefill: Prefill, keep: list[int]) -> None:
        self.cache, self.mask, self.next_tokens = prefill.cache, prefill.mask, prefill.next_tokens
        self.rows = [prefill.rows[p] for p in keep]
        if len(keep) < len(prefill.rows):
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.next_tokens = self.mask[index], self.next_tokens[index]
            self._trim_left()


# --------------------------------------------------------------------------
# Tokens


def sample(rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
    """The next token of every row: argmax for greedy rows, else temperature
    and top-p, drawn with the row's own generator."""
    # In fp32: argmax over bf16 logits is several times slower on a CPU (same result).
    next_tokens = logits.float().argmax(dim=-1)
    sampled = [position for position, row in enumerate(rows) if row.generator is not None and not row.done]
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


def advance_all(handle: Handle, rows: list[Row], tokens: torch.Tensor) -> None:
    for row, token in zip(rows, tokens.tolist(), strict=True):  # one device sync per step
        if not row.done:
            advance(handle, row, token)


def advance(handle: Handle, row: Row, token: int) -> None:
    """Take one generated token into the row: finish it, or stream what became final."""
    if token in handle.eos_ids:
        finish(handle, row, "stop")
        return
    row.token_ids.append(token)
    streams = row.owner.streams
    if row.request.stop or streams:
        row.text = _decode(handle, row.token_ids)
        stop_at = _first_stop(row.text, row.request.stop)
        if stop_at is not None:
            row.text = row.text[:stop_at]
            finish(handle, row, "stop", text_is_final=True)
            return
    if len(row.token_ids) >= row.request.max_new_tokens:
        finish(handle, row, "length")
        return
    if streams:
        final_until = final_text_length(row.text, row.request.stop)
        if final_until > row.streamed:
            row.owner.on_text(row.index, row.text[row.streamed : final_until])
            row.streamed = final_until


def finish(handle: Handle, row: Row, reason: str, text_is_final: bool = False) -> None:
    row.finish_reason = reason
    if not text_is_final:
        row.text = _decode(handle, row.token_ids)
    if row.owner.streams and len(row.text) > row.streamed:
        row.owner.on_text(row.index, row.text[row.streamed :])
        row.streamed = len(row.text)
    row.owner.on_result(row.index, GenerationResult(token_ids=row.token_ids, text=row.text, finish_reason=reason))


def _decode(handle: Handle, token_ids: list[int]) -> str:
    # No clean-up of spaces: it can rewrite earlier text when more tokens
    # arrive (" 's" -> "'s"), and text already streamed cannot be taken back.
    if handle.tokenizer_lock is None:
        return handle.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    with handle.tokenizer_lock:
        return handle.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [position for position in (text.find(stop) for stop in stops) if position >= 0]
    return min(positions) if positions else None


def final_text_length(text: str, stops: tuple[str, ...]) -> int:
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
