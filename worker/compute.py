"""Which dtype this machine computes fastest in, measured, not assumed.

CPUs differ by two orders of magnitude here: on one machine bf16 matmuls ran
~100x slower than fp32, on another (AVX512-BF16) 4.4x faster. So a worker
measures once per process (a short matmul probe) and caches the answer; on
CUDA, bf16 is the choice wherever the GPU supports it. The choice and the
probe's figures are recorded with every job that uses them.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

# Big enough to reach the kernels' steady state, small enough to take well
# under a second per dtype on a slow CPU.
PROBE_SIZE = 1024
PROBE_SECONDS = 0.25
# bf16 must beat fp32 by this much to be chosen: results in bf16 are slightly
# less exact, which only a clear speed-up pays for.
BF16_MIN_SPEEDUP = 1.2


@dataclass(frozen=True)
class ComputeChoice:
    device: str  # "cpu" | "cuda"
    dtype: str  # "bfloat16" | "float32"
    reason: str  # why, in words, for the recipe and the job's method record
    fp32_gflops: float | None = None  # the probe's figures (CPU)
    bf16_gflops: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def matmul_gflops(dtype_name: str, size: int = PROBE_SIZE, seconds: float = PROBE_SECONDS) -> float:
    """Sustained GFLOP/s of size x size matmuls in `dtype_name` on the CPU."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up: first-call costs are not the machine's speed
    runs, started = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return 2 * size**3 * runs / elapsed / 1e9


@functools.lru_cache(maxsize=1)
def cpu_matmul_gflops() -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s of this CPU: the probe, run once per process."""
    return round(matmul_gflops("float32"), 1), round(matmul_gflops("bfloat16"), 1)


SETTINGS = ("auto", "float32", "bfloat16")


@functools.lru_cache(maxsize=8)
def choose_compute_dtype(device: str, setting: str = "auto") -> ComputeChoice:
    """The dtype to compute in on `device`: `setting` when it names one
    ("float32" / "bfloat16"), else the measured fastest. On CPU the probe
    runs either way (once per process), so its figures are always recorded."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown compute dtype setting {setting!r}: use auto, float32 or bfloat16")
    if device.startswith("cuda"):
        if setting != "auto":
            return ComputeChoice("cuda", setting, f"set to {setting}")
        import torch

        if torch.cuda.is_bf16_supported():
            return ComputeChoice("cuda", "bfloat16", "CUDA with bf16 support")
        return ComputeChoice("cuda", "float32", "CUDA without bf16 support")
    fp32, bf16 = cpu_matmul_gflops()
    figures = f"{PROBE_SIZE}x{PROBE_SIZE} matmuls: bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s"
    if setting != "auto":
        return ComputeChoice("cpu", setting, f"set to {setting} (this CPU's probe: {figures})", fp32, bf16)
    if bf16 >= BF16_MIN_SPEEDUP * fp32:
        reason = f"bf16 measured {bf16 / fp32:.1f}x faster than fp32 on this CPU ({figures})"
        return ComputeChoice("cpu", "bfloat16", reason, fp32, bf16)
    reason = (f"bf16 measured {bf16 / fp32:.2f}x the speed of fp32 on this CPU, under the "
              f"{BF16_MIN_SPEEDUP}x that would pay for its rounding ({figures})")
    return ComputeChoice("cpu", "float32", reason, fp32, bf16)
