"""The preview's memory section: the estimate for a request (domain/jobs/memory.py)
against the devices the training workers reported."""

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from domain.jobs.memory import (
    ModelShape,
    ModelShapeError,
    TrainingSetup,
    estimate_training_memory,
    fit_check,
    model_shape_from_folder,
)
from domain.settings import Settings
from domain.workers.repository import model_shape

# Where a worker converts the bundled model in embedded mode (worker/models/gguf.py).
_BUNDLED_DIR = Path("base-models") / "smollm2-135m-instruct"


def known_model_shape(session: Session, settings: Settings, model: str) -> ModelShape | None:
    """A worker's record of the model's numbers, else its config.json where
    this process can read it (a local folder, or the embedded worker's
    converted copy); None when neither exists yet."""
    source = settings.base_models.get(model)
    if source is None:
        return None
    recorded = model_shape(session, model, source)
    if recorded is not None:
        return recorded
    folder = None
    if source.startswith("path:") or source.startswith("/"):
        folder = Path(source.removeprefix("path:"))
    elif source.startswith("bundled:"):
        folder = settings.work_dir / _BUNDLED_DIR
    if folder is not None and (folder / "config.json").is_file():
        try:
            return model_shape_from_folder(folder)
        except (OSError, ValueError, ModelShapeError):
            return None
    return None


def reported_device_kind(devices: list[dict[str, Any]]) -> str | None:
    """cuda if any training worker reported a GPU, cpu if only CPUs did, None if none reported."""
    kinds = {device["device"] for device in devices}
    return "cuda" if "cuda" in kinds else ("cpu" if kinds else None)


def memory_preview(
    session: Session, settings: Settings, model: str, values: dict[str, Any], device: str,
    devices: list[dict[str, Any]], *, method: str = "supervised", row_tokens: int | None = None,
) -> dict[str, Any]:
    """{"estimate", "fits" (true | false | "unknown"), "device", "reason",
    "devices", "model_shape"} for resolved plain hyperparameter values;
    `devices`: training_devices(), read once by the caller so that the
    device kind it chose and the devices judged are the same snapshot."""
    shape = known_model_shape(session, settings, model)
    estimate = None
    if shape is not None:
        setup = TrainingSetup.from_hyperparameters(values, device, method=method, row_tokens=row_tokens)
        estimate = estimate_training_memory(shape, setup)
    fit = fit_check(estimate, devices)
    if shape is None:
        fit["reason"] = (
            f"the numbers of {model} (layers, sizes) are not known yet: a training worker records them "
            "when it starts or prepares the model"
        )
    return {
        "estimate": estimate,
        **fit,
        "devices": devices,
        "model_shape": shape.as_dict() if shape is not None else None,
    }
