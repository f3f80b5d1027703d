"""Shared helpers for the envelope tests (not a test module)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from storage import EnvelopeWriter, IntegrityError, open_envelope, seal
from storage.keys import KeyWrapper

SEG = 65536
CSEG = SEG + 16


class NonSeekable(io.RawIOBase):
    """A pipe-like source: no seek, and deliberately short reads."""

    def __init__(self, data: bytes, max_read: int = 9999) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self._max = max_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), self._max))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class Sink:
    """ObjectWriter-like sink that records every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    @property
    def value(self) -> bytes:
        return b"".join(self.writes)


def seal_bytes(
    plaintext: bytes,
    wrapper: KeyWrapper,
    object_id: str = "obj-1",
    *,
    embed_key: bool = True,
    piece: int = 100_003,
) -> tuple[bytes, EnvelopeWriter]:
    sink = Sink()
    with seal(sink, wrapper, object_id, embed_key=embed_key) as writer:
        for pos in range(0, len(plaintext), piece):
            writer.write(plaintext[pos : pos + piece])
    return sink.value, writer


def header_size(blob: bytes | bytearray) -> int:
    return 13 + int.from_bytes(blob[9:13], "big")


def read_all(blob: bytes, object_id: str = "obj-1", *, seekable: bool = True, **kw: Any) -> bytes:
    source = io.BytesIO(blob) if seekable else NonSeekable(blob)
    with open_envelope(source, object_id, **kw) as reader:  # type: ignore[arg-type]
        return reader.read()


def assert_rejected(blob: bytes, object_id: str = "obj-1", **kw: Any) -> None:
    """Both the random-access and the streaming path must raise IntegrityError."""
    for seekable in (True, False):
        with pytest.raises(IntegrityError):
            read_all(blob, object_id, seekable=seekable, **kw)
