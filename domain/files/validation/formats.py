"""The four line formats of a fine-tune file, and how a line's keys say which.

A file holds one format; the validators detect it from the first line whose
keys name one, and the trainer (worker/training/data.py) and evaluations
(worker/evaluation/run.py) dispatch on the same keys. The format strings are
what the upload report's ``format`` and the job recipe record.

- ``chat``: OpenAI chat fine-tuning, ``{"messages": [...]}``;
- ``preference``: OpenAI preference pairs (for DPO), ``{"input": {"messages": [...]},
  "preferred_output": [...], "non_preferred_output": [...]}``;
- ``prompt_completion``: ``{"prompt": "...", "completion": "..."}`` (loss on the completion);
- ``text``: ``{"text": "..."}`` (continued pretraining, loss on every token).

Standard library only.
"""

from __future__ import annotations

CHAT = "chat"
PREFERENCE = "preference"
PROMPT_COMPLETION = "prompt_completion"
TEXT = "text"
FORMATS = (CHAT, PREFERENCE, PROMPT_COMPLETION, TEXT)

# How messages name a format ("a prompt/completion line").
FORMAT_NAMES = {CHAT: "chat", PREFERENCE: "preference", PROMPT_COMPLETION: "prompt/completion", TEXT: "text"}

UNKNOWN_FORMAT = ("cannot tell the line's format: expected 'messages' (chat), 'input', "
                  "'preferred_output' and 'non_preferred_output' (preference), 'prompt' and "
                  "'completion' (prompt/completion) or 'text' (text)")


def detect_format(example: dict) -> str | None:
    """The format a JSON object's keys name, or None. The first key that names
    one decides, in this order: messages, the preference keys, prompt or
    completion, text (so a line with a stray key still gets its own format's
    message about that key)."""
    if "messages" in example:
        return CHAT
    if "input" in example or "preferred_output" in example or "non_preferred_output" in example:
        return PREFERENCE
    if "prompt" in example or "completion" in example:
        return PROMPT_COMPLETION
    if "text" in example:
        return TEXT
    return None


def examples_format(examples) -> str | None:
    """The format of already-validated examples (one format a file): the first
    example's, or None when there is none."""
    for example in examples:
        return detect_format(example)
    return None
