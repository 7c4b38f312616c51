"""GGUF exports (llama.cpp / Ollama): which quantizations and architectures
there are, what the API can refuse before a worker is asked, and the facts
about a job's data that go beside the file (the system prompt it trained with).
No torch here: the API imports this; worker/models/gguf_export.py writes the file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from domain.jobs.models import FineTuningJob
from domain.settings import Settings

QUANTIZATIONS = ("f16", "q8_0", "q4_k_m")
DEFAULT_QUANTIZATION = "q8_0"
FORMAT_PREFIX = "gguf-"
# config.json's model_type -> what llama.cpp calls the architecture.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# Failures a worker reports that asking again will not fix (the API answers 422).
REFUSED_CODES = ("unsupported_architecture", "unsupported_tokenizer")


def gguf_format(quantization: str) -> str:
    """The export format of a quantization: gguf-f16, gguf-q8_0, gguf-q4_k_m."""
    return FORMAT_PREFIX + quantization


def quantization_of(format: str) -> str | None:
    if not format.startswith(FORMAT_PREFIX):
        return None
    quantization = format[len(FORMAT_PREFIX):]
    return quantization if quantization in QUANTIZATIONS else None


def unsupported_architecture_message(model_type: str | None, model: str) -> str:
    return (
        f"GGUF export supports the {', '.join(sorted(set(ARCHITECTURES)))} architectures; the base model "
        f"'{model}' is {model_type!r}. Download the merged weights and convert them with llama.cpp's own tools."
    )


def known_model_type(session: Session, settings: Settings, job: FineTuningJob) -> str | None:
    """The base model's config.json model_type as far as the API can know it
    without loading anything: the job's recipe (the worker measured the base
    for its memory estimate), else a worker's record of the base model."""
    from domain.workers.service import known_model_shape

    shape = ((job.recipe or {}).get("memory") or {}).get("model_shape") or {}
    if isinstance(shape.get("model_type"), str):
        return shape["model_type"]
    known = known_model_shape(session, settings, job.model)
    return known.model_type if known is not None else None


def message_text(content: Any) -> str | None:
    """A chat message's content as text (a string, or text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, Mapping) and part.get("type") == "text"]
        if parts and all(isinstance(part, str) for part in parts):
            return "".join(parts)
    return None


def _example_messages(example: Mapping[str, Any]) -> Any:
    if "messages" in example:
        return example["messages"]
    if isinstance(example.get("input"), Mapping):  # a preference pair's shared prompt
        return example["input"].get("messages")
    return None


def shared_system_prompt(lines: Iterable[bytes]) -> str | None:
    """The system prompt every example of a chat (or preference) file starts
    with, when they all have the same one; None otherwise (an example without
    one, two different ones, or a file of another format)."""
    shared: str | None = None
    pending = b""
    for chunk in lines:
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            if line.strip():
                found = _first_system_prompt(line)
                if found is None or (shared is not None and found != shared):
                    return None
                shared = found
    if pending.strip():
        found = _first_system_prompt(pending)
        if found is None or (shared is not None and found != shared):
            return None
        shared = found
    return shared


def _first_system_prompt(line: bytes) -> str | None:
    try:
        example = json.loads(line)
    except ValueError:
        return None
    messages = _example_messages(example) if isinstance(example, Mapping) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], Mapping):
        return None
    if messages[0].get("role") != "system":
        return None
    return message_text(messages[0].get("content")) or None


def stage_key(export_id: str) -> str:
    """Where a worker notes which step of an export it is at (read by the API's 202)."""
    return f"exports/{export_id}/stage.json"


def read_stage(storage, export_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.get_bytes(stage_key(export_id)))
    except Exception:  # noqa: BLE001 - not there yet (or being replaced): no stage to show
        return None
