"""Inference for chat completions, batches and evaluations: base models kept
loaded with fine-tunes' adapters attached (engine.py) and batched generation
mixing adapters in one batch (generation.py)."""

from worker.inference.engine import AdapterNotFound, InferenceEngine, LoadedBase
from worker.inference.generation import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    end_of_turn_ids,
    generate,
    reference_losses,
    render_prompt,
)

__all__ = [
    "AdapterNotFound",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "InferenceEngine",
    "LoadedBase",
    "end_of_turn_ids",
    "generate",
    "reference_losses",
    "render_prompt",
]
