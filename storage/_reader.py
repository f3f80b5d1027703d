"""Decrypting reader for kinko envelopes (public names re-exported by storage.envelope)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _format as fmt
from ._format import CIPHER_SEGMENT_SIZE, SEGMENT_SIZE, TAG_SIZE, Header
from .base import BytesLike
from .errors import IntegrityError, KeyMaterialError
from .keys import DEK_SIZE, KeyUnwrapper

__all__ = ["EnvelopeReader", "open_envelope"]


def _is_seekable(source: BinaryIO) -> bool:
    try:
        return bool(source.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class EnvelopeReader(io.RawIOBase):
    """Read-only plaintext view of an envelope; create it with :func:`open_envelope`.

    *Seekable sources*: random access.  The segment count and the position of the final
    segment follow from the ciphertext length; the final segment is authenticated (with
    the last-segment flag) when the reader is opened, so truncation or extension -- even
    at a segment boundary -- is detected before any byte is returned, and
    ``plaintext_size`` is trustworthy.  Each other segment is authenticated when read.

    *Non-seekable sources*: sequential only, one segment of read-ahead to learn which
    segment is last.  ``plaintext_size`` is ``None`` until the end has been verified.
    Verified segments are released before the end is seen (see the module caveat).

    ``read(n)`` returns exactly ``n`` bytes unless EOF is reached (``zipfile`` relies on
    it).  Closing the reader closes the source.
    """

    def __init__(self, source: BinaryIO, header: Header, dek: bytes, object_id: str) -> None:
        self._owns_source = False  # until fully constructed: a failed open leaves it to caller
        super().__init__()
        self._src = source
        self._header = header
        self._aead = AESGCM(dek)
        self._aad = fmt.stream_aad(object_id)
        self._pos = 0
        self._cache_idx = -1
        self._cache = b""
        self._pending: bytes | None = None
        self._last_idx: int | None = None
        self._size: int | None = None
        self._seekable = _is_seekable(source)
        if self._seekable:
            self._start = source.tell()
            count, last_plain = fmt.layout(source.seek(0, io.SEEK_END) - self._start)
            self._last_idx = count - 1
            self._last_ct = last_plain + TAG_SIZE
            self._size = (count - 1) * SEGMENT_SIZE + last_plain
            self._load(count - 1)
        self._owns_source = True

    # -- segment access ----------------------------------------------------------------

    def _decrypt(self, idx: int, last: bool, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(fmt.nonce(idx, last), ciphertext, self._aad)
        except InvalidTag:
            # Wrong key, wrong object id, flipped bit, moved/duplicated segment or wrong
            # last flag (truncation/extension): indistinguishable by design.
            raise IntegrityError(f"envelope segment {idx} failed authentication") from None

    def _load(self, idx: int) -> None:
        """Seekable case: fetch and authenticate segment ``idx`` into the cache."""
        last = idx == self._last_idx
        length = self._last_ct if last else CIPHER_SEGMENT_SIZE
        self._src.seek(self._start + idx * CIPHER_SEGMENT_SIZE)
        ciphertext = fmt.read_exact(self._src, length)
        if len(ciphertext) != length:
            raise IntegrityError("envelope shrank while being read")
        self._cache = self._decrypt(idx, last, ciphertext)
        self._cache_idx = idx

    def _load_next(self) -> None:
        """Non-seekable case: authenticate the next segment, reading one ahead."""
        idx = self._cache_idx + 1
        ciphertext = self._pending
        if ciphertext is None:
            ciphertext = fmt.read_exact(self._src, CIPHER_SEGMENT_SIZE)
        self._pending = None
        last = True
        if len(ciphertext) == CIPHER_SEGMENT_SIZE:
            ahead = fmt.read_exact(self._src, CIPHER_SEGMENT_SIZE)
            if ahead:
                self._pending, last = ahead, False
        if len(ciphertext) < TAG_SIZE or (len(ciphertext) == TAG_SIZE and idx > 0):
            raise IntegrityError("envelope payload truncated")
        self._cache = self._decrypt(idx, last, ciphertext)
        self._cache_idx = idx
        if last:
            self._last_idx = idx
            self._size = idx * SEGMENT_SIZE + len(self._cache)

    def _segment(self) -> bytes | None:
        """Plaintext of the segment containing the position, or ``None`` at verified EOF."""
        idx = self._pos // SEGMENT_SIZE
        if self._seekable:
            assert self._size is not None
            if self._pos >= self._size:
                return None  # the final segment was authenticated in __init__
            if idx != self._cache_idx:
                self._load(idx)
            return self._cache
        while True:
            if idx == self._cache_idx and self._pos - idx * SEGMENT_SIZE < len(self._cache):
                return self._cache
            if self._size is not None and self._cache_idx == self._last_idx:
                return None
            self._load_next()

    # -- io.RawIOBase ------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the plaintext position (seekable sources only); beyond EOF reads ``b""``."""
        self._check_open()
        if not self._seekable:
            raise io.UnsupportedOperation("envelope source is not seekable")
        assert self._size is not None
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        if whence not in bases:
            raise ValueError(f"invalid whence: {whence}")
        position = bases[whence] + offset
        if position < 0:
            raise ValueError("negative seek position")
        self._pos = position
        return position

    def readinto(self, buffer: BytesLike) -> int:  # type: ignore[override]
        """Fill as much of ``buffer`` as possible (short only at EOF)."""
        self._check_open()
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out):
            segment = self._segment()
            if segment is None:
                break
            offset = self._pos - self._cache_idx * SEGMENT_SIZE
            count = min(len(segment) - offset, len(out) - done)
            out[done : done + count] = memoryview(segment)[offset : offset + count]
            done += count
            self._pos += count
        return done

    def read(self, size: int | None = -1) -> bytes:
        """Return ``size`` bytes (fewer only at EOF); all remaining bytes if negative."""
        self._check_open()
        if size is None or size < 0:
            return self.readall()
        parts: list[BytesLike] = []
        while size > 0:
            segment = self._segment()
            if segment is None:
                break
            offset = self._pos - self._cache_idx * SEGMENT_SIZE
            count = min(len(segment) - offset, size)
            if offset == 0 and count == len(segment):
                parts.append(segment)
            else:
                parts.append(memoryview(segment)[offset : offset + count])
            size -= count
            self._pos += count
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def readall(self) -> bytes:
        """Read to the (verified) end."""
        chunks = list(self.iter_chunks(1 << 22))
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def iter_chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """Yield the remaining plaintext in chunks of ``size`` bytes (last may be short)."""
        while chunk := self.read(size):
            yield chunk

    def close(self) -> None:
        """Close the reader and its source; drops the DEK reference."""
        if not self.closed:
            try:
                if self._owns_source:
                    self._src.close()
            finally:
                self._cache = b""
                self._pending = None
                super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed EnvelopeReader")

    # -- envelope specifics --------------------------------------------------------------

    @property
    def plaintext_size(self) -> int | None:
        """Plaintext length; known at open for seekable sources, else after the end."""
        return self._size

    @property
    def header(self) -> Header:
        """The parsed header (its object id matched; the rest is informational)."""
        return self._header


def open_envelope(
    source: BinaryIO,
    object_id: str,
    *,
    unwrapper: KeyUnwrapper | None = None,
    wrapped_key: bytes | None = None,
    data_key: bytes | None = None,
) -> EnvelopeReader:
    """Open an envelope for reading, positioned at the start of ``source``'s header.

    Exactly one way to get the DEK: ``data_key`` alone, or ``unwrapper`` with the wrapped
    key from the header (embedded) or from ``wrapped_key`` (detached; when given it is
    authoritative and the header's ``kid``/``wrap`` are not compared -- a database-only
    re-wrap legitimately leaves them stale; the unwrap AAD still binds the key id).

    Raises ``ValueError`` for an invalid combination of arguments, ``IntegrityError`` for
    a bad header, another object's envelope (oid mismatch), another key (kid/scheme
    mismatch or failed unwrap) and -- for seekable sources -- a wrong DEK or a truncated
    or extended payload.  On failure the caller still owns (and must close) ``source``.
    """
    fmt.check_object_id(object_id)
    if data_key is not None:
        if unwrapper is not None or wrapped_key is not None:
            raise ValueError("pass data_key alone, or unwrapper (+ wrapped_key)")
        if not isinstance(data_key, bytes) or len(data_key) != DEK_SIZE:
            raise KeyMaterialError("a data key must be 32 bytes")
    elif unwrapper is None:
        raise ValueError("open_envelope needs an unwrapper or a data_key")
    header = fmt.parse_header(source)
    if header.object_id != object_id:
        raise IntegrityError("envelope belongs to a different object")
    if data_key is None:
        assert unwrapper is not None
        if wrapped_key is None:
            if header.wrapped_key is None:
                raise IntegrityError("detached envelope: the wrapped key must be supplied")
            select = getattr(unwrapper, "unwrapper_for", None)
            if select is not None:  # a key ring (rotation): the header names the key
                unwrapper = select(header.key_id, header.wrap)
            elif header.key_id != unwrapper.key_id or header.wrap != unwrapper.scheme:
                raise IntegrityError("envelope was wrapped for a different key")
            wrapped_key = header.wrapped_key
        data_key = unwrapper.unwrap(wrapped_key, object_id)
    return EnvelopeReader(source, header, data_key, object_id)
