"""Artifact store: uploaded files, checkpoints and model weights.

Two backends, picked by URL (see `storage_from_url`):

* `LocalStorage`: a directory on disk (embedded mode).
* `S3Storage`: an S3 bucket via boto3 (production; MinIO and friends through
  `endpoint_url`).

Objects can be gigabytes, so writes go through a `StorageWriter` that streams
chunks out and reads come back as an iterator of chunks; nothing holds a whole
object in memory except the small-object helpers `put_bytes`/`get_bytes`.

Keys are relative slash-separated paths such as "files/12/file-abc". Prefix
operations (`list_keys`, `delete_prefix`) work on whole path segments: prefix
"files/12" covers "files/12" and "files/12/...", never "files/123".

This module is imported by the API process: only stdlib here, and boto3 is
imported lazily inside the S3 backend so local mode never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

logger = logging.getLogger(__name__)

# S3 multipart part size. Every part but the last must be >= 5 MiB; 8 MiB keeps
# memory per writer bounded while allowing objects up to 10,000 parts (~78 GiB).
S3_PART_SIZE = 8 * 1024 * 1024
S3_MAX_PARTS = 10_000

DEFAULT_CHUNK_SIZE = 1 << 20

_KEY_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class StorageError(Exception):
    """A backend operation failed; the message says which and why."""


class ObjectNotFound(StorageError):
    """The requested key does not exist."""


# --------------------------------------------------------------------------- keys


def _is_valid_segment(segment: str) -> bool:
    return bool(_KEY_SEGMENT.fullmatch(segment)) and segment not in (".", "..")


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative object key, else raise ValueError.

    Keys are built by the service, never taken from clients, but a bad key could
    still escape the local root, so every backend method checks.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid storage key {key!r}: must be a non-empty string")
    if "\\" in key:
        raise ValueError(f"invalid storage key {key!r}: backslashes are not allowed")
    if key.startswith("/"):
        raise ValueError(f"invalid storage key {key!r}: must be relative")
    for segment in key.split("/"):
        if not _is_valid_segment(segment):
            raise ValueError(
                f"invalid storage key {key!r}: segment {segment!r} must be non-empty, "
                "made of [A-Za-z0-9._-], and not '.' or '..'"
            )
    return key


def _validate_prefix(prefix: str) -> str:
    """Normalize a listing prefix: "" means everything, a trailing "/" is optional."""
    if not isinstance(prefix, str):
        raise ValueError(f"invalid storage prefix {prefix!r}: must be a string")
    stripped = prefix.removesuffix("/")
    if not stripped:
        if prefix:  # "/" alone is an absolute path, not "everything"
            raise ValueError(f"invalid storage prefix {prefix!r}: must be relative")
        return ""
    return validate_key(stripped)


def _key_in_prefix(key: str, prefix: str) -> bool:
    return not prefix or key == prefix or key.startswith(prefix + "/")


# ------------------------------------------------------------------------- writer


class StorageWriter:
    """Streams one object into storage; nothing is visible until `commit()`.

    Use as a context manager: leaving the block without `commit()` (or with an
    exception) aborts, so a failed upload never leaves a partial object behind.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.bytes_written = 0
        self._state = "open"  # -> "committed" | "aborted"

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise StorageError(f"cannot write to {self.key!r}: writer is already {self._state}")
        size = memoryview(data).nbytes
        if size == 0:
            return
        self._write(data)
        self.bytes_written += size

    def commit(self) -> None:
        if self._state != "open":
            raise StorageError(f"cannot commit {self.key!r}: writer is already {self._state}")
        try:
            self._commit()
        except BaseException:
            # A failed commit must not leave temp files or dangling uploads behind.
            self._state = "aborted"
            self._abort_logging_errors()
            raise
        self._state = "committed"

    def abort(self) -> None:
        # Idempotent; after a commit the object is kept and abort does nothing.
        if self._state != "open":
            return
        self._state = "aborted"
        self._abort()

    def __enter__(self) -> StorageWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state != "open":
            return
        if exc_type is None:
            self.abort()
        else:
            # Don't let a cleanup failure hide the error that got us here.
            self._state = "aborted"
            self._abort_logging_errors()

    def _abort_logging_errors(self) -> None:
        try:
            self._abort()
        except Exception:
            logger.warning("failed to clean up aborted write of %r", self.key, exc_info=True)

    # Backend hooks.
    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------------ storage


class Storage(ABC):
    """The artifact store interface shared by all backends."""

    @abstractmethod
    def writer(self, key: str) -> StorageWriter: ...

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as writer:
            writer.write(data)
            writer.commit()

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_bytes(key))

    @abstractmethod
    def iter_bytes(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """Open `key` now (ObjectNotFound if missing) and yield its bytes in chunks."""

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix` (whole segments). The empty prefix is refused."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys under `prefix` (whole segments); "" lists everything."""

    def local_path(self, key: str) -> Path | None:
        """Filesystem path of the object, for zero-copy responses; None if not on local disk."""
        validate_key(key)
        return None

    def upload_folder(self, folder: Path, prefix: str) -> None:
        """Every file below `folder`, as `prefix/<its relative path>`."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                with path.open("rb") as handle, self.writer(f"{prefix}/{path.relative_to(folder).as_posix()}") as writer:
                    while chunk := handle.read(DEFAULT_CHUNK_SIZE):
                        writer.write(chunk)
                    writer.commit()

    def download_prefix(self, prefix: str, folder: Path) -> Path:
        """Every key under `prefix` into `folder` (the inverse of upload_folder)."""
        folder.mkdir(parents=True, exist_ok=True)
        for key in self.list_keys(prefix):
            target = folder / key[len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                for chunk in self.iter_bytes(key):
                    out.write(chunk)
        return folder

    def presigned_url(
        self, key: str, expires_in: int = 300, download_name: str | None = None
    ) -> str | None:
        """A time-limited direct download URL, or None if the backend has none."""
        validate_key(key)
        return None


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


# -------------------------------------------------------------------------- local


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _LocalWriter(StorageWriter):
    def __init__(self, key: str, final_path: Path) -> None:
        super().__init__(key)
        self._final_path = final_path
        # "~" can never appear in a key, so listings skip in-flight temp files.
        self._temp_path = final_path.parent / f".tmp-{secrets.token_hex(8)}~"
        self._file = self._open_temp_file()

    def _open_temp_file(self) -> IO[bytes]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        # A concurrent delete may prune the (empty) directory between mkdir and open.
        for attempt in range(3):
            try:
                self._final_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._temp_path, flags, 0o644)
                return os.fdopen(fd, "wb")
            except FileNotFoundError:
                if attempt == 2:
                    raise StorageError(f"cannot create temp file for {self.key!r}: directory vanished")
            except OSError as exc:
                raise StorageError(f"cannot create temp file for {self.key!r}: {exc}") from exc
        raise AssertionError("unreachable")

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageError(f"write to {self.key!r} failed: {exc}") from exc

    def _commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp_path, self._final_path)
        except OSError as exc:
            raise StorageError(f"commit of {self.key!r} failed: {exc}") from exc
        _fsync_directory(self._final_path.parent)

    def _abort(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        try:
            self._temp_path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"abort of {self.key!r} failed to remove temp file: {exc}") from exc


class LocalStorage(Storage):
    """Objects are files under `root`; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create storage root {str(root)!r}: {exc}") from exc
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        # validate_key rules out "..", so only a symlink inside root could lead out;
        # check the parent (where temp files go) and the target itself.
        for candidate in (path.parent, path):
            if not candidate.resolve().is_relative_to(self.root):
                raise StorageError(f"key {key!r} resolves outside the storage root")
        return path

    def writer(self, key: str) -> StorageWriter:
        return _LocalWriter(key, self._path(key))

    def iter_bytes(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        _check_chunk_size(chunk_size)
        path = self._path(key)
        try:
            file = open(path, "rb")  # opened eagerly so a missing key fails at the call
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"object not found: {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot open {key!r}: {exc}") from exc
        return self._read_chunks(key, file, chunk_size)

    @staticmethod
    def _read_chunks(key: str, file: IO[bytes], chunk_size: int) -> Iterator[bytes]:
        try:
            while chunk := file.read(chunk_size):
                yield chunk
        except OSError as exc:
            raise StorageError(f"read of {key!r} failed: {exc}") from exc
        finally:
            file.close()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"object not found: {key!r}")
        try:
            return path.stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"object not found: {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot stat {key!r}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if not path.is_file():
            return
        self._unlink(key, path)
        self._prune_empty_parents(path)

    def delete_prefix(self, prefix: str) -> None:
        prefix = _validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete_prefix(''): that would wipe the whole store")
        for key in self.list_keys(prefix):
            self._unlink(key, self._path(key))
        start = self._path(prefix)
        if start.is_dir():
            # Remove emptied directories; ones holding in-flight temp files stay.
            for dirpath, _, _ in os.walk(start, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        self._prune_empty_parents(start)

    def list_keys(self, prefix: str) -> list[str]:
        prefix = _validate_prefix(prefix)
        start = self._path(prefix) if prefix else self.root
        if start.is_file():
            return [prefix]
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [name for name in dirnames if _is_valid_segment(name)]
            for name in filenames:
                if _is_valid_segment(name):  # skips temp files of in-flight writers
                    keys.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(keys)

    def local_path(self, key: str) -> Path | None:
        # Where the object lives (or would live); existence is the caller's check.
        return self._path(key)

    def _unlink(self, key: str, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc

    def _prune_empty_parents(self, path: Path) -> None:
        # Keeps the tree from filling with empty per-file directories.
        directory = path.parent
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


# ----------------------------------------------------------------------------- S3


def _content_disposition(download_name: str | None) -> str:
    """An RFC 6266 attachment header; non-ASCII names go in filename* with an ASCII fallback."""
    if not download_name:
        return "attachment"
    name = download_name.replace("/", "_").replace("\\", "_")
    ascii_name = "".join(
        char if char.isascii() and char.isprintable() and char != '"' else "_" for char in name
    )
    header = f'attachment; filename="{ascii_name}"'
    if ascii_name != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


def _make_s3_client(endpoint_url: str | None) -> Any:
    import boto3  # lazy: local mode never pays for (or needs) boto3
    from botocore.config import Config

    config = Config(
        region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        signature_version="s3v4",
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        # Custom endpoints (MinIO, ...) rarely have wildcard DNS for bucket subdomains.
        s3={"addressing_style": "path"} if endpoint_url else {},
        # Newer botocore adds CRC checksums to every upload by default, which
        # several S3-compatible servers reject; only send them when required.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A private session: the default one is not safe to create clients from concurrently.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class _S3Writer(StorageWriter):
    def __init__(self, key: str, storage: S3Storage) -> None:
        super().__init__(key)
        self._storage = storage
        self._client = storage.client
        self._object_name = storage._object_name(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _errors(self, operation: str) -> contextlib.AbstractContextManager[None]:
        return self._storage._translate_errors(operation, self.key)

    def _write(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        while view:
            room = S3_PART_SIZE - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == S3_PART_SIZE:
                self._upload_buffered_part()

    def _upload_buffered_part(self) -> None:
        bucket, name = self._storage.bucket, self._object_name
        if self._upload_id is None:
            with self._errors("create_multipart_upload"):
                response = self._client.create_multipart_upload(Bucket=bucket, Key=name)
            self._upload_id = response["UploadId"]
        part_number = len(self._parts) + 1
        if part_number > S3_MAX_PARTS:
            raise StorageError(
                f"object {self.key!r} is too large: more than {S3_MAX_PARTS} parts of {S3_PART_SIZE} bytes"
            )
        with self._errors("upload_part"):
            response = self._client.upload_part(
                Bucket=bucket,
                Key=name,
                UploadId=self._upload_id,
                PartNumber=part_number,
                Body=bytes(self._buffer),
            )
        self._parts.append({"ETag": response["ETag"], "PartNumber": part_number})
        self._buffer.clear()

    def _commit(self) -> None:
        bucket, name = self._storage.bucket, self._object_name
        if self._upload_id is None:
            # Under one part in total: a single request is cheaper and just as atomic.
            with self._errors("put_object"):
                self._client.put_object(Bucket=bucket, Key=name, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._upload_buffered_part()
            with self._errors("complete_multipart_upload"):
                self._client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=name,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            self._upload_id = None
        self._buffer = bytearray()

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        from botocore.exceptions import ClientError

        try:
            with self._errors("abort_multipart_upload"):
                try:
                    self._client.abort_multipart_upload(
                        Bucket=self._storage.bucket, Key=self._object_name, UploadId=self._upload_id
                    )
                except ClientError as exc:
                    # Already gone (aborted or expired elsewhere) is what we wanted anyway.
                    if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
        finally:
            self._upload_id = None


class S3Storage(Storage):
    """Objects live in `bucket` under `prefix`; key "a/b" maps to "{prefix}/a/b"."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3Storage needs a bucket name")
        self.bucket = bucket
        self.prefix = _validate_prefix(prefix.strip("/"))
        self.endpoint_url = endpoint_url
        self.client = client if client is not None else _make_s3_client(endpoint_url)

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    def _object_name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _translate_errors(self, operation: str, key: str) -> Iterator[None]:
        """Turn botocore exceptions into ObjectNotFound / StorageError naming the operation."""
        from botocore.exceptions import BotoCoreError, ClientError

        location = f"s3://{self.bucket}/{self._object_name(key) if key else self.prefix}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            # HEAD requests have no body, so a missing key shows up as a bare "404".
            if code in ("NoSuchKey", "NotFound", "404"):
                raise ObjectNotFound(f"object not found: {key!r} ({location})") from exc
            message = error.get("Message") or exc
            raise StorageError(f"S3 {operation} failed for {location}: {code}: {message}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {operation} failed for {location}: {exc}") from exc

    def writer(self, key: str) -> StorageWriter:
        validate_key(key)
        return _S3Writer(key, self)

    def iter_bytes(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        _check_chunk_size(chunk_size)
        name = self._object_name(key)
        # Request now so a missing key fails at the call, not at the first next().
        with self._translate_errors("get_object", key):
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        return self._read_chunks(key, body, chunk_size)

    def _read_chunks(self, key: str, body: Any, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._translate_errors("get_object (reading body)", key):
                while chunk := body.read(chunk_size):
                    yield chunk
        finally:
            body.close()

    def size(self, key: str) -> int:
        name = self._object_name(key)
        with self._translate_errors("head_object", key):
            return int(self.client.head_object(Bucket=self.bucket, Key=name)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        name = self._object_name(key)
        with self._translate_errors("delete_object", key):
            self.client.delete_object(Bucket=self.bucket, Key=name)

    def delete_prefix(self, prefix: str) -> None:
        prefix = _validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete_prefix(''): that would wipe the whole store")
        names = [self._object_name(key) for key in self._iter_relative_names(prefix)]
        for start in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            batch = names[start : start + 1000]
            with self._translate_errors("delete_objects", prefix):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
                )
            if errors := response.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"S3 delete_objects failed for {len(errors)} object(s) under "
                    f"s3://{self.bucket}/{self._object_name(prefix)}, e.g. {first.get('Key')}: "
                    f"{first.get('Code')}: {first.get('Message')}"
                )

    def list_keys(self, prefix: str) -> list[str]:
        prefix = _validate_prefix(prefix)
        # Names we did not write (e.g. "a//b") are not addressable keys; leave them out.
        return sorted(name for name in self._iter_relative_names(prefix) if _is_valid_key(name))

    def _iter_relative_names(self, prefix: str) -> Iterator[str]:
        """Object names relative to self.prefix that fall under `prefix` (whole segments)."""
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._translate_errors("list_objects_v2", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                for item in page.get("Contents", []):
                    relative = item["Key"][len(root) :]
                    if _key_in_prefix(relative, prefix):
                        yield relative

    def presigned_url(
        self, key: str, expires_in: int = 300, download_name: str | None = None
    ) -> str | None:
        name = self._object_name(key)
        with self._translate_errors("generate_presigned_url", key):
            return self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": name,
                    "ResponseContentDisposition": _content_disposition(download_name),
                },
                ExpiresIn=expires_in,
            )


def _is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------- URL


def storage_from_url(url: str, *, endpoint_url: str | None = None) -> Storage:
    """Build a backend from a URL.

    "file:///abs/path" or a plain path -> LocalStorage;
    "s3://bucket" or "s3://bucket/some/prefix" -> S3Storage (endpoint_url for MinIO etc.).
    """
    if not url:
        raise ValueError("storage URL is empty")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "":
        return LocalStorage(Path(url))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file storage URL {url!r} must be file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file storage URL {url!r} must hold an absolute path")
        return LocalStorage(Path(path))
    if scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"S3 storage URL {url!r} has no bucket name")
        return S3Storage(parts.netloc, prefix=unquote(parts.path).strip("/"), endpoint_url=endpoint_url)
    raise ValueError(
        f"unsupported storage URL scheme {parts.scheme!r} in {url!r}: use file://, s3://, or a plain path"
    )
