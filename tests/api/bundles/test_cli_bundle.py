"""`tunehouse train --bundle` and `tunehouse import` refusing what they cannot
use, with exit status 2 and the reason on stderr (their successes:
tests/api/bundles/test_round_trip.py)."""

import subprocess
import sys

from domain.auth.service import get_or_create_user
from domain.db import make_engine, make_sessionmaker, migrate
from domain.jobs.models import FineTuningJob
from domain.settings import Settings
from domain.storage import storage_from_url
from tests.api.test_cli import clean_env
from tests.domain.bundles.test_format import bundle_bytes, rewritten, synthetic_members

TUNEHOUSE = [sys.executable, "-m", "api.cli"]


def run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TUNEHOUSE, *args], capture_output=True, text=True, env=clean_env(tmp_path / "data"),
                          timeout=120)


def test_train_needs_a_recipe_or_a_bundle_and_refuses_a_tampered_bundle(tmp_path):
    neither = run(tmp_path, "train", "--out", str(tmp_path / "out"))
    assert neither.returncode == 2 and "give --recipe (with --data) or --bundle" in neither.stderr
    flipped = rewritten(bundle_bytes(synthetic_members()),
                        lambda name, data: [(name, data.replace(b"Job", b"Jab") if name == "events.jsonl" else data)])
    (tmp_path / "b.zip").write_bytes(flipped)
    tampered = run(tmp_path, "train", "--bundle", str(tmp_path / "b.zip"), "--out", str(tmp_path / "out"))
    assert tampered.returncode == 2 and "does not match its SHA256SUMS" in tampered.stderr
    assert not (tmp_path / "out" / "adapter").exists()


def test_import_names_a_missing_user_and_stores_nothing_from_a_tampered_bundle(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        get_or_create_user(session, "dana")
        session.commit()
    (tmp_path / "b.zip").write_bytes(rewritten(bundle_bytes(synthetic_members()),
                                               lambda name, data: [] if name == "recipe.json" else [(name, data)]))

    missing = run(tmp_path, "import", str(tmp_path / "b.zip"), "--user", "erin")
    assert missing.returncode == 2 and "no user 'erin'" in missing.stderr
    tampered = run(tmp_path, "import", str(tmp_path / "b.zip"), "--user", "dana")
    assert tampered.returncode == 2 and "recipe.json is listed but missing" in tampered.stderr
    with make_sessionmaker(engine)() as session:
        assert session.query(FineTuningJob).count() == 0
    engine.dispose()
    assert storage_from_url(settings.storage_url).list_keys("") == []
