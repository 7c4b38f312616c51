"""What a training run ran on: library versions and hardware, for the job recipe."""

from __future__ import annotations

import importlib
import os
import platform
from importlib import metadata

from worker.devices import cpu_model_name


def environment_info(device: str) -> dict:
    """Versions of the ML stack and a description of `device` ("cpu" or "cuda")."""
    import torch

    info: dict = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion, which YAML cannot represent
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "bitsandbytes": _version("bitsandbytes"),
        "accelerate": _version("accelerate"),
        "device": "cuda" if device.startswith("cuda") else "cpu",
    }
    if info["device"] == "cuda":
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = str(torch.version.cuda)
    else:
        info["cpu"] = cpu_model_name()
        info["cpu_cores"] = os.cpu_count()
    return info


def _version(distribution: str) -> str | None:
    """The installed version, or None if the package cannot be imported.
    Package metadata first: importing bitsandbytes prints warnings on a
    machine without CUDA; the module's __version__ for a package that was
    copied in without its metadata."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        pass
    try:
        module = importlib.import_module(distribution)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return None
    return getattr(module, "__version__", None)


def pick_device(setting: str) -> str:
    """The device a worker trains on: the setting, or CUDA when there is one."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
