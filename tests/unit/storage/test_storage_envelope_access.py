"""Envelope readers/writers as streams: random access, zipfile, writer behaviour, rotation."""

from __future__ import annotations

import io
import os
import random
import zipfile
from pathlib import Path

import pytest
from _envelope_helpers import CSEG, SEG, NonSeekable, Sink, header_size, read_all, seal_bytes

from storage import (
    IntegrityError,
    LocalStorage,
    MemoryStorage,
    Storage,
    StorageError,
    SymmetricKey,
    VaultPrivateKey,
    open_envelope,
    peek_header,
    rewrap_header,
    seal,
)


@pytest.fixture(scope="module")
def sym() -> SymmetricKey:
    return SymmetricKey.generate()


def test_random_access_matches_plaintext(sym: SymmetricKey) -> None:
    plaintext = os.urandom(5 * SEG + 321)
    blob, _ = seal_bytes(plaintext, sym)
    rng = random.Random(1234)
    size = len(plaintext)
    offsets = [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG - 3, 5 * SEG, size - 1, size, size + 50]
    offsets += [rng.randrange(size) for _ in range(200)]
    with open_envelope(io.BytesIO(blob), "obj-1", unwrapper=sym) as reader:
        assert reader.seekable() and reader.plaintext_size == size
        for offset in offsets:
            length = rng.choice([0, 1, 7, SEG, SEG + 2, 3 * SEG])
            assert reader.seek(offset) == offset
            assert reader.read(length) == plaintext[offset : offset + length]
            assert reader.tell() == min(offset + length, max(size, offset))
        reader.seek(-10, io.SEEK_END)
        assert reader.read() == plaintext[-10:]
        reader.seek(SEG - 2)
        reader.seek(4, io.SEEK_CUR)
        buffer = bytearray(SEG + 10)
        assert reader.readinto(buffer) == len(buffer)
        assert bytes(buffer) == plaintext[SEG + 2 : 2 * SEG + 12]
        with pytest.raises(ValueError):
            reader.seek(-1)


def test_iter_chunks(sym: SymmetricKey) -> None:
    plaintext = os.urandom(3 * SEG + 5)
    blob, _ = seal_bytes(plaintext, sym)
    with open_envelope(NonSeekable(blob), "obj-1", unwrapper=sym) as reader:  # type: ignore[arg-type]
        assert reader.plaintext_size is None  # unknown until the end is verified
        chunks = list(reader.iter_chunks(100_000))
        assert reader.plaintext_size == len(plaintext)
    assert [len(c) for c in chunks] == [100_000, len(plaintext) - 100_000]
    assert b"".join(chunks) == plaintext


def test_non_seekable_reader_refuses_seek(sym: SymmetricKey) -> None:
    blob, _ = seal_bytes(b"abc", sym)
    with open_envelope(NonSeekable(blob), "obj-1", unwrapper=sym) as reader:  # type: ignore[arg-type]
        assert not reader.seekable()
        with pytest.raises(io.UnsupportedOperation):
            reader.seek(0)


def test_truncation_detected_on_random_access_to_last_segment(sym: SymmetricKey) -> None:
    plaintext = os.urandom(4 * SEG)
    blob, _ = seal_bytes(plaintext, sym)
    truncated = blob[: header_size(blob) + 3 * CSEG]  # exact segment boundary
    with pytest.raises(IntegrityError):
        reader = open_envelope(io.BytesIO(truncated), "obj-1", unwrapper=sym)
        reader.seek(3 * SEG - 10)  # inside the apparent last segment
        reader.read(10)


def test_reader_closes_source_and_refuses_reads_after_close(sym: SymmetricKey) -> None:
    blob, _ = seal_bytes(b"abc", sym)
    source = io.BytesIO(blob)
    reader = open_envelope(source, "obj-1", unwrapper=sym)
    reader.close()
    assert source.closed
    with pytest.raises(ValueError):
        reader.read(1)


def test_buffered_wrapper_works(sym: SymmetricKey) -> None:
    plaintext = os.urandom(2 * SEG + 3)
    blob, _ = seal_bytes(plaintext, sym)
    reader = open_envelope(io.BytesIO(blob), "obj-1", unwrapper=sym)
    with io.BufferedReader(reader) as buffered:
        assert buffered.read(10) == plaintext[:10]
        buffered.seek(SEG - 1)
        assert buffered.read() == plaintext[SEG - 1 :]


def _zip_bytes() -> tuple[bytes, dict[str, bytes]]:
    members = {
        "[Content_Types].xml": b"<Types/>" * 10,
        "xl/worksheets/sheet1.xml": os.urandom(200_000),
        "xl/sharedStrings.xml": b"<sst>" + b"x" * 300_000 + b"</sst>",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue(), members


@pytest.mark.parametrize("backend", ["local", "memory"])
def test_zipfile_reads_encrypted_zip_from_storage(
    backend: str, tmp_path: Path, sym: SymmetricKey
) -> None:
    store: Storage = LocalStorage(tmp_path) if backend == "local" else MemoryStorage()
    archive, members = _zip_bytes()
    with store.writer("dz/xlsx") as sink, seal(sink, sym, "dz/xlsx") as envelope:
        envelope.write(archive)
    with zipfile.ZipFile(open_envelope(store.open("dz/xlsx"), "dz/xlsx", unwrapper=sym)) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(members)
        for name, data in members.items():
            assert zf.read(name) == data


def test_writer_holds_back_at_most_one_segment(sym: SymmetricKey) -> None:
    sink = Sink()
    writer = seal(sink, sym, "obj-1")
    assert len(sink.writes) == 1  # header written at once
    writer.write(os.urandom(5 * SEG))  # one big write
    assert [len(w) for w in sink.writes[1:]] == [CSEG] * 4  # fifth held back: may be last
    writer.write(b"z")
    assert len(sink.writes) == 6
    writer.close()
    assert [len(w) for w in sink.writes[6:]] == [17]
    writer.close()  # idempotent
    assert len(sink.writes) == 7
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_stats_only_after_close(sym: SymmetricKey) -> None:
    writer = seal(Sink(), sym, "obj-1")
    assert len(writer.wrapped_key) == 60 and len(writer.data_key) == 32
    with pytest.raises(StorageError):
        _ = writer.plaintext_sha256


def test_exception_in_writer_block_leaves_unverifiable_stream(sym: SymmetricKey) -> None:
    sink = Sink()
    with pytest.raises(RuntimeError), seal(sink, sym, "obj-1") as writer:
        writer.write(os.urandom(SEG + 10))
        raise RuntimeError("client disconnected")
    with pytest.raises(IntegrityError):
        read_all(sink.value, unwrapper=sym)


def test_exception_inside_nested_blocks_commits_nothing(sym: SymmetricKey) -> None:
    store = MemoryStorage()
    with pytest.raises(RuntimeError):
        with store.writer("k") as sink, seal(sink, sym, "k") as envelope:
            envelope.write(b"partial")
            raise RuntimeError("scanner rejected the file")
    assert not store.exists("k")


def test_failing_sink_poisons_writer(sym: SymmetricKey) -> None:
    class Failing(Sink):
        def write(self, data: bytes) -> int:
            if len(self.writes) >= 2:
                raise OSError("disk full")
            return super().write(data)

    writer = seal(Failing(), sym, "obj-1")
    with pytest.raises(OSError):
        writer.write(os.urandom(3 * SEG))
    with pytest.raises(ValueError):
        writer.write(b"x")
    with pytest.raises(StorageError):
        writer.close()


def test_rewrap_header_rotates_without_touching_payload(sym: SymmetricKey) -> None:
    vault = VaultPrivateKey.generate()
    plaintext = os.urandom(2 * SEG + 1)
    blob, _ = seal_bytes(plaintext, sym)
    header = peek_header(io.BytesIO(blob))
    new_header, new_wrapped = rewrap_header(header, sym, vault.public_key())
    rotated = new_header + blob[header.size :]
    assert rotated[header.size - len(blob) :] == blob[header.size :]
    assert read_all(rotated, unwrapper=vault) == plaintext
    with pytest.raises(IntegrityError):
        read_all(rotated, unwrapper=sym)
    # Detached variant: only the database copy of the wrapped key changes.
    detached_header, db_copy = rewrap_header(header, sym, vault.public_key(), embed_key=False)
    detached = detached_header + blob[header.size :]
    assert read_all(detached, unwrapper=vault, wrapped_key=db_copy) == plaintext
    with pytest.raises(IntegrityError):
        rewrap_header(peek_header(io.BytesIO(detached)), vault, sym)  # no wrapped key given
