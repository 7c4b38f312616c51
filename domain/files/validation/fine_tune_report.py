"""The report of a valid fine-tune file: examples, split, roles, lengths,
duplicates and warnings, from numbers kept compact however large the file.

``ExampleStats`` holds what every format's report shares (split, duplicates,
estimated tokens); ``FineTuneStats`` is the chat report, the other formats'
are in format_reports.py."""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from operator import and_, mul, or_, rshift

from domain.files.split import TEST_FRACTION, TestDraw
from domain.files.validation.result import plural

LONG_EXAMPLE_TOKENS = 4096
MAX_TRACKED_SYSTEM_PROMPTS = 10_000
MAX_DUPLICATE_EXAMPLES = 10


class ExampleStats:
    """What the reports of every format share: per-example characters and
    estimated tokens, the split counts, duplicate lines and their warnings.
    Kept compact for huge files."""

    format = ""  # formats.py: the report's "format"

    def __init__(self) -> None:
        # One entry per example; 'I' (4 bytes) is plenty since a line is at most 8 MiB.
        self.characters = array("I")
        self.tokens = array("I")
        self.long_examples = 0
        self.explicit_train = self.explicit_test = self.unsplit = 0
        self.first_lines = FirstLineIndex()
        self.duplicate_count = 0
        self.duplicate_examples: list[dict] = []

    @property
    def examples(self) -> int:
        return len(self.tokens)

    def _add_examples(self, line_numbers: Sequence[int], lines: Sequence[bytes], characters: Sequence[int],
                      tokens: Sequence[int], split: Sequence[str | None]) -> None:
        """Counts what every format counts of examples, in file order."""
        self.characters.extend(characters)
        self.tokens.extend(tokens)
        self.long_examples += sum(map(LONG_EXAMPLE_TOKENS.__lt__, tokens))
        self.unsplit += split.count(None)
        self.explicit_test += split.count("TEST")
        self.explicit_train += split.count("TRAIN")
        for line_no, first_line in self.first_lines.add_many(map(hash, lines), line_numbers):
            self.duplicate_count += 1
            if len(self.duplicate_examples) < MAX_DUPLICATE_EXAMPLES:
                self.duplicate_examples.append({"line": line_no, "duplicate_of": first_line})

    def _report_head(self, lines: int, blank_lines: int, seed: int) -> dict:
        """The keys every format's report begins with."""
        return {"purpose": "fine-tune", "format": self.format, "lines": lines, "blank_lines": blank_lines,
                "examples": self.examples, "split": self._split_report(seed)}

    def _token_report(self, method: str) -> dict:
        token_counts = _value_counts(self.tokens)
        token_summary = _number_summary(self.tokens, token_counts)
        token_summary["total"] = sum(self.tokens)
        token_summary["histogram"] = _length_histogram(self.tokens, token_counts)
        token_summary["method"] = method
        return token_summary

    def _duplicates_report(self) -> dict:
        return {"count": self.duplicate_count, "examples": list(self.duplicate_examples)}

    def _split_report(self, seed: int) -> dict:
        drawn_test = TestDraw.test_size(self.unsplit)
        drawn_train = self.unsplit - drawn_test
        explicit = self.explicit_train + self.explicit_test
        if explicit == 0:
            method = "hash_draw"
        elif self.unsplit == 0:
            method = "explicit"
        else:
            method = "mixed"
        train, test = self.explicit_train + drawn_train, self.explicit_test + drawn_test
        return {
            "method": method, "seed": seed, "test_fraction": TEST_FRACTION,
            "explicit_train": self.explicit_train, "explicit_test": self.explicit_test,
            "drawn_train": drawn_train, "drawn_test": drawn_test,
            "train": train, "test": test,
            "description": self._describe_split(method, seed, drawn_train, drawn_test),
        }

    def _describe_split(self, method: str, seed: int, drawn_train: int, drawn_test: int) -> str:
        draw = (f"a seeded hash draw (seed {seed}, {TEST_FRACTION:.0%} to test): "
                f"{drawn_train} train, {drawn_test} test.")
        if method == "hash_draw":
            return f"All {plural(self.unsplit, 'example')} were split by {draw}"
        explicit = self.explicit_train + self.explicit_test
        chose = (f"{plural(explicit, 'line')} chose {'its' if explicit == 1 else 'their'} "
                 f"split with the 'split' key ({self.explicit_train} train, {self.explicit_test} test)")
        if method == "explicit":
            return f"All {chose}."
        other = f"the other {self.unsplit} {'was' if self.unsplit == 1 else 'were'}"
        return f"{chose}; {other} split by {draw}"

    def _duplicate_and_length_warnings(self) -> list[str]:
        warnings = []
        if self.duplicate_count:
            first = self.duplicate_examples[0]
            warnings.append(
                f"{plural(self.duplicate_count, 'line')} exactly "
                f"{'repeats' if self.duplicate_count == 1 else 'repeat'} an earlier line "
                f"(e.g. line {first['line']} repeats line {first['duplicate_of']}); "
                "duplicates get extra weight in training, remove them unless that is intended")
        if self.long_examples:
            warnings.append(
                f"{plural(self.long_examples, 'example')} "
                f"{'is' if self.long_examples == 1 else 'are'} longer than "
                f"{LONG_EXAMPLE_TOKENS} estimated tokens and may be truncated")
        return warnings

    @staticmethod
    def _no_test_warning(split: dict) -> list[str]:
        if split["test"]:
            return []
        return ["no TEST examples: \"split\": \"TRAIN\" keys leave too few lines for the seeded "
                "draw, so there is nothing to evaluate on; add \"split\": \"TEST\" to some lines "
                "(or remove \"split\" from some lines to let the draw choose)"]


class FineTuneStats(ExampleStats):
    """Numbers about valid chat examples, kept compact for huge files."""

    format = "chat"

    def __init__(self) -> None:
        super().__init__()
        self.messages = array("I")
        self.role_counts = dict.fromkeys(("system", "user", "assistant", "tool"), 0)
        self.assistant_weight_0 = 0
        self.examples_with_weight_0 = 0
        self.examples_with_system_prompt = 0
        self.system_prompt_hashes: set[int] = set()
        self.system_prompts_capped = False
        self.examples_with_tools = 0
        self.not_ending_with_assistant = 0

    def add(self, line_no: int, line: bytes, summary: tuple) -> None:
        """Count one valid example, given its ``summarize()`` tuple."""
        self.add_many((line_no,), (line,), (summary,))

    def add_many(self, line_numbers: Sequence[int], lines: Sequence[bytes],
                 summaries: Sequence[tuple]) -> None:
        """Count valid examples, in file order: their line numbers, their
        lines and their ``summarize()`` tuples (or the same tuples from the
        fast path, typed.fine_tune_summary). Column by column, in C where it can."""
        if not summaries:
            return
        (messages, characters, tokens, system, user, assistant, tool, weight_0, system_prompts,
         uses_tools, ends_with_assistant, split) = zip(*summaries)
        count = len(summaries)
        self.messages.extend(messages)
        role_counts = self.role_counts
        role_counts["system"] += sum(system)
        role_counts["user"] += sum(user)
        role_counts["assistant"] += sum(assistant)
        role_counts["tool"] += sum(tool)
        self.examples_with_tools += sum(uses_tools)
        self.not_ending_with_assistant += count - sum(ends_with_assistant)
        self.assistant_weight_0 += sum(weight_0)
        self.examples_with_weight_0 += count - weight_0.count(0)
        self._add_system_prompts(list(filter(None, system_prompts)))  # a system prompt is never empty
        self._add_examples(line_numbers, lines, characters, tokens, split)

    def _add_system_prompts(self, prompts: list[str]) -> None:
        if not prompts:
            return
        self.examples_with_system_prompt += len(prompts)
        seen = self.system_prompt_hashes
        digests = set(map(hash, prompts))
        if len(seen) + len(digests) <= MAX_TRACKED_SYSTEM_PROMPTS:
            seen |= digests  # the cap cannot be reached: the same as adding one by one
            return
        for digest in map(hash, prompts):
            if len(seen) < MAX_TRACKED_SYSTEM_PROMPTS:
                seen.add(digest)
            elif digest not in seen:
                self.system_prompts_capped = True

    def report(self, lines: int, blank_lines: int, seed: int) -> dict:
        report = self._report_head(lines, blank_lines, seed)
        return {
            **report,
            "messages_per_example": _number_summary(self.messages, _value_counts(self.messages)),
            "roles": dict(self.role_counts),
            "assistant_messages_weight_0": self.assistant_weight_0,
            "examples_with_system_prompt": self.examples_with_system_prompt,
            "distinct_system_prompts": len(self.system_prompt_hashes),
            "characters": _number_summary(self.characters, _value_counts(self.characters)),
            "estimated_tokens": self._token_report("characters / 4, plus 4 per message"),
            "examples_with_tools": self.examples_with_tools,
            "duplicates": self._duplicates_report(),
            "warnings": self._warnings(report["split"]),
        }

    def _warnings(self, split: dict) -> list[str]:
        warnings = self._duplicate_and_length_warnings()
        warnings += self._system_prompt_warnings()
        warnings += self._no_test_warning(split)
        if self.not_ending_with_assistant:
            warnings.append(
                f"{plural(self.not_ending_with_assistant, 'example')} "
                f"{'ends' if self.not_ending_with_assistant == 1 else 'end'} with a message "
                "that is not from the assistant; evaluation uses the last assistant message as "
                "the reference answer, so the messages after it are not evaluated")
        if self.examples_with_weight_0:
            warnings.append(
                f"{plural(self.examples_with_weight_0, 'example')} "
                f"{'has' if self.examples_with_weight_0 == 1 else 'have'} assistant messages "
                "with weight 0; those messages are context only and are not trained on")
        return warnings

    def _system_prompt_warnings(self) -> list[str]:
        if self.examples_with_system_prompt == 0:
            return ["no example has a system prompt; that is fine, but then call the fine-tuned "
                    "model without one too, or add the system prompt you will use in production "
                    "to every example"]
        if self.examples_with_system_prompt == self.examples and len(self.system_prompt_hashes) == 1:
            return ["all examples share one system prompt; use exactly that system prompt when "
                    "calling the fine-tuned model, since it has only learned to answer under it"]
        if self.system_prompts_capped:
            return [f"more than {MAX_TRACKED_SYSTEM_PROMPTS} distinct system prompts; "
                    f"'distinct_system_prompts' stops counting at {MAX_TRACKED_SYSTEM_PROMPTS}"]
        return []


class FirstLineIndex:
    """Line hash -> the first line with that hash, for duplicate detection.

    An open-addressing table in two flat arrays: about 24 bytes a line where a
    dict of ints takes ~100, which keeps a 1 GB upload's memory flat. Hashes are
    Python's 64-bit hash of the line; a collision (about 1 in 10^7 for a million
    lines) would only misreport one duplicate."""

    _EMPTY = 0

    def __init__(self) -> None:
        self._hashes = array("Q", (0,)) * 1024
        self._lines = array("I", (0,)) * 1024
        self._used = 0

    def first_line(self, line_hash: int, line_no: int) -> int:
        """The first line seen with `line_hash`; records `line_no` if it is the first."""
        for _, first_line in self.add_many((line_hash,), (line_no,)):
            return first_line
        return line_no

    def add_many(self, line_hashes: Iterable[int], line_numbers: Iterable[int]) -> list[tuple[int, int]]:
        """Records lines in order; returns (line, first line) for each line
        whose hash was seen before."""
        # Keys as unsigned 64-bit, never _EMPTY (0): computed in C for the whole batch.
        keys = list(map(or_, map(and_, line_hashes, repeat(0xFFFF_FFFF_FFFF_FFFF)), repeat(1)))
        while (self._used + len(keys)) * 2 > len(self._hashes):  # grown before, not during, the loop
            self._grow()
        hashes, lines = self._hashes, self._lines
        mask = len(hashes) - 1
        repeats = []
        for key, slot, line_no in zip(keys, map(and_, keys, repeat(mask)), line_numbers):
            found = hashes[slot]
            while found:
                if found == key:
                    repeats.append((line_no, lines[slot]))
                    break
                slot = (slot + 1) & mask
                found = hashes[slot]
            else:  # an empty slot: the first line with this hash
                hashes[slot] = key
                lines[slot] = line_no
        self._used += len(keys) - len(repeats)
        return repeats

    def _grow(self) -> None:
        old_hashes, old_lines = self._hashes, self._lines
        size = len(old_hashes) * 2
        self._hashes = hashes = array("Q", (0,)) * size
        self._lines = lines = array("I", (0,)) * size
        mask = size - 1
        for key, line_no in compress(zip(old_hashes, old_lines), old_hashes):  # used slots only
            slot = key & mask
            while hashes[slot]:
                slot = (slot + 1) & mask
            hashes[slot] = key
            lines[slot] = line_no


def summarize(example: dict) -> tuple:
    """What FineTuneStats counts of one valid example (a dict, as the Python
    rules checked it): (messages, characters, estimated tokens, then messages
    by role: system, user, assistant, tool; assistant messages with weight 0,
    the first system prompt or None, uses tools, ends with an assistant
    message, split or None)."""
    messages = example["messages"]
    role_counts = dict.fromkeys(("system", "user", "assistant", "tool"), 0)
    characters = weight_0 = 0
    system_prompt = None
    uses_tools = bool(example.get("tools"))
    for message in messages:
        role = message["role"]
        role_counts[role] += 1
        content = message.get("content")
        if content:
            characters += len(content)
        if role == "assistant":
            if message.get("weight") == 0:
                weight_0 += 1
            if "tool_calls" in message:
                uses_tools = True
        elif role == "system" and system_prompt is None:
            system_prompt = content
    count = len(messages)
    return (count, characters, estimate_tokens(characters, count), role_counts["system"],
            role_counts["user"], role_counts["assistant"], role_counts["tool"], weight_0,
            system_prompt, uses_tools, messages[-1]["role"] == "assistant", example.get("split"))


def estimate_tokens(characters: int, messages: int) -> int:
    # Rough rule of thumb (about 4 characters per token, plus per-message overhead).
    return -(-characters // 4) + 4 * messages


def _value_counts(values: array) -> Counter | None:
    """How often each value occurs (one pass in C), when they are all below
    2^16 (at most 2^16 counters); None otherwise. The summary, the p95 and the
    histogram then come from the counters instead of more passes over `values`."""
    if values and max(values) < 1 << 16:
        return Counter(values)
    return None


def _number_summary(values: array, counts: Counter | None = None) -> dict:
    count = len(values)
    if not count:
        return {"min": 0, "mean": 0.0, "max": 0, "p95": 0}
    if counts is None:
        return {"min": min(values), "mean": round(sum(values) / count, 2),
                "max": max(values), "p95": _p95(values)}
    return {"min": min(counts), "mean": round(sum(map(mul, counts.keys(), counts.values())) / count, 2),
            "max": max(counts), "p95": _p95(values, counts)}


def _length_histogram(values: array, counts: Counter | None = None) -> list[dict]:
    """Examples per length bucket, doubling widths (0-15, 16-31, 32-63, …):
    token lengths are long-tailed, so equal widths would hide the short ones.
    Empty buckets between the shortest and longest are kept."""
    if counts is None:
        by_bits = Counter(map(int.bit_length, values))  # counted in C
    else:
        by_bits = Counter()
        for value, times in counts.items():
            by_bits[value.bit_length()] += times
    if not by_bits:
        return []
    for bits in [bits for bits in by_bits if bits < 4]:  # 0-15 is one bucket
        by_bits[4] += by_bits.pop(bits)
    buckets = []
    for bits in range(min(by_bits), max(by_bits) + 1):
        low = 0 if bits == 4 else 1 << (bits - 1)
        buckets.append({"min": low, "max": (1 << bits) - 1, "count": by_bits.get(bits, 0)})
    return buckets


def _p95(values: array, counts: Counter | None = None) -> int:
    """Nearest-rank 95th percentile (from `counts`, _value_counts(values), if given)."""
    rank = (95 * len(values) + 99) // 100  # ceil(0.95 * n) in exact integer arithmetic
    if counts is not None:
        return _kth_key(counts, rank)[0]
    return _kth_smallest(values, rank)


def _kth_smallest(values: array, k: int) -> int:
    """The k-th smallest (1-based) of unsigned 32-bit values: a radix select
    in passes over `values` done in C, with at most 2^16 counters in memory
    (a sort would hold every value as a Python int, a heap loops in Python)."""
    shift = max(max(values).bit_length() - 16, 0)  # the high 16 bits first
    high, k = _kth_key(Counter(map(rshift, values, repeat(shift))), k)
    if shift == 0:
        return high
    same_high = compress(values, map(high.__eq__, map(rshift, values, repeat(shift))))
    low, _ = _kth_key(Counter(map(and_, same_high, repeat((1 << shift) - 1))), k)
    return (high << shift) | low


def _kth_key(counts: Counter, k: int) -> tuple[int, int]:
    """The key holding the k-th smallest value, and k's rank among that key's values."""
    for key in sorted(counts):
        if k <= counts[key]:
            return key, k
        k -= counts[key]
    raise ValueError("k is larger than the number of values")


def length_summary(values: array) -> dict:
    """min, mean, max, p95 and total of per-example lengths."""
    summary = _number_summary(values, _value_counts(values))
    summary["total"] = sum(values)
    return summary
