"""Start-up: the objects alive once the API has started are frozen out of the
garbage collector's reach (api/startup.py), once per process. In a fresh
interpreter each time: freezing is for the whole process."""

import subprocess
import sys


def test_the_api_freezes_what_start_up_made_once_and_later_objects_stay_collectable(tmp_path):
    code = (
        "import gc; from fastapi.testclient import TestClient; from api.app import create_app; "
        "from api.startup import freeze_startup_objects; from domain.settings import Settings; "
        f"app = create_app(Settings(data_dir={str(tmp_path)!r})); "
        "before = gc.get_freeze_count(); "
        "client = TestClient(app); client.__enter__(); "
        "after = gc.get_freeze_count(); "
        "status = client.get('/healthz').status_code; "
        # Once per process: what is made later is not frozen by a second call.
        "made_later = []; freeze_startup_objects(); "
        "again = int(any(tracked is made_later for tracked in gc.get_objects())); "
        # A reference cycle made after start-up is still found and freed by a collection.
        "cycle = []; cycle.append(cycle); del cycle; found = gc.collect(); "
        "client.__exit__(None, None, None); "
        "print(before, after, again, status, found)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    before, after, again, status, found = map(int, result.stdout.split()[-5:])
    assert before == 0 and after > 50_000  # the app, the modules, their classes and functions
    assert again == 1  # still among the collector's generations, not frozen
    assert status == 200 and found >= 1
