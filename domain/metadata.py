"""OpenAI's `metadata`: at most 16 string pairs, keys of at most 64 characters
and values of at most 512. One type for every request that takes it (jobs,
evaluations, batches, chat completions), so the limits, the schema that
documents them and the message that refuses them are written once."""

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator

from domain.errors import refusal

MAX_PAIRS = 16
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 512
LIMITS = (
    f"Metadata is at most {MAX_PAIRS} pairs of strings, keys of at most {MAX_KEY_LENGTH} characters "
    f"and values of at most {MAX_VALUE_LENGTH}"
)


def _short(text: str) -> str:
    return text if len(text) <= 20 else text[:17] + "..."


def _problem(value: Any) -> str:
    if not isinstance(value, Mapping):
        return "it is not an object"
    if len(value) > MAX_PAIRS:
        return f"got {len(value)} pairs"
    for key, item in value.items():
        if not isinstance(key, str):
            return f"got a key that is not a string ({key!r})"
        if len(key) > MAX_KEY_LENGTH:
            return f"the key '{_short(key)}' has {len(key)} characters"
        if not isinstance(item, str):
            return f"the value of '{_short(key)}' is not a string"
        if len(item) > MAX_VALUE_LENGTH:
            return f"the value of '{_short(key)}' has {len(item)} characters"
    return "got an invalid value"


def _with_nul(pairs: Mapping[str, str]) -> str | None:
    """Which string holds U+0000, if one does. PostgreSQL's JSON stores it
    escaped but cannot read it back as text: the one job would break every
    query that reads metadata (the moves list) for its owner."""
    for key, item in pairs.items():
        if "\x00" in key or "\x00" in item:
            shown = _short(key.replace("\x00", "\\0"))
            return f"the key '{shown}'" if "\x00" in key else f"the value of '{shown}'"
    return None


def _checked(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        pairs = handler(value)
    except ValidationError:
        raise refusal(f"{LIMITS}; {_problem(value)}.", code="invalid_value") from None
    if pairs and (where := _with_nul(pairs)):
        raise refusal(f"{LIMITS}, without the NUL character (U+0000); {where} has one.", code="invalid_value")
    return pairs


_Pairs = Annotated[
    dict[Annotated[str, Field(max_length=MAX_KEY_LENGTH)], Annotated[str, Field(max_length=MAX_VALUE_LENGTH)]],
    Field(max_length=MAX_PAIRS),
]
# `metadata: Metadata = None` in a request schema.
Metadata = Annotated[
    _Pairs | None,
    WrapValidator(_checked),
    Field(description=f"Up to {MAX_PAIRS} string pairs: keys up to {MAX_KEY_LENGTH} characters, values up to {MAX_VALUE_LENGTH}."),
]
