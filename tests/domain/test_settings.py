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
