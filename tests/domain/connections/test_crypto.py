"""Connection keys at rest: Fernet tokens under the deployment's secret."""

import stat

import pytest

from api.app import create_app
from domain.connections.crypto import SECRET_FILE, UnreadableKey, decrypt_key, encrypt_key
from domain.settings import Settings

KEY = "sk-test-0123456789abcdefghij"


def test_the_embedded_secret_is_made_on_first_start_readable_by_its_owner_only(tmp_path):
    create_app(Settings(data_dir=tmp_path))
    secret = tmp_path / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_text().strip()) >= 32


def test_a_key_is_stored_encrypted_and_read_back_with_the_same_secret_only(tmp_path):
    embedded = Settings(data_dir=tmp_path / "a")
    token = encrypt_key(embedded, KEY)
    assert KEY not in token and decrypt_key(Settings(data_dir=tmp_path / "a"), token) == KEY
    configured = Settings(data_dir=tmp_path / "b", connection_secret="s" * 32)
    assert decrypt_key(configured, encrypt_key(configured, KEY)) == KEY
    with pytest.raises(UnreadableKey) as unreadable:
        decrypt_key(configured, token)
    assert KEY not in str(unreadable.value)
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, connection_secret="short")
