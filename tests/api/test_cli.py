"""The `tunehouse` command as a person runs it: real processes, real signals."""

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from api.queue import create_celery
from api.settings import Settings
from api.storage import storage_from_url
from tests.conftest import free_port, wait_for

TUNEHOUSE = [sys.executable, "-m", "api.cli"]


def clean_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")}
    env["TUNEHOUSE_DATA_DIR"] = str(data_dir)
    env.update(overrides)
    return env


def test_keys_create_prints_the_key_last(tmp_path):
    result = subprocess.run(
        [*TUNEHOUSE, "keys", "create", "--user", "carol", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=clean_env(tmp_path / "ignored"), timeout=120, check=True,
    )
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("th-")
    assert not (tmp_path / "ignored").exists()  # --data-dir wins over the environment

    from api.auth.service import authenticate
    from api.db import make_engine, make_sessionmaker

    engine = make_engine(Settings(data_dir=tmp_path).database_url)
    with make_sessionmaker(engine)() as session:
        assert authenticate(session, key).name == "carol"
    engine.dispose()


def test_keys_create_refuses_a_bad_user_name(tmp_path):
    result = subprocess.run(
        [*TUNEHOUSE, "keys", "create", "--user", "no spaces", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=clean_env(tmp_path), timeout=120,
    )
    assert result.returncode == 2
    assert "invalid user name" in result.stderr


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_serve_bootstraps_serves_runs_workers_and_stops_on_sigterm(tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [*TUNEHOUSE, "serve", "--data-dir", str(data_dir), "--port", str(port)],
        env=clean_env(tmp_path / "ignored"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy():
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 60, "the API to answer /healthz")
        key_file = data_dir / "admin-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        response = httpx.get(f"{base}/v1/files", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200

        # The worker started beside the API consumes the embedded queue.
        settings = Settings(data_dir=data_dir)
        nonce = uuid.uuid4().hex
        create_celery(settings).send_task("tunehouse.ping", args=[nonce])
        storage = storage_from_url(settings.storage_url)
        wait_for(lambda: storage.exists(f"system/ping/{nonce}"), 60, "the worker to run the ping task")
        record = json.loads(storage.get_bytes(f"system/ping/{nonce}"))
        worker_pids = children_of(process.pid)
        assert record["pid"] != process.pid and worker_pids

        # Its inference worker answers chat on the bundled SmolLM2, streamed, through the SDK.
        from openai import OpenAI

        sdk = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=300)
        stream = sdk.chat.completions.create(
            model="HuggingFaceTB/SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=4,
            temperature=0,
            stream=True,
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices).strip()

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        assert "Created user 'admin'" in output and key in output
        assert not any(pid_alive(pid) for pid in worker_pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # A second start keeps the admin key: it is made only on an empty database.
    second = subprocess.Popen(
        [*TUNEHOUSE, "serve", "--data-dir", str(data_dir), "--port", str(port), "--no-worker"],
        env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(healthy, 60, "the API to answer /healthz again")
        assert children_of(second.pid) == []
        second.send_signal(signal.SIGINT)
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 0
        assert "Created user" not in output
        assert key_file.read_text().strip() == key
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()


def test_the_api_never_imports_the_ml_stack(tmp_path):
    code = (
        "import sys; from api.app import create_app; from api.settings import Settings; "
        "import api.cli, api.queue; "
        f"create_app(Settings(data_dir={str(tmp_path)!r})); "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
