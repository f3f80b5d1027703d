"""Envelope encryption of stored objects: STREAM online AE with AES-256-GCM segments.

Construction: STREAM (Hoang, Reyhanitabar, Rogaway, Vizar 2015) exactly as used by age and
Tink's streaming AEAD -- a fresh random 256-bit DEK per object, 64 KiB plaintext
segments, nonce = 11-byte counter || last-segment flag.  See ``docs/encryption.md`` and
:mod:`storage._format` for the byte layout.

Security invariants:

* every byte returned by a reader comes from a segment that authenticated under the
  expected object id, at its own position, with the correct last-segment flag;
* truncation, extension, reordering, duplication, bit flips, a wrong key or a wrong
  object id raise :class:`IntegrityError` -- at the latest when the end is reached;
* the DEK never leaves this module except as ``EnvelopeWriter.data_key`` (see there).

Caveat: a *sequential* reader releases each verified segment before it has seen the end,
so a truncated stream yields a correct prefix and then raises.  Consumers that need
all-or-nothing (e.g. decrypting to a download) must write to a temporary location and
commit only after reaching EOF without error.
"""

from __future__ import annotations

import hashlib
from types import TracebackType
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _format as fmt
from ._format import SEGMENT_SIZE, Header
from ._reader import EnvelopeReader, open_envelope
from .base import BytesLike, ObjectWriter
from .errors import IntegrityError, StorageError
from .keys import KeyUnwrapper, KeyWrapper

__all__ = [
    "SEGMENT_SIZE",
    "EnvelopeReader",
    "EnvelopeWriter",
    "Header",
    "open_envelope",
    "peek_header",
    "rewrap_header",
    "seal",
]


class EnvelopeWriter:
    """Encrypts a plaintext stream into ``sink`` (see :func:`seal`).

    Holds back one segment so that the last one can be flagged; memory use is bounded by
    one segment regardless of how large the writes are.
    """

    def __init__(
        self, sink: ObjectWriter, wrapper: KeyWrapper, object_id: str, *, embed_key: bool = True,
        hash_ciphertext: bool = True, hash_plaintext: bool = True,
    ) -> None:
        fmt.check_object_id(object_id)
        self._sink = sink
        self._dek = AESGCM.generate_key(bit_length=256)  # fresh per object: nonces are safe
        self._aead = AESGCM(self._dek)
        self._aad = fmt.stream_aad(object_id)
        self._wrapped = wrapper.wrap(self._dek, object_id)
        self._buf = bytearray()
        self._counter = 0
        self._pt_size = 0
        # A caller that already hashes the plaintext it hands over can skip this one.
        self._pt_hash = hashlib.sha256() if hash_plaintext else None
        self._ct_size = 0
        # Only callers that record the ciphertext digest pay for it (a second SHA-256).
        self._ct_hash = hashlib.sha256() if hash_ciphertext else None
        self._state = "open"  # -> "closed" | "aborted" | "failed"
        header = fmt.encode_header(
            object_id, wrapper.key_id, wrapper.scheme, self._wrapped if embed_key else None
        )
        self._emit_raw(header)

    def _emit_raw(self, blob: bytes) -> None:
        try:
            self._sink.write(blob)
        except BaseException:
            self._state = "failed"  # the sink holds a torn stream; never finish it
            raise
        self._ct_size += len(blob)
        if self._ct_hash is not None:
            self._ct_hash.update(blob)

    def _emit(self, plaintext: BytesLike, last: bool) -> None:
        # A fresh bytes object per segment: sinks may keep references to what they get.
        self._emit_raw(self._aead.encrypt(fmt.nonce(self._counter, last), plaintext, self._aad))
        self._counter += 1

    def write(self, data: BytesLike) -> int:
        """Encrypt ``data`` (any size); returns ``len(data)``.  ``ValueError`` if closed."""
        if self._state != "open":
            raise ValueError(f"write to a {self._state} EnvelopeWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        self._pt_size += size
        if self._pt_hash is not None:
            self._pt_hash.update(view)
        pos = 0
        buf = self._buf
        if buf:
            pos = min(SEGMENT_SIZE - len(buf), size)
            buf += view[:pos]
            if len(buf) == SEGMENT_SIZE and pos < size:  # more follows: not the last
                self._emit(buf, last=False)
                buf.clear()
        # Full segments straight from the caller's buffer (no copy), always keeping at
        # least one byte back so the final segment is known at close().
        while size - pos > SEGMENT_SIZE:
            self._emit(view[pos : pos + SEGMENT_SIZE], last=False)
            pos += SEGMENT_SIZE
        if pos < size:
            buf += view[pos:]
        return size

    def close(self) -> None:
        """Write the final segment (flag 1).  Idempotent; no-op after an abort."""
        if self._state == "failed":
            raise StorageError("cannot finish an envelope whose sink write failed")
        if self._state != "open":
            return
        self._emit(self._buf, last=True)
        self._buf = bytearray()
        self._state = "closed"

    def __enter__(self) -> EnvelopeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._state == "open":
            # No final segment: the stream stays unverifiable, so it can never be mistaken
            # for a complete object even if the storage layer committed it.
            self._state = "aborted"

    def _finished(self) -> None:
        if self._state != "closed":
            raise StorageError("EnvelopeWriter statistics are only available after close()")

    @property
    def plaintext_size(self) -> int:
        """Bytes of plaintext written (after close)."""
        self._finished()
        return self._pt_size

    @property
    def plaintext_sha256(self) -> str:
        """Hex SHA-256 of the plaintext (after close).

        ``ValueError`` if the writer was made with ``hash_plaintext=False``."""
        self._finished()
        if self._pt_hash is None:
            raise ValueError("this envelope was sealed without a plaintext digest")
        return self._pt_hash.hexdigest()

    @property
    def ciphertext_size(self) -> int:
        """Bytes written to the sink, header included (after close)."""
        self._finished()
        return self._ct_size

    @property
    def ciphertext_sha256(self) -> str:
        """Hex SHA-256 of every byte written to the sink, header included (after close).

        ``ValueError`` if the writer was made with ``hash_ciphertext=False``."""
        self._finished()
        if self._ct_hash is None:
            raise ValueError("this envelope was sealed without a ciphertext digest")
        return self._ct_hash.hexdigest()

    @property
    def wrapped_key(self) -> bytes:
        """The wrapped DEK (available at once, embedded or not): store it for detached use."""
        return self._wrapped

    @property
    def data_key(self) -> bytes:
        """The raw DEK.  SECRET: meant for one immediate read-back verification
        (``open_envelope(..., data_key=w.data_key)``); never log, persist or keep it --
        holding it defeats crypto-shredding."""
        return self._dek


def seal(
    sink: ObjectWriter, wrapper: KeyWrapper, object_id: str, *, embed_key: bool = True,
    hash_ciphertext: bool = True, hash_plaintext: bool = True,
) -> EnvelopeWriter:
    """Start an envelope for ``object_id`` in ``sink``; the header is written immediately.

    ``embed_key=False`` leaves the wrapped DEK out of the object (``"detached": true``);
    the caller must then store ``wrapped_key`` elsewhere -- destroying that copy shreds
    the object and all its backups.  ``hash_ciphertext=False`` skips the ciphertext
    digest (for objects whose caller never records it); ``hash_plaintext=False`` the
    plaintext digest (for callers that hash the very bytes they write themselves).
    Raises ``InvalidKeyError`` for a bad object id.
    """
    return EnvelopeWriter(sink, wrapper, object_id, embed_key=embed_key,
                          hash_ciphertext=hash_ciphertext, hash_plaintext=hash_plaintext)


def peek_header(source: BinaryIO) -> Header:
    """Parse the header at the current position (restored if seekable).  Tooling only:
    nothing in the header is trusted until the payload authenticates."""
    start = source.tell() if source.seekable() else None
    try:
        return fmt.parse_header(source)
    finally:
        if start is not None:
            source.seek(start)


def rewrap_header(
    header: Header,
    unwrapper: KeyUnwrapper,
    wrapper: KeyWrapper,
    *,
    wrapped_key: bytes | None = None,
    embed_key: bool = True,
) -> tuple[bytes, bytes]:
    """Key rotation without re-encryption: return ``(new_header_bytes, new_wrapped_key)``.

    The new object is ``new_header_bytes`` + the old bytes from ``header.size`` on; the
    payload is untouched because segment AAD excludes the wrapping.  ``wrapped_key`` must
    be given for detached envelopes.  Raises ``IntegrityError`` if unwrapping fails.
    """
    old = wrapped_key if wrapped_key is not None else header.wrapped_key
    if old is None:
        raise IntegrityError("detached envelope: the wrapped key is required")
    dek = unwrapper.unwrap(old, header.object_id)
    new = wrapper.wrap(dek, header.object_id)
    blob = fmt.encode_header(
        header.object_id, wrapper.key_id, wrapper.scheme, new if embed_key else None
    )
    return blob, new
