"""Helpers for key handling: unambiguous encodings, HKDF, and safe key-file I/O."""

from __future__ import annotations

import logging
import os
import stat

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import KeyMaterialError

_log = logging.getLogger(__name__)
_MAX_KEY_FILE = 1 << 16


def length_prefixed(*parts: bytes) -> bytes:
    """Unambiguous concatenation: each part prefixed with its 4-byte big-endian length.

    Used for every AAD/info string so that two different tuples can never encode to the
    same bytes (``("ab", "c")`` vs ``("a", "bc")``).
    """
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869); distinct ``info`` labels give independent keys."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def read_key_file(path: str | os.PathLike[str], *, private: bool) -> bytes:
    """Read a key file (at most 64 KiB); warn if a private key file is group/other-readable."""
    # Symlinks are followed on purpose: secret mounts (Kubernetes, systemd credentials)
    # are symlinks.  Loose permissions are reported rather than refused for the same
    # reason, but they are a finding an operator must see.
    with open(path, "rb") as stream:
        mode = stat.S_IMODE(os.fstat(stream.fileno()).st_mode)
        blob = stream.read(_MAX_KEY_FILE + 1)
    if len(blob) > _MAX_KEY_FILE:
        raise KeyMaterialError("key file too large")
    if private and mode & 0o077:
        _log.warning("private key file %s is accessible by group/others (mode %o)", path, mode)
    return blob


def write_new_file(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` from the first instant, write, fsync."""
    # O_EXCL: never clobber an existing key; O_NOFOLLOW: never write through a planted
    # symlink; the mode is set at creation so the file is never readable by others, even
    # for a moment, and then fchmod'ed so the umask cannot weaken or strengthen it.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode & 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
