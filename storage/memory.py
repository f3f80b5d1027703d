"""In-process storage backend -- **for unit tests only**.

It keeps everything in a dict: nothing is persisted, and writers buffer whole objects in
memory (the one exception to the streaming rule of :class:`storage.base.Storage`).  It
exists so that tests exercise the same contract as the real backends without touching
the disk.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from .base import (
    BytesLike,
    ObjectInfo,
    ObjectWriter,
    validate_key,
    validate_metadata,
    validate_prefix,
)
from .errors import ObjectNotFoundError, StorageError

__all__ = ["MemoryStorage"]

_log = logging.getLogger(__name__)


@dataclass
class _Partial:
    data: bytearray = field(default_factory=bytearray)
    touched: float = field(default_factory=time.monotonic)


class _MemoryObjectWriter:
    """``ObjectWriter`` appending to a partial buffer (checked for liveness on write)."""

    def __init__(self, owner: MemoryStorage, token: str) -> None:
        self._owner = owner
        self._token = token

    def write(self, data: BytesLike) -> int:
        with self._owner._lock:
            partial = self._owner._partials.get(self._token)
            if partial is None:
                raise StorageError("partial write was swept by cleanup_partials")
            partial.data += data
            partial.touched = time.monotonic()
        return len(data)


class MemoryStorage:
    """Thread-safe dict-backed :class:`storage.base.Storage` (test-only).

    A single lock guards all state; that is plenty for tests and makes every operation
    trivially atomic, which mirrors the atomic-commit guarantee of the real backends.
    """

    def __init__(self) -> None:
        # Loud on purpose: if this ever runs in production, client files live unpersisted
        # in RAM of a single process -- a misconfiguration someone must notice.
        _log.warning("MemoryStorage is TEST-ONLY: objects are kept in process memory only")
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self._partials: dict[str, _Partial] = {}

    def writer(
        self, key: str, metadata: Mapping[str, str] | None = None
    ) -> AbstractContextManager[ObjectWriter]:
        """See :meth:`storage.base.Storage.writer`."""
        return self._transaction(validate_key(key), validate_metadata(metadata))

    @contextmanager
    def _transaction(self, key: str, metadata: dict[str, str]) -> Iterator[ObjectWriter]:
        token = secrets.token_hex(16)
        with self._lock:
            self._partials[token] = _Partial()
        try:
            yield _MemoryObjectWriter(self, token)
        except BaseException:
            with self._lock:
                self._partials.pop(token, None)
            raise
        with self._lock:
            partial = self._partials.pop(token, None)
            if partial is None:
                raise StorageError(f"partial write for {key!r} was swept before commit")
            self._objects[key] = (bytes(partial.data), metadata)

    def open(self, key: str) -> BinaryIO:
        """See :meth:`storage.base.Storage.open`; returns a seekable ``BytesIO``."""
        return io.BytesIO(self._get(key)[0])

    def head(self, key: str) -> ObjectInfo:
        """See :meth:`storage.base.Storage.head`."""
        data, metadata = self._get(key)
        return ObjectInfo(key=key, size=len(data), metadata=dict(metadata))

    def exists(self, key: str) -> bool:
        """See :meth:`storage.base.Storage.exists`."""
        validate_key(key)
        with self._lock:
            return key in self._objects

    def duplicate(self, src_key: str, dst_key: str) -> bool:
        """See :meth:`storage.base.Storage.duplicate`.  False: this backend is for
        tests, and the callers' read-back path is the one worth exercising."""
        data, metadata = self._get(src_key)
        validate_key(dst_key)
        with self._lock:
            self._objects[dst_key] = (data, dict(metadata))
        return False

    def delete(self, key: str) -> None:
        """See :meth:`storage.base.Storage.delete` (idempotent)."""
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """See :meth:`storage.base.Storage.keys`; sorted snapshot taken under the lock."""
        validate_prefix(prefix)
        with self._lock:
            snapshot = sorted(k for k in self._objects if k.startswith(prefix))
        return iter(snapshot)

    def cleanup_partials(self, older_than_seconds: float) -> int:
        """See :meth:`storage.base.Storage.cleanup_partials` (age = time since last write)."""
        cutoff = time.monotonic() - older_than_seconds
        with self._lock:
            stale = [t for t, p in self._partials.items() if p.touched <= cutoff]
            for token in stale:
                del self._partials[token]
        return len(stale)

    def _get(self, key: str) -> tuple[bytes, dict[str, str]]:
        validate_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise ObjectNotFoundError(f"no object {key!r}") from None
