"""The worker's Celery app: what its parent process preloads."""

import subprocess
import sys

import pytest

from worker.celery_app import has_nvidia_gpu


@pytest.mark.slow
def test_the_worker_preloads_the_ml_stack_without_touching_cuda():
    # The worker's parent imports the ML stack so that each forked task starts
    # with it; a CUDA driver initialised before the fork would be unusable
    # there, so on a GPU machine peft (and with it bitsandbytes, which may
    # probe the GPU) is left to the child.
    code = (
        "import sys; from worker.celery_app import preload_ml_stack; preload_ml_stack(); import torch; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules), "
        "torch.cuda.is_initialized())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    expected = "['torch', 'transformers'] False" if has_nvidia_gpu() else "['bitsandbytes', 'peft', 'torch', 'transformers'] False"
    assert result.stdout.split("\n")[0] == expected
