"""docker-compose.yml and Dockerfile.gpu cannot run here (no Docker engine):
check that what they name exists in the code."""

import re
import tomllib
from pathlib import Path

import yaml

from api.cli import build_parser
from api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "Dockerfile.gpu").read_text().splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            stages[current] = []
        elif current and line.strip() and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_compose_services_and_their_commands():
    services = compose()["services"]
    assert {"postgres", "redis", "minio", "api", "worker"} <= set(services)
    parser = build_parser()
    for name in ("api", "worker"):
        command = services[name]["command"]
        assert command[0] == "tunehouse"
        parser.parse_args(command[1:])  # exits (fails the test) on an unknown option
        assert services[name]["build"]["target"] in dockerfile_stages()
    assert "--appendonly" in services["redis"]["command"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_compose_environment_names_real_settings():
    known = {f"TUNEHOUSE_{name.upper()}" for name in Settings.model_fields}
    env = compose()["services"]["api"]["environment"]
    tunehouse_vars = {k for k in env if k.startswith("TUNEHOUSE_")}
    assert tunehouse_vars and tunehouse_vars <= known
    assert env["TUNEHOUSE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["TUNEHOUSE_BROKER_URL"].startswith("redis://")
    assert env["TUNEHOUSE_STORAGE_URL"].startswith("s3://")


def test_dockerfile_copies_what_exists_and_runs_the_cli():
    stages = dockerfile_stages()
    assert set(stages) == {"api", "worker"}
    for lines in stages.values():
        for line in lines:
            if line.startswith("COPY"):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), source
        cmd = [line for line in lines if line.startswith("CMD")][-1]
        assert '"tunehouse"' in cmd
    assert not any("torch" in line for line in stages["api"])


def test_console_script_points_at_the_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["tunehouse"] == "api.cli:main"
    api_deps = " ".join(project["dependencies"])
    assert "torch" not in api_deps and "transformers" not in api_deps
