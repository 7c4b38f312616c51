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

from domain.queue import create_celery
from domain.settings import Settings
from domain.storage import storage_from_url
from tests.conftest import answers_healthz, free_port, seed_converted_smollm2, wait_for

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

    from domain.auth.service import authenticate
    from domain.db import make_engine, make_sessionmaker

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
def test_serve_bootstraps_serves_runs_workers_and_stops_on_sigterm(tmp_path, converted_smollm2):
    port = free_port()
    data_dir = tmp_path / "data"
    seed_converted_smollm2(converted_smollm2, Settings(data_dir=data_dir))  # the chat below, not a conversion
    process = subprocess.Popen(
        [*TUNEHOUSE, "serve", "--data-dir", str(data_dir), "--port", str(port)],
        env=clean_env(tmp_path / "ignored"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers_healthz(base), 60, "the API to answer /healthz")
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
        wait_for(lambda: answers_healthz(base), 60, "the API to answer /healthz again")
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
        "import sys; from api.app import create_app; from domain.settings import Settings; "
        "import api.cli, domain.queue; "
        f"create_app(Settings(data_dir={str(tmp_path)!r})); "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------ keys and migrate


def tunehouse(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TUNEHOUSE, *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=clean_env(data_dir), timeout=120,
    )


def new_key(data_dir: Path, user: str) -> str:
    result = tunehouse(data_dir, "keys", "create", "--user", user)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def assert_refused(client: httpx.Client) -> None:
    response = client.get("/v1/files")
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.slow
def test_a_revoked_key_is_refused_by_the_running_service_at_once(tmp_path):
    from tests.conftest import running_service

    with running_service("cli-keys", Settings(data_dir=tmp_path)) as service:
        key = new_key(tmp_path, "erin")
        with service.client(key) as client:
            assert client.get("/v1/files").status_code == 200
            result = tunehouse(tmp_path, "keys", "revoke", "--key", key)
            assert result.returncode == 0, result.stderr
            assert f"Revoked {key[:10]}" in result.stdout and "user 'erin'" in result.stdout
            assert key not in result.stdout + result.stderr  # the secret is never echoed
            assert_refused(client)  # the very next request, on the same connection

        # By the display prefix `keys list` shows.
        second = new_key(tmp_path, "erin")
        with service.client(second) as client:
            assert client.get("/v1/files").status_code == 200
            result = tunehouse(tmp_path, "keys", "revoke", "--key", second[:10])
            assert result.returncode == 0, result.stderr
            assert_refused(client)

    listing = tunehouse(tmp_path, "keys", "list", "--user", "erin")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.strip().splitlines()
    assert header.split() == ["PREFIX", "USER", "CREATED", "REVOKED"]
    assert [row.split()[:2] for row in rows] == [[key[:10], "erin"], [second[:10], "erin"]]
    assert all(row.split()[3].endswith("Z") for row in rows)  # both have a revocation time


@pytest.mark.slow
def test_revoke_by_user_revokes_all_their_keys_and_nobody_elses(tmp_path):
    from tests.conftest import running_service

    with running_service("cli-keys", Settings(data_dir=tmp_path)) as service:
        franks = [new_key(tmp_path, "frank") for _ in range(2)]
        gina = new_key(tmp_path, "gina")
        result = tunehouse(tmp_path, "keys", "revoke", "--user", "frank")
        assert result.returncode == 0, result.stderr
        assert sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("Revoked")) == sorted(
            f"{k[:10]}..." for k in franks
        )
        for key in franks:
            with service.client(key) as client:
                assert_refused(client)
        with service.client(gina) as client:
            assert client.get("/v1/files").status_code == 200

    listing = tunehouse(tmp_path, "keys", "list")
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows[gina[:10]][3] == "-" and all(rows[k[:10]][3] != "-" for k in franks)
    assert {row[1] for row in rows.values()} == {"frank", "gina"}  # every user's keys without --user

    again = tunehouse(tmp_path, "keys", "revoke", "--user", "frank")
    assert again.returncode == 2
    assert "no active API keys" in again.stderr


@pytest.mark.slow
def test_revoke_exits_2_when_nothing_matches_or_the_prefix_is_ambiguous(tmp_path):
    from domain.auth.models import ApiKey
    from domain.auth.service import authenticate, hash_key
    from domain.db import make_engine, make_sessionmaker

    key = new_key(tmp_path, "hal")
    cases = [
        (["--key", "th-" + "x" * 43], "no API key matches"),
        (["--key", "th-nothing"], "no API key has the display prefix 'th-nothing'"),
        (["--key", "th-ab"], "display prefix"),
        (["--user", "nobody"], "no user named 'nobody'"),
    ]
    for args, message in cases:
        result = tunehouse(tmp_path, "keys", "revoke", *args)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)
        assert result.stdout == ""

    # Two active keys that share a display prefix (rare, but possible): the
    # prefix alone revokes neither.
    engine = make_engine(Settings(data_dir=tmp_path).database_url)
    twin = key[:10] + "-twin-of-the-first-key-for-this-test-only"
    with make_sessionmaker(engine)() as session:
        original = session.query(ApiKey).filter_by(key_hash=hash_key(key)).one()
        session.add(ApiKey(user_id=original.user_id, key_hash=hash_key(twin), display_prefix=key[:10], created_at=1))
        session.commit()
    result = tunehouse(tmp_path, "keys", "revoke", "--key", key[:10])
    assert result.returncode == 2
    assert "ambiguous" in result.stderr and "2 active keys" in result.stderr
    with make_sessionmaker(engine)() as session:
        assert authenticate(session, key) is not None and authenticate(session, twin) is not None

    # The whole key still singles one out; a second revocation has nothing to do.
    assert tunehouse(tmp_path, "keys", "revoke", "--key", key).returncode == 0
    again = tunehouse(tmp_path, "keys", "revoke", "--key", key)
    assert again.returncode == 2 and "already revoked" in again.stderr
    with make_sessionmaker(engine)() as session:
        assert authenticate(session, key) is None and authenticate(session, twin) is not None
    engine.dispose()

    both = subprocess.run(
        [*TUNEHOUSE, "keys", "revoke", "--key", key, "--user", "hal"], capture_output=True, text=True, timeout=60
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


@pytest.mark.slow
def test_migrate_brings_the_schema_to_head_and_bootstraps_the_admin_key_once(tmp_path):
    import sqlite3

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from domain.db import MIGRATIONS_DIR

    data_dir = tmp_path / "data"
    first = tunehouse(data_dir, "migrate")
    assert first.returncode == 0, first.stderr
    key_file = data_dir / "admin-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert "Created user 'admin'" in first.stdout and key in first.stdout

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    with sqlite3.connect(data_dir / "tunehouse.sqlite3") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]

    second = tunehouse(data_dir, "migrate")
    assert second.returncode == 0, second.stderr
    assert "Created user" not in second.stdout
    assert key_file.read_text().strip() == key

    listing = tunehouse(data_dir, "keys", "list")
    assert [line.split()[:2] for line in listing.stdout.splitlines()[1:]] == [[key[:10], "admin"]]


def test_convert_writes_chat_lines_and_names_every_line_it_could_not_convert(tmp_path):
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    records = [{"conversations": turns}, {"conversations": [{"from": "narrator", "value": "x"}]},
               {"conversations": turns}, {"conversations": []}]
    source = tmp_path / "sharegpt.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "chat.jsonl"
    result = subprocess.run([*TUNEHOUSE, "convert", "--from", "sharegpt", str(source), str(out)],
                            capture_output=True, text=True, env=clean_env(tmp_path), timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "line 2: turn 1: unknown 'from' \"narrator\" (expected human, user, gpt, assistant, chatgpt, bot, system)",
        "line 4: 'conversations' must be a non-empty list",
    ]
    assert result.stdout.strip() == f"{out}: converted 2 of 4 lines; 2 could not be converted"
    assert [json.loads(line)["messages"][1] for line in out.read_text().splitlines()] == [
        {"role": "assistant", "content": "Hello"}] * 2

    source.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n")
    clean = subprocess.run([*TUNEHOUSE, "convert", "--from", "alpaca", str(source), str(out)],
                           capture_output=True, text=True, env=clean_env(tmp_path), timeout=120)
    assert (clean.returncode, clean.stderr) == (0, "")
    assert "converted 1 of 1 lines; 0 could not be converted" in clean.stdout

    missing = subprocess.run([*TUNEHOUSE, "convert", "--from", "transcript", str(tmp_path / "nope.txt"), str(out)],
                             capture_output=True, text=True, env=clean_env(tmp_path), timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "nope.txt" in missing.stderr
