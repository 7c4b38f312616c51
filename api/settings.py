"""All configuration, from TUNEHOUSE_* environment variables.

Every setting has a default that serves the embedded mode (`make run`): SQLite,
Celery's filesystem broker and a local artifact directory, all inside the data
directory. Production points the three URLs at PostgreSQL, Redis and S3.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEHOUSE_", extra="ignore")

    data_dir: Path = Path("./data")
    # Empty means "the embedded default inside data_dir"; filled in below.
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    max_upload_bytes: int = GIB

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> "Settings":
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'tunehouse.sqlite3'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = str(self.data_dir / "artifacts")
        if self.max_upload_bytes <= 0:
            raise ValueError("TUNEHOUSE_MAX_UPLOAD_BYTES must be positive")
        return self

    @property
    def broker_dir(self) -> Path:
        """Folder of the kombu filesystem transport (embedded mode only)."""
        return self.data_dir / "broker"

    def as_env(self) -> dict[str, str]:
        """The resolved settings as environment variables, so a child process
        (the worker that `serve` starts) sees exactly the same configuration."""
        env = {
            "TUNEHOUSE_DATA_DIR": str(self.data_dir),
            "TUNEHOUSE_DATABASE_URL": self.database_url,
            "TUNEHOUSE_BROKER_URL": self.broker_url,
            "TUNEHOUSE_STORAGE_URL": self.storage_url,
            "TUNEHOUSE_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
        }
        if self.s3_endpoint_url:
            env["TUNEHOUSE_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        return env


@lru_cache
def get_settings() -> Settings:
    return Settings()
