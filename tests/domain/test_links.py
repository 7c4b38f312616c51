"""Download link tokens: what is signed verifies until its expiry, with the
secret it was signed with only; the data dir's secret is made once and kept."""

import stat

import pytest

from domain.links import SECRET_FILE, ExpiredLink, InvalidLink, SignedLink, link_secret, sign_link, verify_link
from domain.settings import Settings

SECRET = b"s" * 64
LINK = SignedLink(user_id=7, path="/v1/fine_tuning/jobs/ftjob-a/gguf?quantization=q8_0", expires_at=1_000_000)


def test_a_link_verifies_until_it_expires():
    token = sign_link(SECRET, LINK)
    assert verify_link(SECRET, token, now=999_999.5) == LINK
    with pytest.raises(ExpiredLink):
        verify_link(SECRET, token, now=1_000_000)
    with pytest.raises(InvalidLink):  # another deployment's secret
        verify_link(b"t" * 64, token, now=0)


def test_the_data_dirs_secret_is_made_once_and_private(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    first = link_secret(settings)
    path = settings.data_dir / SECRET_FILE
    assert len(first) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert link_secret(Settings(data_dir=tmp_path / "data")) == first
    assert link_secret(Settings(data_dir=tmp_path / "other")) != first
    assert link_secret(Settings(data_dir=tmp_path / "data", link_secret="x" * 40)) == b"x" * 40


def test_a_configured_secret_must_be_long():
    with pytest.raises(ValueError, match="LINK_SECRET"):
        Settings(link_secret="too short")
