"""Streaming validation of uploaded JSONL files (fine-tune and batch).

Files are validated while they upload: a validator's ``feed()`` takes chunks
as they arrive and ``finish()`` gives the verdict. The modules:

- ``lines``: the streaming line reader (size limit per line) and strict JSON
  object parsing;
- ``typed``: the fast path, typed msgspec decoders that parse and check a
  line in C; a line they decline goes to ``lines`` and ``rules``, which give
  the verdict and the message;
- ``formats``: the four fine-tune line formats (chat, preference,
  prompt_completion, text) and how a line's keys say which;
- ``rules``: what one line of a fine-tune file (in each format) or a batch
  file must be;
- ``fine_tune_report``: the numbers and warnings of a valid chat file, and
  what every format's report shares; ``format_reports``: the other formats';
- ``result``: the verdict (``ValidationResult``), its errors and message;
- ``validators``: ``FineTuneValidator``, ``BatchValidator``, ``validator_for``.

The held-out TEST split lives in ``domain/files/split.py``, shared with the
trainer and evaluations. Only the standard library and msgspec (a small C
extension, for the fast path) are used, so the API process stays light.
Import from the modules: this package re-exports nothing
(domain/files/split.py reads lines with ``lines`` without loading the
validators).
"""
