"""How many rows decode together and how many prompt tokens a prefill step
runs: measured for the model on this device, not fixed.

A decode step reads every weight once whatever the number of rows, so more
rows per step give more tokens per second, until the step becomes bound by
compute rather than by reading weights; beyond that point more rows only make
every row slower. Where that point lies depends on the device and the model
(on a 2-core CPU, SmolLM2-135M went from 125 to 186 tokens/s between 16 and
64 rows). So each loaded base model is measured once: decode steps at growing
numbers of rows over a synthetic KV cache, and prefills of growing numbers of
prompt tokens; the budget is the smallest size that reaches KNEE of the best
throughput measured, and no step longer than MAX_STEP_SECONDS (a streamed
chat's tokens arrive one step apart). The figures are kept on disk per model,
dtype, device and thread count, so a worker that restarts does not measure again.

On a CPU the decode steps are also measured on one thread. A decode step is
thousands of small operators, and each one that OpenMP splits over two
threads waits for the second thread to wake up (with OMP_WAIT_POLICY=PASSIVE,
which the workers set so as not to spin against each other: ~45 us per
operator on the 2-core development VM, against 3-6 us on one thread), while
only the larger matrix products gain from the second thread. So steps of up
to `single_thread_rows` rows, where one thread measured at least as fast, run
on one thread; prefills and larger steps on all of them.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from worker.kept_measurements import device_name, kept_or_measured

log = logging.getLogger(__name__)

ROW_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PREFILL_LADDER = (64, 128, 256, 512, 1024, 2048, 4096)
PROBE_CONTEXT = 128  # tokens already in the cache of each row in the decode probe
PROBE_PROMPT = 128  # tokens per prompt in the prefill probe
# The smallest size reaching this share of the best throughput: beyond it, a
# few per cent more throughput would cost every row a much slower step.
KNEE = 0.95
# A step longer than this makes streamed text arrive in visible jerks.
MAX_STEP_SECONDS = 0.5
TIMED_STEPS = 3
# The one-thread decode ladder stops at the first size where it is below this
# share of the all-threads rate: larger sizes only grow the gap.
SLOWER_LADDER_STOP = 0.8
# Share of the memory free at load time that KV caches may take.
KV_MEMORY_SHARE = 0.5
# Part of the key of kept figures: a changed probe measures again.
PROBE_VERSION = 3  # 2: decode attention (attention.py); 3: contiguous output projection (batching.py), one thread


@dataclass(frozen=True)
class Budget:
    max_rows: int  # rows decoded together (chat requests may exceed it by interactive_margin)
    prefill_tokens: int  # prompt tokens run per prefill step
    kv_tokens: int | None = None  # KV cache tokens that fit in memory; None = not limited
    how: str = "measured"
    figures: dict = field(default_factory=dict, compare=False)  # the measurements, for the log
    single_thread_rows: int = 0  # decode steps of at most this many rows run on one thread (CPU)

    @property
    def interactive_margin(self) -> int:
        return max(4, self.max_rows // 4)

    def decode_threads(self, rows: int) -> int | None:
        """Threads for a decode step of `rows` rows: 1, or None for all of them."""
        return 1 if rows <= self.single_thread_rows else None


@contextmanager
def torch_threads(count: int | None):
    """torch's intra-op threads set to `count` for the block (None: unchanged)."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed(function, repeats: int) -> float:
    """The fastest of `repeats` runs, in seconds: on a shared machine the
    others are slowed by neighbours, not by the work."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def _knee(rates: dict[int, float]) -> int:
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= KNEE * best)


def _kv_bytes_per_token(cache) -> int:
    total = 0
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            total += layer.keys[0].numel() * layer.keys.element_size() + layer.values[0].numel() * layer.values.element_size()
    return total // max(1, cache.get_seq_length())


def _free_memory_bytes(device: str) -> int | None:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return free
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        return None


def measure(model, device: str, *, max_rows: int | None = None) -> Budget:
    """Time decode steps and prefills of `model` (its base weights, adapters left out)."""
    from transformers import DynamicCache

    from worker.inference.batching import _cache_argument, contiguous_output_projection, new_cache
    from worker.inference.lora import forward_with_adapters

    cache_argument = _cache_argument(model)
    contiguous_output_projection(model)  # as the decode loop runs it

    def forward(**inputs):
        return forward_with_adapters(model, [None] * inputs["input_ids"].shape[0], **inputs)

    vocabulary = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)

    def random_ids(rows: int, length: int) -> torch.Tensor:
        return torch.randint(0, vocabulary, (rows, length), generator=generator).to(device)

    figures: dict = {}
    with torch.inference_mode():
        one_row = DynamicCache(config=model.config)
        forward(input_ids=random_ids(1, PROBE_CONTEXT), use_cache=True, logits_to_keep=1, **{cache_argument: one_row})
        per_token = _kv_bytes_per_token(one_row)
        free = _free_memory_bytes(device)
        kv_tokens = int(free * KV_MEMORY_SHARE / per_token) if free and per_token else None
        figures.update(kv_bytes_per_token=per_token, kv_tokens=kv_tokens)

        def decode_rates(behind: dict[int, float] | None = None) -> dict[int, float]:
            """Tokens/s per number of rows; against `behind` (another ladder), it
            stops once it is clearly slower than that one."""
            rates: dict[int, float] = {}
            for rows in ROW_LADDER:
                if kv_tokens is not None and rows * (PROBE_CONTEXT + 2 * TIMED_STEPS) * 4 > kv_tokens:
                    break
                cache = new_cache(model)  # the kind the decode loop uses
                for layer, source in zip(cache.layers, one_row.layers, strict=True):
                    layer.update(source.keys.expand(rows, -1, -1, -1), source.values.expand(rows, -1, -1, -1))
                mask = torch.ones(rows, PROBE_CONTEXT, dtype=torch.long, device=device)

                def step() -> None:
                    nonlocal mask
                    mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=-1)
                    forward(input_ids=random_ids(rows, 1), attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                          use_cache=True, logits_to_keep=1, **{cache_argument: cache})

                step()  # warm-up: first-call costs are not the device's speed
                seconds = _timed(step, TIMED_STEPS)
                del cache
                if seconds > MAX_STEP_SECONDS and rates:
                    break
                rates[rows] = rows / seconds
                if behind is not None and rates[rows] < SLOWER_LADDER_STOP * behind.get(rows, 0.0):
                    break
            return rates

        single_thread_rows = 0
        if max_rows is None:
            rates = decode_rates()
            figures["decode_tokens_per_second"] = {rows: round(rate, 1) for rows, rate in rates.items()}
            if device.startswith("cpu") and torch.get_num_threads() > 1:
                with torch_threads(1):
                    single = decode_rates(behind=rates)
                figures["decode_tokens_per_second_one_thread"] = {rows: round(rate, 1) for rows, rate in single.items()}
                single_thread_rows = max((rows for rows, rate in single.items() if rate >= rates.get(rows, 0.0)),
                                         default=0)
                # Each size at its faster thread count; the budget's size is then chosen from those.
                rates = {rows: max(rates.get(rows, 0.0), single.get(rows, 0.0)) for rows in rates.keys() | single.keys()}
            max_rows = _knee(rates)

        prefill_rates: dict[int, float] = {}
        for tokens in PREFILL_LADDER:
            rows = max(1, tokens // PROBE_PROMPT)
            ids = random_ids(rows, tokens // rows)

            def prefill() -> None:
                forward(input_ids=ids, use_cache=False, logits_to_keep=1)

            if not prefill_rates:
                prefill()  # warm-up
            seconds = _timed(prefill, 2)
            if seconds > MAX_STEP_SECONDS and prefill_rates:
                break
            prefill_rates[tokens] = tokens / seconds
        figures["prefill_tokens_per_second"] = {size: round(rate, 1) for size, rate in prefill_rates.items()}
    return Budget(max_rows=max_rows, prefill_tokens=_knee(prefill_rates), kv_tokens=kv_tokens, figures=figures,
                  single_thread_rows=single_thread_rows)


def budget_for(model, device: str, *, model_id: str, dtype: str, cache_file: Path, max_rows: int = 0) -> Budget:
    """The model's budget: measured once per model, dtype, device and thread
    count and kept in `cache_file` (worker/kept_measurements.py); `max_rows`
    > 0 sets the rows instead (TUNEHOUSE_INFERENCE_BATCH_SIZE)."""
    key = (f"{model_id}|{dtype}|{device_name(device)}|threads={torch.get_num_threads()}|torch={torch.__version__}"
           f"|probe={PROBE_VERSION}")
    if max_rows:
        key += f"|rows={max_rows}"

    def measure_now() -> dict:
        started = time.perf_counter()
        budget = measure(model, device, max_rows=max_rows or None)
        if max_rows:
            budget = Budget(max_rows, budget.prefill_tokens, budget.kv_tokens, how="rows set, prefill measured",
                            figures=budget.figures)
        log.info("inference budget of %s (%s), measured in %.1f s: %s", model_id, dtype,
                 time.perf_counter() - started, _describe(budget))
        return {**asdict(budget), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}

    entry, measured_now = kept_or_measured(cache_file, key, measure_now)
    budget = Budget(entry["max_rows"], entry["prefill_tokens"], entry.get("kv_tokens"),
                    how=entry["how"] if measured_now else f"measured {entry.get('measured_at', 'earlier')}",
                    figures=entry.get("figures", {}), single_thread_rows=entry.get("single_thread_rows", 0))
    if not measured_now:
        log.info("inference budget of %s (%s): %s", model_id, dtype, _describe(budget))
    return budget


def _describe(budget: Budget) -> str:
    return (f"{budget.max_rows} rows per step ({budget.single_thread_rows} or fewer on one thread), "
            f"{budget.prefill_tokens} prompt tokens per prefill step, "
            f"KV room for {budget.kv_tokens} tokens ({budget.how}; {budget.figures})")
