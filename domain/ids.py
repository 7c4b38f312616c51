"""Public object ids: `file-…`, `ftjob-…` and so on.

An id is a fixed-width time part followed by random characters, so sorting by id
sorts by creation time. Lists page by id, which keeps cursors (`after`) stable
and needs no extra lookup.
"""

import re
import secrets
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_TIME_CHARS = 10  # milliseconds in base 36: enough until the year 5000
_RANDOM_CHARS = 14


def _base36(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    time_part = _base36(time.time_ns() // 1_000_000, _TIME_CHARS)
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return f"{prefix}{time_part}{random_part}"


def id_pattern(prefix: str) -> str:
    """A regular expression for the ids made by new_id(prefix), the same in
    Python and in JSON Schema (prefixes have nothing to escape)."""
    if not re.fullmatch(r"[a-z_-]+", prefix):
        raise ValueError(f"id prefixes are lowercase letters, '-' and '_': {prefix!r}")
    return f"{prefix}[0-9a-z]{{{_TIME_CHARS + _RANDOM_CHARS}}}"


def looks_like_id(prefix: str, value: str) -> bool:
    return re.fullmatch(id_pattern(prefix), value) is not None
