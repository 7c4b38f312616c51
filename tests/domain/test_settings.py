import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from domain.settings import Settings


def test_embedded_defaults_live_in_the_data_dir(tmp_path, monkeypatch):
    for name in ("DATABASE_URL", "BROKER_URL", "STORAGE_URL", "S3_ENDPOINT_URL", "MAX_UPLOAD_BYTES"):
        monkeypatch.delenv(f"TUNEHOUSE_{name}", raising=False)
    monkeypatch.setenv("TUNEHOUSE_DATA_DIR", str(tmp_path / "d"))
    settings = Settings()
    assert settings.data_dir == (tmp_path / "d").resolve()
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'tunehouse.sqlite3'}"
    assert settings.broker_url == "filesystem://"
    assert settings.storage_url == str(tmp_path / "d" / "artifacts")
    assert settings.max_upload_bytes == 1024**3


def test_production_urls_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEHOUSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_DATABASE_URL", "postgresql+psycopg://u@db/tunehouse")
    monkeypatch.setenv("TUNEHOUSE_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("TUNEHOUSE_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("TUNEHOUSE_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("TUNEHOUSE_MAX_UPLOAD_BYTES", "1000")
    settings = Settings()
    env = settings.as_env()
    assert env["TUNEHOUSE_DATABASE_URL"] == "postgresql+psycopg://u@db/tunehouse"
    assert env["TUNEHOUSE_BROKER_URL"] == "redis://redis:6379/0"
    assert env["TUNEHOUSE_STORAGE_URL"] == "s3://bucket/prefix"
    assert env["TUNEHOUSE_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert settings.max_upload_bytes == 1000
    # The child process reading these gets the very same settings.
    monkeypatch.setenv("TUNEHOUSE_DATA_DIR", "/elsewhere")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_bad_upload_limit_is_refused(monkeypatch, value):
    monkeypatch.setenv("TUNEHOUSE_MAX_UPLOAD_BYTES", value)
    with pytest.raises(ValidationError):
        Settings(data_dir=Path("/tmp/x"))


@pytest.mark.parametrize(("name", "value"), [("DB_POOL_SIZE", "0"), ("DB_BUSY_TIMEOUT", "0"), ("DB_BUSY_TIMEOUT", "-1")])
def test_bad_database_pool_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(f"TUNEHOUSE_{name}", value)
    with pytest.raises(ValidationError):
        Settings(data_dir=Path("/tmp/x"))


@pytest.mark.parametrize(("name", "value"), [("INFERENCE_DTYPE", "float16"), ("INFERENCE_BATCH_SIZE", "-1")])
def test_bad_inference_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(f"TUNEHOUSE_{name}", value)
    with pytest.raises(ValidationError):
        Settings(data_dir=Path("/tmp/x"))


def test_every_setting_reaches_a_child_process_through_as_env(tmp_path, monkeypatch):
    """as_env() is derived from the fields: a settings object with a
    non-default value in every field comes back equal from its environment.
    A new field fails here until it has a non-default value below."""
    web_dist = tmp_path / "dist"
    non_default = {
        "data_dir": tmp_path / "data",
        "database_url": "postgresql+psycopg://u:p@db:5432/tunehouse",
        "broker_url": "redis://:secret@redis:6379/3",
        "storage_url": "s3://bucket/prefix",
        "s3_endpoint_url": "http://minio:9000",
        "db_pool_size": 3,
        "db_busy_timeout": 1.5,
        "max_upload_bytes": 12345,
        "upload_idle_timeout": 2.5,
        "base_models": {"org/model": "hf:org/model@abc123", "local": "path:/models/local"},
        "heartbeat_timeout": 33.3,
        "max_job_attempts": 7,
        "storage_attempts": 5,
        "storage_retry_delay": 0.25,
        "worker_device": "cuda",
        "inference_queue_timeout": 12.0,
        "inference_idle_timeout": 45.5,
        "max_completion_tokens": 99,
        "inference_batch_size": 3,
        "inference_dtype": "bfloat16",
        "web_dist": web_dist,
        "auth_failures_per_minute": 0,
        "rate_limit_per_minute": 7,
        "log_format": "json",
        "link_secret": "l" * 40,
        "connection_secret": "c" * 40,
        "connection_allow_private": False,
        "connection_allowed_hosts": ["api.example.com", "10.0.0.7"],
        "connection_connect_timeout": 2.5,
        "connection_read_timeout": 30.5,
        "connection_max_attempts": 2,
        "connection_retry_max_wait": 4.5,
        "connection_concurrency": 3,
    }
    assert set(non_default) == set(Settings.model_fields), "give every setting a non-default value here"
    for name, value in non_default.items():
        assert value != Settings.model_fields[name].get_default(), name
    original = Settings(**non_default)

    env = original.as_env()
    assert set(env) == {f"TUNEHOUSE_{name.upper()}" for name in non_default}
    assert all(type(value) is str for value in env.values())
    assert json.loads(env["TUNEHOUSE_BASE_MODELS"]) == non_default["base_models"]
    assert env["TUNEHOUSE_WEB_DIST"] == str(web_dist)

    # What the child process does: read its settings from that environment alone.
    for name in [name for name in os.environ if name.startswith("TUNEHOUSE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_unset_optional_settings_are_left_out_of_the_environment(tmp_path):
    env = Settings(data_dir=tmp_path, s3_endpoint_url=None, web_dist=None).as_env()
    assert "TUNEHOUSE_S3_ENDPOINT_URL" not in env and "TUNEHOUSE_WEB_DIST" not in env
    assert env["TUNEHOUSE_DATA_DIR"] == str(tmp_path.resolve())
    assert env["TUNEHOUSE_BROKER_URL"] == "filesystem://"
