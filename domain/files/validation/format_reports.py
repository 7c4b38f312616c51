"""The reports of valid fine-tune files in the formats other than chat: text,
prompt/completion and preference pairs (domain/files/validation/formats.py).

Each shares with the chat report (fine_tune_report.FineTuneStats) the keys
``purpose``, ``format``, ``lines``, ``blank_lines``, ``examples``, ``split``,
``characters``, ``estimated_tokens`` (with ``total``, ``histogram`` and
``method``), ``duplicates`` and ``warnings``, so job previews, evaluations
and the UI read them alike; then its own numbers:

- text: nothing more (the tokens are the text's);
- prompt_completion: ``prompt_tokens`` and ``completion_tokens`` (min, mean,
  max, p95, total) and ``empty_prompts``;
- preference: ``pairs``, ``messages_per_prompt``, ``prompt_tokens``,
  ``preferred_tokens`` and ``non_preferred_tokens`` (min, mean, max, p95,
  total) and ``examples_with_tools``.

Tokens are estimated as for chat: characters / 4 (rounded up), plus 4 per
message where there are messages and 1 for the end of text where there are
none. A line's summary is a tuple made by the ``summarize_*`` functions.
"""

from __future__ import annotations

from array import array

from domain.files.validation.fine_tune_report import ExampleStats, estimate_tokens, length_summary
from domain.files.validation.formats import PREFERENCE, PROMPT_COMPLETION, TEXT


def _text_tokens(characters: int) -> int:
    return -(-characters // 4) + 1  # the end of text


class _FlatStats(ExampleStats):
    """Counts examples from their summaries (characters, tokens, split, then
    the format's own numbers), column by column."""

    token_method = ""

    def add_many(self, line_numbers, lines, summaries) -> None:
        """Count valid examples, in file order: their line numbers, lines and summaries."""
        if not summaries:
            return
        characters, tokens, split, *own = zip(*summaries)
        self._add_examples(line_numbers, lines, characters, tokens, split)
        self._add_own(*own)

    def _add_own(self, *own) -> None:
        pass

    def report(self, lines: int, blank_lines: int, seed: int) -> dict:
        report = self._report_head(lines, blank_lines, seed)
        return {
            **report,
            **self._own_report(),
            "characters": length_summary(self.characters),
            "estimated_tokens": self._token_report(self.token_method),
            "duplicates": self._duplicates_report(),
            "warnings": self._duplicate_and_length_warnings() + self._no_test_warning(report["split"]),
        }

    def _own_report(self) -> dict:
        return {}


class TextStats(_FlatStats):
    format = TEXT
    token_method = "characters / 4, plus 1 for the end of text"


def summarize_text(example: dict) -> tuple:
    characters = len(example["text"])
    return characters, _text_tokens(characters), example.get("split")


class PromptCompletionStats(_FlatStats):
    format = PROMPT_COMPLETION
    token_method = "characters / 4 of the prompt and of the completion, plus 1 for the end of text"

    def __init__(self) -> None:
        super().__init__()
        self.prompt_tokens = array("I")
        self.completion_tokens = array("I")
        self.empty_prompts = 0

    def _add_own(self, prompt_tokens: tuple, completion_tokens: tuple) -> None:
        self.prompt_tokens.extend(prompt_tokens)
        self.completion_tokens.extend(completion_tokens)
        self.empty_prompts += prompt_tokens.count(0)

    def _own_report(self) -> dict:
        return {"prompt_tokens": length_summary(self.prompt_tokens),
                "completion_tokens": length_summary(self.completion_tokens),
                "empty_prompts": self.empty_prompts}


def summarize_prompt_completion(example: dict) -> tuple:
    prompt, completion = len(example["prompt"]), len(example["completion"])
    prompt_tokens, completion_tokens = -(-prompt // 4), _text_tokens(completion)
    return (prompt + completion, prompt_tokens + completion_tokens, example.get("split"),
            prompt_tokens, completion_tokens)


class PreferenceStats(_FlatStats):
    format = PREFERENCE
    token_method = ("per pair, the prompt and the longer of its two outputs: characters / 4, "
                    "plus 4 per message")

    def __init__(self) -> None:
        super().__init__()
        self.prompt_messages = array("I")
        self.prompt_tokens = array("I")
        self.preferred_tokens = array("I")
        self.non_preferred_tokens = array("I")
        self.examples_with_tools = 0

    def _add_own(self, messages: tuple, prompt: tuple, preferred: tuple, non_preferred: tuple,
                 uses_tools: tuple) -> None:
        self.prompt_messages.extend(messages)
        self.prompt_tokens.extend(prompt)
        self.preferred_tokens.extend(preferred)
        self.non_preferred_tokens.extend(non_preferred)
        self.examples_with_tools += sum(uses_tools)

    def _own_report(self) -> dict:
        return {"pairs": self.examples,
                "messages_per_prompt": length_summary(self.prompt_messages),
                "prompt_tokens": length_summary(self.prompt_tokens),
                "preferred_tokens": length_summary(self.preferred_tokens),
                "non_preferred_tokens": length_summary(self.non_preferred_tokens),
                "examples_with_tools": self.examples_with_tools}


def _characters(messages: list[dict]) -> int:
    return sum(len(message.get("content") or "") for message in messages)


def summarize_preference(example: dict) -> tuple:
    messages = example["input"]["messages"]
    preferred, non_preferred = example["preferred_output"], example["non_preferred_output"]
    prompt_characters = _characters(messages)
    prompt = estimate_tokens(prompt_characters, len(messages))
    preferred_tokens = estimate_tokens(_characters(preferred), 1)
    non_preferred_tokens = estimate_tokens(_characters(non_preferred), 1)
    uses_tools = bool(example["input"].get("tools")) or any(
        "tool_calls" in message for message in (*messages, *preferred, *non_preferred))
    characters = prompt_characters + max(_characters(preferred), _characters(non_preferred))
    return (characters, prompt + max(preferred_tokens, non_preferred_tokens), example.get("split"),
            len(messages), prompt, preferred_tokens, non_preferred_tokens, uses_tools)
