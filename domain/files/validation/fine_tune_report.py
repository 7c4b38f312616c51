"""The report of a valid fine-tune file: examples, split, roles, lengths,
duplicates and warnings, from numbers kept compact however large the file."""

from __future__ import annotations

import heapq
from array import array
from collections import Counter

from domain.files.split import TEST_FRACTION, TestDraw
from domain.files.validation.result import plural

LONG_EXAMPLE_TOKENS = 4096
MAX_TRACKED_SYSTEM_PROMPTS = 10_000
MAX_DUPLICATE_EXAMPLES = 10


class FineTuneStats:
    """Numbers about valid fine-tune examples, kept compact for huge files."""

    def __init__(self) -> None:
        # One entry per example; 'I' (4 bytes) is plenty since a line is at most 8 MiB.
        self.messages = array("I")
        self.characters = array("I")
        self.tokens = array("I")
        self.role_counts = dict.fromkeys(("system", "user", "assistant", "tool"), 0)
        self.assistant_weight_0 = 0
        self.examples_with_weight_0 = 0
        self.examples_with_system_prompt = 0
        self.system_prompt_hashes: set[int] = set()
        self.system_prompts_capped = False
        self.examples_with_tools = 0
        self.not_ending_with_assistant = 0
        self.long_examples = 0
        self.explicit_train = self.explicit_test = self.unsplit = 0
        self.first_lines = FirstLineIndex()
        self.duplicate_count = 0
        self.duplicate_examples: list[dict] = []

    @property
    def examples(self) -> int:
        return len(self.messages)

    def add(self, line_no: int, line: bytes, example: dict) -> None:
        messages = example["messages"]
        role_counts = self.role_counts
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
        tokens = _estimate_tokens(characters, len(messages))
        self.messages.append(len(messages))
        self.characters.append(characters)
        self.tokens.append(tokens)
        self.long_examples += tokens > LONG_EXAMPLE_TOKENS
        self.examples_with_tools += uses_tools
        self.not_ending_with_assistant += messages[-1]["role"] != "assistant"
        if weight_0:
            self.assistant_weight_0 += weight_0
            self.examples_with_weight_0 += 1
        if system_prompt is not None:
            self._add_system_prompt(system_prompt)
        self._add_split(example.get("split"))
        self._add_line_hash(line_no, line)

    def _add_system_prompt(self, prompt: str) -> None:
        self.examples_with_system_prompt += 1
        digest = hash(prompt)
        if len(self.system_prompt_hashes) < MAX_TRACKED_SYSTEM_PROMPTS:
            self.system_prompt_hashes.add(digest)
        elif digest not in self.system_prompt_hashes:
            self.system_prompts_capped = True

    def _add_split(self, split: str | None) -> None:
        if split is None:
            self.unsplit += 1
        elif split == "TEST":
            self.explicit_test += 1
        else:
            self.explicit_train += 1

    def _add_line_hash(self, line_no: int, line: bytes) -> None:
        first_line = self.first_lines.first_line(hash(line), line_no)
        if first_line != line_no:
            self.duplicate_count += 1
            if len(self.duplicate_examples) < MAX_DUPLICATE_EXAMPLES:
                self.duplicate_examples.append({"line": line_no, "duplicate_of": first_line})

    def report(self, lines: int, blank_lines: int, seed: int) -> dict:
        token_summary = _number_summary(self.tokens)
        token_summary["total"] = sum(self.tokens)
        token_summary["histogram"] = _length_histogram(self.tokens)
        token_summary["method"] = "characters / 4, plus 4 per message"
        split = self._split_report(seed)
        return {
            "purpose": "fine-tune",
            "lines": lines,
            "blank_lines": blank_lines,
            "examples": self.examples,
            "split": split,
            "messages_per_example": _number_summary(self.messages),
            "roles": dict(self.role_counts),
            "assistant_messages_weight_0": self.assistant_weight_0,
            "examples_with_system_prompt": self.examples_with_system_prompt,
            "distinct_system_prompts": len(self.system_prompt_hashes),
            "characters": _number_summary(self.characters),
            "estimated_tokens": token_summary,
            "examples_with_tools": self.examples_with_tools,
            "duplicates": {"count": self.duplicate_count, "examples": list(self.duplicate_examples)},
            "warnings": self._warnings(split),
        }

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

    def _warnings(self, split: dict) -> list[str]:
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
        warnings += self._system_prompt_warnings()
        if split["test"] == 0:
            warnings.append(
                "no TEST examples: \"split\": \"TRAIN\" keys leave too few lines for the seeded "
                "draw, so there is nothing to evaluate on; add \"split\": \"TEST\" to some lines "
                "(or remove \"split\" from some lines to let the draw choose)")
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
        self._hashes = array("Q", bytes(8 * 1024))
        self._lines = array("I", bytes(4 * 1024))
        self._used = 0

    def first_line(self, line_hash: int, line_no: int) -> int:
        """The first line seen with `line_hash`; records `line_no` if it is the first."""
        key = (line_hash & 0xFFFF_FFFF_FFFF_FFFF) | 1  # never _EMPTY
        hashes = self._hashes
        mask = len(hashes) - 1
        slot = key & mask
        while True:
            found = hashes[slot]
            if found == key:
                return self._lines[slot]
            if found == self._EMPTY:
                break
            slot = (slot + 1) & mask
        hashes[slot] = key
        self._lines[slot] = line_no
        self._used += 1
        if self._used * 2 > len(hashes):
            self._grow()
        return line_no

    def _grow(self) -> None:
        old_hashes, old_lines = self._hashes, self._lines
        size = len(old_hashes) * 2
        self._hashes = array("Q", bytes(8 * size))
        self._lines = array("I", bytes(4 * size))
        mask = size - 1
        for key, line_no in zip(old_hashes, old_lines):
            if key == self._EMPTY:
                continue
            slot = key & mask
            while self._hashes[slot] != self._EMPTY:
                slot = (slot + 1) & mask
            self._hashes[slot] = key
            self._lines[slot] = line_no


def _estimate_tokens(characters: int, messages: int) -> int:
    # Rough rule of thumb (about 4 characters per token, plus per-message overhead).
    return -(-characters // 4) + 4 * messages


def _number_summary(values: array) -> dict:
    count = len(values)
    if not count:
        return {"min": 0, "mean": 0.0, "max": 0, "p95": 0}
    return {"min": min(values), "mean": round(sum(values) / count, 2),
            "max": max(values), "p95": _p95(values)}


def _length_histogram(values: array) -> list[dict]:
    """Examples per length bucket, doubling widths (0-15, 16-31, 32-63, …):
    token lengths are long-tailed, so equal widths would hide the short ones.
    Empty buckets between the shortest and longest are kept."""
    counts = Counter(max(value.bit_length(), 4) for value in values)
    if not counts:
        return []
    buckets = []
    for bits in range(min(counts), max(counts) + 1):
        low = 0 if bits == 4 else 1 << (bits - 1)
        buckets.append({"min": low, "max": (1 << bits) - 1, "count": counts.get(bits, 0)})
    return buckets


def _p95(values: array) -> int:
    """Nearest-rank 95th percentile, keeping only the top 5% in memory."""
    rank = (95 * len(values) + 99) // 100  # ceil(0.95 * n) in exact integer arithmetic
    return heapq.nlargest(len(values) - rank + 1, values)[-1]
