"""Which dtype this machine computes fastest in, measured, not assumed.

CPUs differ by two orders of magnitude here: on one machine bf16 matmuls ran
~100x slower than fp32, on another (AVX512-BF16) 4.4x faster. So a short
matmul probe measures both, once per machine: the figures are kept on disk
(worker/kept_measurements.py), so that every worker process on the machine
makes the same choice and two runs of the same job train in the same dtype
whichever process runs them (a probe per process, taken while other jobs
load the CPU, could come out either way). On CUDA, bf16 is the choice
wherever the GPU supports it. The choice and the probe's figures are
recorded with every job that uses them.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from worker.kept_measurements import device_name, kept_or_measured

# Big enough to reach the kernels' steady state, small enough to take well
# under a second per dtype on a slow CPU.
PROBE_SIZE = 1024
PROBE_SECONDS = 0.25  # per dtype, over all rounds
PROBE_ROUNDS = 3
# Part of the key of kept figures: a changed probe measures again.
PROBE_VERSION = 2  # 2: the dtypes alternate, the best round of each counts
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


def measure_cpu_matmul_gflops(rounds: int = PROBE_ROUNDS) -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s, the dtypes alternating round by round and each
    keeping its best round: another process taking the CPU for a moment slows
    a round down but never speeds one up, so the best rounds compare the two
    dtypes at the moments the machine was quietest."""
    fp32 = bf16 = 0.0
    for _ in range(rounds):
        fp32 = max(fp32, matmul_gflops("float32", seconds=PROBE_SECONDS / rounds))
        bf16 = max(bf16, matmul_gflops("bfloat16", seconds=PROBE_SECONDS / rounds))
    return round(fp32, 1), round(bf16, 1)


_measured: tuple[float, float] | None = None  # this process's answer, once it has one


def cpu_matmul_gflops(kept_in: Path | None = None) -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s of this CPU: the figures kept in `kept_in` for
    this CPU, thread count and torch, else measured now (and kept there). A
    process asks once; later calls get the same answer. Without `kept_in`
    (scripts, benchmarks) the probe runs once per process."""
    global _measured
    if _measured is None:
        if kept_in is None:
            _measured = measure_cpu_matmul_gflops()
        else:
            import torch

            key = (f"{device_name('cpu')}|threads={torch.get_num_threads()}|torch={torch.__version__}"
                   f"|probe={PROBE_VERSION}")

            def measure_now() -> dict:
                fp32, bf16 = measure_cpu_matmul_gflops()
                return {"fp32_gflops": fp32, "bf16_gflops": bf16, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}

            entry, _ = kept_or_measured(kept_in, key, measure_now)
            _measured = (float(entry["fp32_gflops"]), float(entry["bf16_gflops"]))
    return _measured


SETTINGS = ("auto", "float32", "bfloat16")


@functools.lru_cache(maxsize=8)
def choose_compute_dtype(device: str, setting: str = "auto", kept_in: Path | None = None) -> ComputeChoice:
    """The dtype to compute in on `device`: `setting` when it names one
    ("float32" / "bfloat16"), else the measured fastest. On CPU the probe's
    figures are read either way (`cpu_matmul_gflops`), so they are always
    recorded."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown compute dtype setting {setting!r}: use auto, float32 or bfloat16")
    if device.startswith("cuda"):
        if setting != "auto":
            return ComputeChoice("cuda", setting, f"set to {setting}")
        import torch

        if torch.cuda.is_bf16_supported():
            return ComputeChoice("cuda", "bfloat16", "CUDA with bf16 support")
        return ComputeChoice("cuda", "float32", "CUDA without bf16 support")
    fp32, bf16 = cpu_matmul_gflops(kept_in)
    figures = f"{PROBE_SIZE}x{PROBE_SIZE} matmuls: bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s"
    if setting != "auto":
        return ComputeChoice("cpu", setting, f"set to {setting} (this CPU's probe: {figures})", fp32, bf16)
    if bf16 >= BF16_MIN_SPEEDUP * fp32:
        reason = f"bf16 measured {bf16 / fp32:.1f}x faster than fp32 on this CPU ({figures})"
        return ComputeChoice("cpu", "bfloat16", reason, fp32, bf16)
    reason = (f"bf16 measured {bf16 / fp32:.2f}x the speed of fp32 on this CPU, under the "
              f"{BF16_MIN_SPEEDUP}x that would pay for its rounding ({figures})")
    return ComputeChoice("cpu", "float32", reason, fp32, bf16)
