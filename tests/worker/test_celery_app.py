"""The worker's Celery app: what its parent process preloads."""

import subprocess
import sys


def test_the_worker_preloads_torch_without_touching_cuda_or_bitsandbytes():
    # The worker's parent imports the ML stack so that each forked task starts
    # with it; a CUDA driver initialised before the fork would be unusable there.
    code = (
        "import sys; from worker.celery_app import preload_ml_stack; preload_ml_stack(); import torch; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules), "
        "torch.cuda.is_initialized())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split("\n")[0] == "['torch', 'transformers'] False"
