"""Backend-independent storage contract: object keys, metadata, the ``Storage`` protocol.

The storage layer stores *opaque bytes* (in production: envelopes produced by
:mod:`storage.envelope`).  It never sees plaintext client files, so a backend only has to
guarantee durability, atomic visibility and confinement; confidentiality and integrity
come from the envelope layer above it.

Security invariants shared by every backend:

* object keys are validated by :func:`validate_key` before they touch a backend, so a key
  can never name anything outside the backend's namespace (no ``..``, no absolute paths);
* an object becomes visible atomically, complete or not at all -- readers never observe a
  torn object, and partial writes are never listed by :meth:`Storage.keys`;
* metadata is stored **unencrypted**: it must never contain My Numbers, personal data or
  client-supplied file names (keep those in the envelope or in the database).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TypeAlias

from .errors import InvalidKeyError, InvalidMetadataError

__all__ = [
    "MAX_KEY_LENGTH",
    "BytesLike",
    "ObjectInfo",
    "ObjectWriter",
    "Storage",
    "put_bytes",
    "read_bytes",
    "validate_key",
    "validate_metadata",
    "validate_prefix",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview

MAX_KEY_LENGTH = 512
# 255 is the per-name limit of every common file system; enforcing it here keeps a key that
# works on one backend working on all of them.
_MAX_SEGMENT_LENGTH = 255
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_PREFIX_RE = re.compile(r"[A-Za-z0-9._/-]*")

# Metadata must survive a trip through S3 user metadata (HTTP headers): lower-case ASCII
# names, printable ASCII values, 2 KiB in total.
_META_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_META_VALUE_RE = re.compile(r"[\x20-\x7e]*")
_MAX_METADATA_BYTES = 2048


@dataclass(frozen=True)
class ObjectInfo:
    """Description of a committed object.

    ``size`` is the stored (i.e. ciphertext) size in bytes; ``metadata`` is the mapping
    given at write time (empty when none was given).
    """

    key: str
    size: int
    metadata: Mapping[str, str]


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe object key, else raise ``InvalidKeyError``.

    Accepted: 1..512 characters, segments of ``[A-Za-z0-9._-]`` (each at most 255 chars)
    joined by single ``/``; no empty, ``.`` or ``..`` segment; no leading or trailing ``/``.

    Why so strict: keys are generated ids (``dz/3f2a...``), never user file names, so a
    whitelist costs nothing and rules out path traversal, Unicode normalisation tricks,
    NUL bytes and case-folding surprises on every backend at once.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError("object key must be a non-empty str of at most 512 chars")
    for segment in key.split("/"):
        if (
            segment in ("", ".", "..")
            or len(segment) > _MAX_SEGMENT_LENGTH
            or not _SEGMENT_RE.fullmatch(segment)
        ):
            raise InvalidKeyError(f"invalid object key: {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Validate a listing prefix (a plain string prefix of keys, S3 style).

    ``""`` lists everything.  The prefix may end in a partial segment (``"dz/3f"``) or in
    ``/``, but must not contain ``.``/``..``/empty segments before its last segment.

    Raises ``InvalidKeyError``.
    """
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LENGTH:
        raise InvalidKeyError("prefix must be a str of at most 512 chars")
    if not _PREFIX_RE.fullmatch(prefix):
        raise InvalidKeyError(f"invalid prefix: {prefix!r}")
    directory = prefix.rpartition("/")[0]
    if prefix.startswith("/") or (directory and not _is_valid_key(directory)):
        raise InvalidKeyError(f"invalid prefix: {prefix!r}")
    return prefix


def _is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidKeyError:
        return False
    return True


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Return a plain-dict copy of ``metadata`` after checking it is portable.

    Names: ``[a-z0-9][a-z0-9-]{0,63}``; values: printable ASCII; total <= 2 KiB.
    Raises ``InvalidMetadataError``.  Remember: metadata is stored in clear text.
    """
    if metadata is None:
        return {}
    result: dict[str, str] = {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not _META_NAME_RE.fullmatch(name):
            raise InvalidMetadataError(f"invalid metadata name: {name!r}")
        if not isinstance(value, str) or not _META_VALUE_RE.fullmatch(value):
            raise InvalidMetadataError(f"metadata value for {name!r} must be printable ASCII")
        total += len(name) + len(value)
        result[name] = value
    if total > _MAX_METADATA_BYTES:
        raise InvalidMetadataError("metadata larger than 2 KiB")
    return result


class ObjectWriter(Protocol):
    """Push-based sink returned by :meth:`Storage.writer`."""

    def write(self, data: bytes, /) -> int:
        """Append ``data``; return ``len(data)``.  Raises ``StorageError``/``OSError``.

        Backends here also accept ``bytearray``/``memoryview``; the protocol only
        promises ``bytes`` so that any file-like sink satisfies it.
        """
        ...


class Storage(Protocol):
    """Contract every backend (local disk, memory, later S3) implements.

    All methods validate object keys first and raise ``InvalidKeyError`` for bad ones.
    """

    def writer(
        self, key: str, metadata: Mapping[str, str] | None = None
    ) -> AbstractContextManager[ObjectWriter]:
        """Stream a new object under ``key``.

        The object (data and metadata) becomes visible atomically when the ``with`` block
        exits normally, replacing any existing object with that key (overwrite is how
        idempotent retries avoid duplicates).  If the block raises, nothing becomes
        visible, the previous object (if any) is untouched and the partial data is
        removed.  Implementations must not buffer the whole object in memory (except the
        test-only memory backend).
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """Open a committed object for reading (seekable for local and memory backends).

        Raises ``ObjectNotFoundError``.  The caller closes the returned stream.
        """
        ...

    def head(self, key: str) -> ObjectInfo:
        """Return size and metadata of a committed object.  Raises ``ObjectNotFoundError``."""
        ...

    def exists(self, key: str) -> bool:
        """Return whether a committed object exists under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Delete the object (every version, where a backend keeps versions).

        Idempotent: deleting a missing object is not an error.
        """
        ...

    def duplicate(self, src_key: str, dst_key: str) -> bool:
        """Commit an exact copy of ``src_key`` under ``dst_key``, atomically (like
        :meth:`writer`), without the bytes passing through this process where the
        backend can avoid it: a hard link on local disk, a server-side copy on S3.

        Returns True when ``dst_key`` names the very same stored bytes as ``src_key``
        (a hard link: one inode), False when the bytes were copied.  Raises
        ``ObjectNotFoundError`` if ``src_key`` does not exist.  The caller verifies a
        copy (it is a copy step of copy → verify → delete); for shared bytes the
        verification of ``src_key`` holds for both.
        """
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield keys of committed objects starting with ``prefix`` (never partials).

        Order is unspecified.
        """
        ...

    def cleanup_partials(self, older_than_seconds: float) -> int:
        """Remove abandoned partial writes older than the given age; return how many.

        Crash leftovers are ciphertext, but still clutter and still count as copies of
        client data for retention purposes, so they are swept periodically.  A writer
        whose partial was swept fails on commit rather than committing garbage.
        """
        ...


def put_bytes(
    storage: Storage, key: str, data: bytes, metadata: Mapping[str, str] | None = None
) -> None:
    """Store ``data`` under ``key`` in one call (tests and small objects only)."""
    with storage.writer(key, metadata) as sink:
        sink.write(data)


def read_bytes(storage: Storage, key: str) -> bytes:
    """Return the whole object (tests and small objects only).  Raises ``ObjectNotFoundError``."""
    with storage.open(key) as stream:
        return stream.read()
