"""The layers hold: the domain layer knows no HTTP and no torch, the API no
worker code, the worker no HTTP (the import-linter contracts in
pyproject.toml), and no worker entry point loads FastAPI when it starts."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What a worker process imports: the Celery app and its tasks (and, through
# them, each task's module), the lease engine, and the command that starts it.
WORKER_ENTRY_POINTS = [
    "worker.celery_app",
    "worker.tasks",
    "worker.runs",
    "worker.training.job",
    "worker.inference.batch",
    "worker.evaluation.run",
    "worker.models.merge",
    "worker.inference.chat",
    "api.cli",
]


def test_the_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is not installed (it is in the `test` extra)"
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module", WORKER_ENTRY_POINTS)
def test_a_worker_entry_point_loads_no_http_framework(module):
    code = (
        f"import sys, {module}\n"
        "if 'worker.celery_app' == '" + module + "':\n"
        "    import worker.celery_app as app; app.preload_ml_stack()\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn'})\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} loads {result.stdout.strip()}"
