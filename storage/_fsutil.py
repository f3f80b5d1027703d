"""File-system helpers for :mod:`storage.local` (private modes, fsync, safe walking)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import validate_key
from .errors import InvalidKeyError

DIR_MODE = 0o700
FILE_MODE = 0o600
# O_NOFOLLOW: our tree never contains symlinks, so one appearing there is an attack (an
# attempt to redirect a write or read outside root) and must fail rather than be followed.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
MISSING = (FileNotFoundError, NotADirectoryError)


def is_key(name: str) -> bool:
    try:
        validate_key(name)
    except InvalidKeyError:
        return False
    return True


def walk_files(directory: Path, rel_prefix: str) -> Iterator[str]:
    """Yield ``rel_prefix + relative path`` of regular files below ``directory``."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except MISSING:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from walk_files(Path(entry.path), f"{rel_prefix}{entry.name}/")
        elif entry.is_file(follow_symlinks=False):  # symlinks are never ours: skip them
            yield rel_prefix + entry.name


def ensure_dir(base: Path, directory: Path) -> None:
    """Create ``directory`` and missing parents below ``base`` with mode 0o700."""
    missing: list[Path] = []
    current = directory
    while current != base and not current.is_dir():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            continue  # a concurrent writer created it (or it is a file: caught later)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask


def create_private(path: Path) -> int:
    """Create a new file with mode 0o600 from the first instant (O_EXCL, no symlinks)."""
    fd = os.open(path, CREATE_FLAGS, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # independent of the umask
    return fd


# SYNC_FILE_RANGE_WRITE: start writing dirty pages out, without waiting for them.
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None


def start_writeback(fd: int, offset: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages from ``offset`` to the end
    (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``), without waiting for them.

    Durability still comes from the ``fsync`` at commit, which also still reports any
    write error (this call waits for nothing and consumes no error); it only finds less
    left to write.  A no-op where the call does not exist."""
    global _sync_file_range
    if _sync_file_range is None:
        import ctypes  # on first use

        func: Any = False
        try:
            func = ctypes.CDLL(None, use_errno=True).sync_file_range
            func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            func.restype = ctypes.c_int
        except (OSError, AttributeError):  # not Linux/glibc
            func = False
        _sync_file_range = func
    if _sync_file_range:
        _sync_file_range(fd, offset, 0, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(directory: Path) -> None:
    """Make a rename/unlink in ``directory`` durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; nothing more we can do
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1
