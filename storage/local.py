"""Local-disk storage backend with crash-safe atomic commits.

Layout under ``root`` (all directories 0o700, all files 0o600)::

    objects/<key>     committed data -- the *only* thing that defines existence
    meta/<key>        JSON metadata sidecar (parallel tree, so objects/ holds data only)
    partial/<random>  in-flight writes; never listed, swept by cleanup_partials()

Commit protocol: write ``partial/<r>.data``, ``fsync`` it; write ``partial/<r>.meta``,
``fsync``; ``os.replace`` the sidecar into ``meta/``, then ``os.replace`` the data into
``objects/``; ``fsync`` both directories.  ``os.replace`` is atomic on POSIX, so a crash at
any point leaves either the old object or the new one, never a torn one.

Caveat (documented, accepted): a crash *between* the two renames of an *overwrite* leaves
the old data next to the new metadata.  Metadata is advisory; the database is the
authoritative record of sizes, digests and wrapped keys, and the envelope authenticates
the data itself.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

from ._fsutil import (
    DIR_MODE,
    MISSING,
    READ_FLAGS,
    create_private,
    ensure_dir,
    fsync_dir,
    is_key,
    start_writeback,
    unlink_quietly,
    walk_files,
)
from .base import (
    BytesLike,
    ObjectInfo,
    ObjectWriter,
    validate_key,
    validate_metadata,
    validate_prefix,
)
from .errors import ObjectNotFoundError, StorageError

__all__ = ["LocalStorage"]

_log = logging.getLogger(__name__)


# Every this many bytes, the pages written so far start going to disk (see
# _fsutil.start_writeback), so that the fsync at commit waits for the last few
# MiB only instead of the whole file (100 MiB: 0.04 s -> 0.003 s here).
WRITEBACK_EVERY = 8 << 20


class _LocalObjectWriter:
    """The ``ObjectWriter`` handed out by :meth:`LocalStorage.writer` (streams to disk)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._written = 0
        self._started = 0  # start_writeback was asked from here on

    def write(self, data: BytesLike) -> int:
        self._stream.write(data)
        self._written += len(data)
        if self._written - self._started >= WRITEBACK_EVERY:
            # From the last start: what is still in the stream's buffer is not on
            # its way yet, and is covered by the next call or the fsync.
            start_writeback(self._stream.fileno(), self._started)
            self._started = self._written
        return len(data)


class LocalStorage:
    """Storage backend on a local (or network) POSIX file system.

    ``root`` is created (0o700) if missing.  Every path is derived from a validated key
    and then re-checked to resolve under ``root`` (defence in depth against a symlinked
    directory planted inside the tree).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        raw = Path(root)
        if not raw.exists():
            raw.mkdir(mode=DIR_MODE, parents=True)
            os.chmod(raw, DIR_MODE)  # mkdir's mode is filtered by the umask
        elif stat.S_IMODE(raw.stat().st_mode) & 0o077:
            _log.warning("storage root %s is accessible by group/others", raw)
        self._root = Path(os.path.realpath(raw))
        self._objects = self._root / "objects"
        self._meta = self._root / "meta"
        self._partial = self._root / "partial"
        for directory in (self._objects, self._meta, self._partial):
            ensure_dir(self._root, directory)

    # -- paths -------------------------------------------------------------------------

    def _path(self, base: Path, key: str) -> Path:
        path = base.joinpath(*validate_key(key).split("/"))
        real = os.path.realpath(path)
        if not real.startswith(str(base) + os.sep):
            raise StorageError(f"object path escapes the storage root: {key!r}")
        return path

    # -- writing -----------------------------------------------------------------------

    def writer(
        self, key: str, metadata: Mapping[str, str] | None = None
    ) -> AbstractContextManager[ObjectWriter]:
        """See :meth:`storage.base.Storage.writer`.  Streams straight to a partial file.

        Key and metadata are validated here, before the ``with`` block is entered.
        """
        data_path = self._path(self._objects, key)
        meta_path = self._path(self._meta, key)
        meta_blob = json.dumps(validate_metadata(metadata), sort_keys=True).encode()
        return self._transaction(key, meta_blob, data_path, meta_path)

    @contextmanager
    def _transaction(
        self, key: str, meta_blob: bytes, data_path: Path, meta_path: Path
    ) -> Iterator[ObjectWriter]:
        token = secrets.token_hex(16)
        data_partial = self._partial / f"{token}.data"
        meta_partial = self._partial / f"{token}.meta"
        # 64 KiB: small writes (headers) are gathered; an envelope segment (64 KiB +
        # tag) is bigger, so it goes straight through without a copy into the buffer.
        stream = os.fdopen(create_private(data_partial), "wb", buffering=1 << 16)
        try:
            yield _LocalObjectWriter(stream)
            stream.flush()
            os.fsync(stream.fileno())
            stream.close()
            self._commit_with_meta(key, meta_blob, data_partial, meta_partial, data_path,
                                   meta_path)
        except BaseException:
            # Nothing may become visible: drop both partials (the old object is untouched
            # because nothing was renamed over it yet, or the rename failed atomically).
            # Closing flushes the buffer, which fails again on a full disk: the
            # partials must be removed all the same (they are what fills it).
            try:
                stream.close()
            except OSError:
                pass
            for leftover in (data_partial, meta_partial):
                try:
                    leftover.unlink()
                except FileNotFoundError:
                    pass
            raise

    def _commit_with_meta(
        self, key: str, meta_blob: bytes, data_partial: Path, meta_partial: Path,
        data_path: Path, meta_path: Path,
    ) -> None:
        """Write and fsync the metadata partial, then commit both (the data partial is
        already complete and fsynced)."""
        fd = create_private(meta_partial)
        with os.fdopen(fd, "wb") as meta_stream:
            meta_stream.write(meta_blob)
            meta_stream.flush()
            os.fsync(meta_stream.fileno())
        self._commit(key, data_partial, meta_partial, data_path, meta_path)

    def _commit(
        self, key: str, data_partial: Path, meta_partial: Path, data_path: Path, meta_path: Path
    ) -> None:
        if not data_partial.exists():
            # cleanup_partials() judged this writer abandoned; committing now would publish
            # a file whose inode was unlinked -- i.e. lose the data silently.
            raise StorageError(f"partial write for {key!r} was swept before commit")
        try:
            ensure_dir(self._meta, meta_path.parent)
            ensure_dir(self._objects, data_path.parent)
            os.replace(meta_partial, meta_path)
            os.replace(data_partial, data_path)
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            # A key that is also a "directory" of another key (a vs a/b) cannot exist on a
            # file system.  Keys are generated ids, so this signals a programming error.
            raise StorageError(f"key {key!r} conflicts with an existing key prefix") from exc
        fsync_dir(meta_path.parent)
        fsync_dir(data_path.parent)

    def duplicate(self, src_key: str, dst_key: str) -> bool:
        """See :meth:`storage.base.Storage.duplicate`.

        A hard link of the committed (already fsynced) data file into ``partial/``,
        then the ordinary commit (metadata sidecar, two renames, directory fsyncs): no
        byte is copied, and a crash leaves at most a partial for the sweeper.  True
        when the committed ``dst_key`` is the same inode as ``src_key``.  Where the
        file system refuses links, the bytes are copied through :meth:`writer` (False).
        """
        src_path = self._path(self._objects, src_key)
        data_path = self._path(self._objects, dst_key)
        meta_path = self._path(self._meta, dst_key)
        if self._stat(src_key) is None:
            raise ObjectNotFoundError(f"no object {src_key!r}")
        meta_blob = json.dumps(self._read_meta(src_key), sort_keys=True).encode()
        token = secrets.token_hex(16)
        data_partial = self._partial / f"{token}.data"
        meta_partial = self._partial / f"{token}.meta"
        try:
            os.link(src_path, data_partial, follow_symlinks=False)
        except MISSING as exc:
            raise ObjectNotFoundError(f"no object {src_key!r}") from exc
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            self._copy(src_key, dst_key)
            return False
        try:
            self._commit_with_meta(dst_key, meta_blob, data_partial, meta_partial, data_path,
                                   meta_path)
        except BaseException:
            for leftover in (data_partial, meta_partial):
                unlink_quietly(leftover)
            raise
        # Checked, not assumed: what the key names now is that inode.
        a = os.stat(src_path, follow_symlinks=False)
        b = os.stat(data_path, follow_symlinks=False)
        return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)

    def _copy(self, src_key: str, dst_key: str) -> None:
        with self.open(src_key) as source, \
                self.writer(dst_key, self._read_meta(src_key)) as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)

    # -- reading -----------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        """See :meth:`storage.base.Storage.open`; returns a seekable buffered file."""
        path = self._path(self._objects, key)
        try:
            fd = os.open(path, READ_FLAGS)
        except (*MISSING, IsADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object {key!r}") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW hit a planted symlink
                raise StorageError(f"refusing to follow a symlink for {key!r}") from exc
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # e.g. the key names a "directory"
            os.close(fd)
            raise ObjectNotFoundError(f"no object {key!r}")
        return os.fdopen(fd, "rb")

    def head(self, key: str) -> ObjectInfo:
        """See :meth:`storage.base.Storage.head`."""
        st = self._stat(key)
        if st is None:
            raise ObjectNotFoundError(f"no object {key!r}")
        return ObjectInfo(key=key, size=st.st_size, metadata=self._read_meta(key))

    def exists(self, key: str) -> bool:
        """See :meth:`storage.base.Storage.exists`."""
        return self._stat(key) is not None

    def _stat(self, key: str) -> os.stat_result | None:
        try:
            st = os.stat(self._path(self._objects, key), follow_symlinks=False)
        except MISSING:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def _read_meta(self, key: str) -> dict[str, str]:
        try:
            fd = os.open(self._path(self._meta, key), READ_FLAGS)
        except MISSING:
            return {}
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageError(f"refusing to follow a symlink for {key!r}") from exc
            raise
        with os.fdopen(fd, "rb") as stream:
            blob = stream.read(1 << 16)
        try:
            meta = json.loads(blob)
            return validate_metadata(meta)
        except (ValueError, AttributeError) as exc:
            raise StorageError(f"corrupt metadata sidecar for {key!r}") from exc

    # -- listing and deleting ----------------------------------------------------------

    def delete(self, key: str) -> None:
        """See :meth:`storage.base.Storage.delete`.  Data first, so existence ends atomically."""
        for base in (self._objects, self._meta):
            path = self._path(base, key)
            try:
                path.unlink()
            except (*MISSING, IsADirectoryError):
                continue
            fsync_dir(path.parent)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """See :meth:`storage.base.Storage.keys`.  Partials live outside ``objects/``."""
        validate_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        start = self._objects.joinpath(*directory.split("/")) if directory else self._objects
        real = os.path.realpath(start)
        if real != str(self._objects) and not real.startswith(str(self._objects) + os.sep):
            raise StorageError("listing prefix escapes the storage root")
        for rel in walk_files(start, directory + "/" if directory else ""):
            if rel.startswith(prefix):
                yield rel

    def cleanup_partials(self, older_than_seconds: float) -> int:
        """See :meth:`storage.base.Storage.cleanup_partials`.

        Age is measured from the last modification, so a slow but live upload that keeps
        writing is not swept.  Also removes metadata sidecars whose data never arrived
        (crash between the two commit renames of a new key); those count too.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        with os.scandir(self._partial) as entries:
            for entry in entries:
                if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                    removed += unlink_quietly(Path(entry.path))
        for rel in list(walk_files(self._meta, "")):
            meta_path = self._meta.joinpath(*rel.split("/"))
            if not is_key(rel):
                continue  # not ours: leave it for a human to look at
            if self._stat(rel) is None and meta_path.lstat().st_mtime <= cutoff:
                removed += unlink_quietly(meta_path)
        return removed
