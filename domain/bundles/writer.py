"""Writing a bundle as a stream: zipfile writes to a sink that is drained
after every chunk, so a bundle of gigabytes of weights passes through the
API a megabyte at a time and is never whole in memory or on disk."""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from domain.bundles.format import SUMS, sha256sums_text
from domain.storage import Storage


@dataclass(frozen=True)
class Member:
    """One member: given bytes, a stored object or a source of chunks, read when its turn comes."""

    name: str
    data: bytes | None = None
    key: str | None = None
    read: Callable[[], Iterable[bytes]] | None = None
    size: int | None = None  # of the stored object or source, for the zip64 decision
    deflate: bool = True  # weights are stored as they are: they barely compress


class _Sink:
    """A write-only, non-seekable file for zipfile (which then writes data
    descriptors instead of seeking back); `drain` hands over what it got."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> Iterator[bytes]:
        """What was written since the last drain, as one chunk (none when nothing was)."""
        data, self._parts = b"".join(self._parts), []
        if data:
            yield data


def _chunks(storage: Storage | None, member: Member) -> Iterable[bytes]:
    if member.data is not None:
        return [member.data]
    if member.read is not None:
        return member.read()
    return storage.iter_bytes(member.key)


def stream_zip(storage: Storage | None, members: list[Member], created_at: int, *, sums: bool = True) -> Iterator[bytes]:
    """The zip of `members` (then, with `sums`, SHA256SUMS over them), as
    chunks of bytes. Members get the given time: the same job gives the same bytes."""
    sink = _Sink()
    digests: dict[str, str] = {}
    stamp = time.gmtime(max(created_at, 315532800))[:6]  # zip dates start in 1980
    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
        for member in [*members, Member(SUMS)] if sums else members:
            info = zipfile.ZipInfo(member.name, stamp)
            info.compress_type = zipfile.ZIP_DEFLATED if member.deflate else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            size = len(member.data) if member.data is not None else member.size
            if member.name == SUMS:
                member = Member(SUMS, data=sha256sums_text(digests).encode())
                size = len(member.data)
            digest = hashlib.sha256()
            # Unknown or large sizes get zip64 records up front: a stream cannot go back to add them.
            with archive.open(info, "w", force_zip64=size is None or size >= 1 << 31) as out:
                for chunk in _chunks(storage, member):
                    digest.update(chunk)
                    out.write(chunk)
                    yield from sink.drain()
            if member.name != SUMS:
                digests[member.name] = digest.hexdigest()
    yield from sink.drain()
