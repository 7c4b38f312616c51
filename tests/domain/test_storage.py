"""Tests for domain.storage.

Shared behaviour runs against both backends through the parametrized `storage`
fixture: LocalStorage in a tmp dir, and S3Storage talking real HTTP to a moto
server (never moto's in-process mocks, so the boto3 wiring is exercised too).
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from domain.storage import (
    S3_PART_SIZE,
    LocalStorage,
    ObjectNotFound,
    S3Storage,
    Storage,
    StorageError,
    storage_from_url,
    validate_key,
)

MiB = 1024 * 1024
S3_PREFIX = "some/prefix"
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch, tmp_path):
    """Fake credentials, and no user AWS config or proxy that could leak into the tests."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_client(moto_endpoint, fake_aws_env):
    """A plain boto3 client for arranging and inspecting the bucket behind the storage's back."""
    return boto3.session.Session().client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_client) -> str:
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("moto_endpoint")
    return S3Storage(bucket, prefix=S3_PREFIX, endpoint_url=endpoint)


def _varied_bytes(size: int, seed: int) -> bytes:
    """Deterministic non-repeating-looking bytes, so misordered chunks change the hash."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------ both backends


def test_put_get_round_trip(storage):
    storage.put_bytes("files/12/file-abc", b"hello world")
    assert storage.get_bytes("files/12/file-abc") == b"hello world"
    assert storage.size("files/12/file-abc") == 11
    assert storage.exists("files/12/file-abc")


def test_put_overwrites_existing_object(storage):
    storage.put_bytes("a/b", b"first version")
    storage.put_bytes("a/b", b"second")
    assert storage.get_bytes("a/b") == b"second"


def test_writer_streams_across_part_boundary(storage):
    total = 20 * MiB  # spans two full 8 MiB parts plus a smaller last one
    expected = hashlib.sha256()
    with storage.writer("checkpoints/7/model.bin") as writer:
        for index in range(20):
            chunk = _varied_bytes(MiB, seed=index)
            expected.update(chunk)
            writer.write(chunk)
        assert writer.bytes_written == total
        writer.commit()

    actual = hashlib.sha256()
    chunk_count = 0
    for chunk in storage.iter_bytes("checkpoints/7/model.bin", chunk_size=3 * MiB):
        assert len(chunk) <= 3 * MiB
        actual.update(chunk)
        chunk_count += 1
    assert actual.hexdigest() == expected.hexdigest()
    assert chunk_count >= 7
    assert storage.size("checkpoints/7/model.bin") == total


def test_writer_accepts_odd_sized_writes(storage):
    data = _varied_bytes(S3_PART_SIZE + 12345, seed=99)
    with storage.writer("odd/sizes") as writer:
        offset = 0
        for step in (1, 7, 3 * MiB + 5, S3_PART_SIZE, 0):
            writer.write(data[offset : offset + step])
            offset += step
        writer.write(memoryview(data)[offset:])
        writer.commit()
    assert storage.get_bytes("odd/sizes") == data


def test_empty_object(storage):
    with storage.writer("empty/one") as writer:
        writer.commit()
    assert writer.bytes_written == 0
    assert storage.exists("empty/one")
    assert storage.size("empty/one") == 0
    assert storage.get_bytes("empty/one") == b""
    assert list(storage.iter_bytes("empty/one")) == []

    storage.put_bytes("empty/two", b"")
    assert storage.get_bytes("empty/two") == b""


def _assert_no_multipart_uploads(storage, request):
    if isinstance(storage, S3Storage):
        s3_client = request.getfixturevalue("s3_client")
        uploads = s3_client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
        assert uploads == []


def test_abort_leaves_nothing(storage, request):
    writer = storage.writer("aborted/big")
    writer.write(_varied_bytes(S3_PART_SIZE + MiB, seed=1))  # forces a multipart upload on S3
    writer.abort()
    writer.abort()  # idempotent

    assert not storage.exists("aborted/big")
    assert storage.list_keys("") == []
    assert storage.list_keys("aborted") == []
    _assert_no_multipart_uploads(storage, request)
    with pytest.raises(StorageError):
        writer.write(b"more")
    with pytest.raises(StorageError):
        writer.commit()


def test_abort_keeps_previous_version(storage):
    storage.put_bytes("kept", b"old")
    writer = storage.writer("kept")
    writer.write(b"new bytes that should never land")
    writer.abort()
    assert storage.get_bytes("kept") == b"old"


def test_exception_in_context_manager_keeps_nothing(storage, request):
    with pytest.raises(RuntimeError, match="upload interrupted"):
        with storage.writer("crashed/file") as writer:
            writer.write(_varied_bytes(S3_PART_SIZE + 10, seed=2))
            raise RuntimeError("upload interrupted")

    assert not storage.exists("crashed/file")
    assert storage.list_keys("") == []
    _assert_no_multipart_uploads(storage, request)


def test_leaving_context_without_commit_keeps_nothing(storage, request):
    with storage.writer("forgotten/file") as writer:
        writer.write(_varied_bytes(S3_PART_SIZE * 2, seed=3))

    assert not storage.exists("forgotten/file")
    assert storage.list_keys("") == []
    _assert_no_multipart_uploads(storage, request)


def test_uncommitted_writer_is_invisible(storage):
    with storage.writer("pending/obj") as writer:
        writer.write(_varied_bytes(S3_PART_SIZE + MiB, seed=4))
        assert not storage.exists("pending/obj")
        assert storage.list_keys("") == []
        with pytest.raises(ObjectNotFound):
            storage.size("pending/obj")
        writer.commit()
        assert storage.exists("pending/obj")

    assert storage.list_keys("") == ["pending/obj"]
    # Leaving the block after commit must not undo it.
    assert storage.size("pending/obj") == S3_PART_SIZE + MiB


def test_size_exists_delete(storage):
    storage.put_bytes("x/y/z", b"12345")
    assert storage.size("x/y/z") == 5
    assert storage.exists("x/y/z")
    assert not storage.exists("x/y")  # a "directory" is not an object

    storage.delete("x/y/z")
    assert not storage.exists("x/y/z")
    storage.delete("x/y/z")  # missing is fine
    storage.delete("never/existed")
    assert storage.list_keys("") == []


def test_list_keys_and_delete_prefix(storage):
    for key in ("files/12/a", "files/12/b", "files/12/sub/c", "files/123/d", "files/2/e", "other"):
        storage.put_bytes(key, key.encode())

    assert storage.list_keys("files/12") == ["files/12/a", "files/12/b", "files/12/sub/c"]
    assert storage.list_keys("files/12/") == ["files/12/a", "files/12/b", "files/12/sub/c"]
    assert storage.list_keys("files/12/a") == ["files/12/a"]
    assert storage.list_keys("files/1") == []  # prefixes match whole segments only
    assert storage.list_keys("nothing/here") == []
    assert storage.list_keys("") == [
        "files/12/a",
        "files/12/b",
        "files/12/sub/c",
        "files/123/d",
        "files/2/e",
        "other",
    ]

    storage.delete_prefix("files/12")
    assert storage.list_keys("") == ["files/123/d", "files/2/e", "other"]
    storage.delete_prefix("files/12")  # nothing left is fine
    storage.delete_prefix("files/")
    assert storage.list_keys("") == ["other"]
    with pytest.raises(ValueError):
        storage.delete_prefix("")  # never wipe the whole store by accident
    assert storage.get_bytes("other") == b"other"


def test_missing_object_raises_object_not_found(storage):
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("missing/key")
    with pytest.raises(ObjectNotFound):
        storage.iter_bytes("missing/key")  # raised at the call, before iterating
    with pytest.raises(ObjectNotFound):
        storage.size("missing/key")
    assert not storage.exists("missing/key")
    assert issubclass(ObjectNotFound, StorageError)


BAD_KEYS = ["../x", "/abs", "a/../b", "a\\b", "", "a//b", "a/./b", ".", "a/", "a b", "ä", "x/.."]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_rejects(key):
    with pytest.raises(ValueError):
        validate_key(key)


@pytest.mark.parametrize("key", ["files/12/file-abc", "a", "model.safetensors", "A_b-C.d/.hidden"])
def test_validate_key_accepts(key):
    assert validate_key(key) == key


def test_every_method_validates_keys(storage):
    calls = [
        lambda key: storage.writer(key),
        lambda key: storage.put_bytes(key, b"x"),
        lambda key: storage.get_bytes(key),
        lambda key: storage.iter_bytes(key),
        lambda key: storage.size(key),
        lambda key: storage.exists(key),
        lambda key: storage.delete(key),
        lambda key: storage.local_path(key),
        lambda key: storage.presigned_url(key),
        lambda key: storage.list_keys(key),
        lambda key: storage.delete_prefix(key),
    ]
    for call in calls:
        for key in ("../x", "/abs", "a/../b", "a\\b", "a//b"):
            with pytest.raises(ValueError):
                call(key)


# ------------------------------------------------------------------ local backend


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def test_local_never_writes_outside_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    storage = LocalStorage(tmp_path / "root")
    # A symlink planted inside the root that points out of it.
    (storage.root / "escape").symlink_to(outside, target_is_directory=True)
    before = _snapshot(outside)

    for key in ("../outside/precious", "../evil", "/tmp/evil", "a/../../evil"):
        with pytest.raises(ValueError):
            storage.put_bytes(key, b"pwned")
    for key in ("escape/precious", "escape/new"):
        with pytest.raises(StorageError):
            storage.put_bytes(key, b"pwned")
        with pytest.raises(StorageError):
            storage.get_bytes(key)
        with pytest.raises(StorageError):
            storage.delete(key)
    storage.put_bytes("fine/key", b"ok")
    storage.delete_prefix("fine")

    assert _snapshot(outside) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "root"]


def test_local_writer_temp_file_lives_beside_target_and_is_cleaned_up(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    writer = storage.writer("dir/obj")
    writer.write(b"partial")
    entries = list((storage.root / "dir").iterdir())
    assert len(entries) == 1 and entries[0].name != "obj"  # temp file, not the object
    assert storage.list_keys("") == []
    writer.abort()
    assert not (storage.root / "dir").exists() or list((storage.root / "dir").iterdir()) == []


def test_local_delete_prunes_empty_directories(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    storage.put_bytes("a/b/c/d", b"1")
    storage.put_bytes("a/keep", b"2")
    storage.delete("a/b/c/d")
    assert not (storage.root / "a" / "b").exists()
    storage.delete_prefix("a")
    assert list(storage.root.iterdir()) == []
    assert storage.root.is_dir()


def test_local_path_and_no_presigned_url(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    storage.put_bytes("files/1/f", b"bytes on disk")
    path = storage.local_path("files/1/f")
    assert path is not None and path.is_file()
    assert path.read_bytes() == b"bytes on disk"
    assert path.resolve().is_relative_to(storage.root)
    assert storage.presigned_url("files/1/f", download_name="f.txt") is None
    # A missing key still has a place in the tree (callers use it to find the root).
    assert storage.local_path("files/1/missing") == storage.root / "files" / "1" / "missing"


def test_local_mode_does_not_import_boto3(tmp_path):
    script = (
        "import sys\n"
        "from domain.storage import storage_from_url\n"
        f"store = storage_from_url({str(tmp_path / 'root')!r})\n"
        "store.put_bytes('a/b', b'x')\n"
        "assert store.get_bytes('a/b') == b'x'\n"
        "heavy = [m for m in ('boto3', 'botocore', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------- S3 backend


@pytest.fixture
def s3_storage(s3_bucket, moto_endpoint) -> S3Storage:
    return S3Storage(s3_bucket, prefix=S3_PREFIX, endpoint_url=moto_endpoint)


def test_s3_keys_map_under_prefix_and_use_multipart_for_large_objects(s3_storage, s3_client):
    s3_storage.put_bytes("small/obj", b"tiny")
    with s3_storage.writer("large/obj") as writer:
        for index in range(20):
            writer.write(_varied_bytes(MiB, seed=index))
        writer.commit()

    names = sorted(item["Key"] for item in s3_client.list_objects_v2(Bucket=s3_storage.bucket)["Contents"])
    assert names == ["some/prefix/large/obj", "some/prefix/small/obj"]
    # Multipart ETags end in "-<part count>": 8 + 8 + 4 MiB -> 3 parts.
    assert s3_client.head_object(Bucket=s3_storage.bucket, Key="some/prefix/large/obj")["ETag"].endswith('-3"')
    assert "-" not in s3_client.head_object(Bucket=s3_storage.bucket, Key="some/prefix/small/obj")["ETag"]


def test_s3_empty_prefix(s3_bucket, moto_endpoint, s3_client):
    storage = S3Storage(s3_bucket, prefix="", endpoint_url=moto_endpoint)
    storage.put_bytes("top/level", b"1")
    assert [item["Key"] for item in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["top/level"]
    assert storage.list_keys("") == ["top/level"]
    # Slashes around the prefix are tolerated and never doubled.
    slashed = S3Storage(s3_bucket, prefix="/p/q/", endpoint_url=moto_endpoint)
    slashed.put_bytes("k", b"2")
    assert s3_client.head_object(Bucket=s3_bucket, Key="p/q/k")["ContentLength"] == 1


def test_s3_presigned_url_downloads_with_filename(s3_storage):
    data = _varied_bytes(100_000, seed=5)
    s3_storage.put_bytes("files/9/file-xyz", data)

    url = s3_storage.presigned_url("files/9/file-xyz", expires_in=60, download_name="train data.jsonl")
    with _no_proxy_opener().open(url, timeout=10) as response:
        assert response.read() == data
        disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment")
    assert 'filename="train data.jsonl"' in disposition

    url = s3_storage.presigned_url("files/9/file-xyz")
    with _no_proxy_opener().open(url, timeout=10) as response:
        assert response.headers["Content-Disposition"] == "attachment"

    url = s3_storage.presigned_url("files/9/file-xyz", download_name='données "v2".csv')
    with _no_proxy_opener().open(url, timeout=10) as response:
        disposition = response.headers["Content-Disposition"]
    assert 'filename="donn_es _v2_.csv"' in disposition
    assert "filename*=UTF-8''donn%C3%A9es%20%22v2%22.csv" in disposition


def test_s3_has_no_local_path(s3_storage):
    s3_storage.put_bytes("a", b"1")
    assert s3_storage.local_path("a") is None


def test_s3_missing_bucket_is_readable_storage_error(moto_endpoint):
    storage = S3Storage(f"missing-{uuid.uuid4().hex[:12]}", prefix=S3_PREFIX, endpoint_url=moto_endpoint)
    with pytest.raises(StorageError) as excinfo:
        storage.get_bytes("files/1/x")
    assert not isinstance(excinfo.value, ObjectNotFound)  # the bucket, not the key, is missing
    message = str(excinfo.value)
    assert "get_object" in message and storage.bucket in message and "NoSuchBucket" in message

    with pytest.raises(StorageError, match="put_object"):
        storage.put_bytes("files/1/x", b"data")
    with pytest.raises(StorageError, match="list_objects_v2"):
        storage.list_keys("files")


def test_s3_unreachable_endpoint_is_storage_error():
    port = _free_port()  # nothing listens there
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1),
    )
    storage = S3Storage("bucket", client=client)
    with pytest.raises(StorageError, match="head_object"):
        storage.size("a")


def test_s3_client_configuration(moto_endpoint):
    storage = S3Storage("bucket", endpoint_url=moto_endpoint)
    config = storage.client.meta.config
    assert storage.client.meta.endpoint_url == moto_endpoint
    assert storage.client.meta.region_name == "us-east-1"
    assert config.retries["mode"] == "standard"
    assert config.connect_timeout and config.read_timeout


# ----------------------------------------------------------------------------- URL


def test_storage_from_url(tmp_path, moto_endpoint):
    local = storage_from_url(f"file://{tmp_path / 'via-file-url'}")
    assert isinstance(local, LocalStorage) and local.root == (tmp_path / "via-file-url").resolve()
    assert local.root.is_dir()

    plain = storage_from_url(str(tmp_path / "plain"))
    assert isinstance(plain, LocalStorage) and plain.root == (tmp_path / "plain").resolve()

    bare_bucket = storage_from_url("s3://my-bucket")
    assert isinstance(bare_bucket, S3Storage)
    assert (bare_bucket.bucket, bare_bucket.prefix, bare_bucket.endpoint_url) == ("my-bucket", "", None)

    with_prefix = storage_from_url("s3://my-bucket/some/prefix/", endpoint_url=moto_endpoint)
    assert isinstance(with_prefix, S3Storage)
    assert (with_prefix.bucket, with_prefix.prefix) == ("my-bucket", "some/prefix")
    assert with_prefix.client.meta.endpoint_url == moto_endpoint


@pytest.mark.parametrize("url", ["ftp://x", "http://example.com/a", "gs://bucket"])
def test_storage_from_url_rejects_other_schemes(url):
    scheme = url.split(":")[0]
    with pytest.raises(ValueError, match=scheme):
        storage_from_url(url)


@pytest.mark.parametrize("url", ["", "s3://", "file://host/path"])
def test_storage_from_url_rejects_malformed(url):
    with pytest.raises(ValueError):
        storage_from_url(url)
