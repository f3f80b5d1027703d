"""Envelope format: round trips, spec conformance and every tampering case."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from typing import Any

import pytest
from _envelope_helpers import (
    CSEG,
    SEG,
    Sink,
    assert_rejected,
    header_size,
    read_all,
    seal_bytes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage import (
    IntegrityError,
    SymmetricKey,
    VaultPrivateKey,
    open_envelope,
    peek_header,
    seal,
)
from storage._format import stream_aad

SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG]


@pytest.fixture(scope="module")
def sym() -> SymmetricKey:
    return SymmetricKey.generate()


@pytest.fixture(scope="module")
def vault() -> VaultPrivateKey:
    return VaultPrivateKey.generate()


@pytest.fixture(scope="module")
def multi(sym: SymmetricKey) -> tuple[bytes, bytes]:
    """(plaintext, envelope) with 4 segments, the last one short."""
    plaintext = os.urandom(3 * SEG + 1000)
    return plaintext, seal_bytes(plaintext, sym)[0]


def _opts(kind: str, sym: SymmetricKey, vault: VaultPrivateKey) -> tuple[object, object]:
    return (sym, sym) if kind == "sym" else (vault.public_key(), vault)


@pytest.mark.parametrize("embed", [True, False], ids=["embedded", "detached"])
@pytest.mark.parametrize("kind", ["sym", "vault"])
@pytest.mark.parametrize("size", [*SIZES, 5 * 1024 * 1024 + 123])
def test_round_trip(
    size: int, kind: str, embed: bool, sym: SymmetricKey, vault: VaultPrivateKey
) -> None:
    wrapper, unwrapper = _opts(kind, sym, vault)
    plaintext = os.urandom(size)
    blob, writer = seal_bytes(plaintext, wrapper, embed_key=embed)  # type: ignore[arg-type]
    detached: dict[str, Any] = {} if embed else {"wrapped_key": writer.wrapped_key}
    for seekable in (True, False):
        got = read_all(blob, seekable=seekable, unwrapper=unwrapper, **detached)
        assert got == plaintext
    assert read_all(blob, data_key=writer.data_key) == plaintext
    segments = max(1, -(-size // SEG))
    assert len(blob) == header_size(blob) + size + 16 * segments
    assert writer.plaintext_size == size
    assert writer.plaintext_sha256 == hashlib.sha256(plaintext).hexdigest()
    assert writer.ciphertext_size == len(blob)
    assert writer.ciphertext_sha256 == hashlib.sha256(blob).hexdigest()
    assert (b'"wk"' in blob[: header_size(blob)]) is embed


def test_digests_can_be_left_to_the_caller(sym: SymmetricKey) -> None:
    # The same bytes whichever digest is skipped; the skipped one is refused, not faked.
    plaintext = os.urandom(SEG * 2 + 7)
    sink = Sink()
    with seal(sink, sym, "obj-1", hash_plaintext=False, hash_ciphertext=False) as writer:
        writer.write(plaintext)
    assert read_all(sink.value, data_key=writer.data_key) == plaintext
    assert writer.plaintext_size == len(plaintext)
    assert writer.ciphertext_size == len(sink.value)
    with pytest.raises(ValueError, match="plaintext digest"):
        _ = writer.plaintext_sha256
    with pytest.raises(ValueError, match="ciphertext digest"):
        _ = writer.ciphertext_sha256


def test_header_layout_and_stream_construction(sym: SymmetricKey) -> None:
    plaintext = os.urandom(SEG + 5)
    blob, writer = seal_bytes(plaintext, sym, "dz/3f2a")
    assert blob[:9] == b"KINKOENC\x01"
    size = header_size(blob)
    body = blob[13:size]
    fields = json.loads(body)
    assert body == json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert fields["v"] == 1 and fields["alg"] == "AES-256-GCM-STREAM-64K"
    assert (fields["oid"], fields["kid"], fields["wrap"]) == ("dz/3f2a", sym.key_id, sym.scheme)
    assert base64.b64decode(fields["wk"]) == writer.wrapped_key
    # Independent decryption following the documented construction (age-style nonces).
    aead, aad = AESGCM(writer.data_key), stream_aad("dz/3f2a")
    seg0 = aead.decrypt(bytes(11) + b"\x00", blob[size : size + CSEG], aad)
    seg1 = aead.decrypt((1).to_bytes(11, "big") + b"\x01", blob[size + CSEG :], aad)
    assert seg0 + seg1 == plaintext


def test_peek_header(sym: SymmetricKey) -> None:
    blob, writer = seal_bytes(b"abc", sym, "o-9", embed_key=False)
    source = io.BytesIO(blob)
    header = peek_header(source)
    assert source.tell() == 0
    assert header.detached and header.wrapped_key is None
    assert (header.object_id, header.key_id, header.size) == ("o-9", sym.key_id, header_size(blob))


def test_every_header_byte_flip_is_detected(sym: SymmetricKey) -> None:
    blob, _ = seal_bytes(os.urandom(2 * SEG + 7), sym)
    for pos in range(header_size(blob)):
        for bit in (0x01, 0x20, 0x80):
            tampered = bytearray(blob)
            tampered[pos] ^= bit
            with pytest.raises(IntegrityError):
                read_all(bytes(tampered), unwrapper=sym)


def test_flip_in_middle_segment(multi: tuple[bytes, bytes], sym: SymmetricKey) -> None:
    blob = bytearray(multi[1])
    blob[header_size(blob) + CSEG + 1234] ^= 0x01
    assert_rejected(bytes(blob), unwrapper=sym)


def test_flip_in_last_tag(multi: tuple[bytes, bytes], sym: SymmetricKey) -> None:
    blob = bytearray(multi[1])
    blob[-1] ^= 0x80
    assert_rejected(bytes(blob), unwrapper=sym)


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 1016, 1017])
def test_truncated_last_segment(multi: tuple[bytes, bytes], sym: SymmetricKey, cut: int) -> None:
    assert_rejected(multi[1][:-cut], unwrapper=sym)


@pytest.mark.parametrize("kept_segments", [0, 1, 3])
def test_truncated_at_segment_boundary(
    multi: tuple[bytes, bytes], sym: SymmetricKey, kept_segments: int
) -> None:
    blob = multi[1]
    assert_rejected(blob[: header_size(blob) + kept_segments * CSEG], unwrapper=sym)


def test_truncated_full_final_segment_object(sym: SymmetricKey) -> None:
    blob, _ = seal_bytes(os.urandom(3 * SEG), sym)  # the last segment is full-size
    assert_rejected(blob[: header_size(blob) + 2 * CSEG], unwrapper=sym)


def test_truncated_header(sym: SymmetricKey) -> None:
    blob, _ = seal_bytes(b"hello", sym)
    for end in (0, 5, 12, header_size(blob) - 1, header_size(blob)):
        assert_rejected(blob[:end], unwrapper=sym)


@pytest.mark.parametrize("extra", [b"\x00", b"x" * 16, b"y" * CSEG])
def test_trailing_data(multi: tuple[bytes, bytes], sym: SymmetricKey, extra: bytes) -> None:
    assert_rejected(multi[1] + extra, unwrapper=sym)


def test_trailing_data_after_full_final_segment(sym: SymmetricKey) -> None:
    blob, _ = seal_bytes(os.urandom(2 * SEG), sym)
    assert_rejected(blob + b"\x00", unwrapper=sym)
    assert_rejected(blob + bytes(16), unwrapper=sym)


def _segments(blob: bytes) -> tuple[bytes, list[bytes]]:
    size = header_size(blob)
    payload = blob[size:]
    return blob[:size], [payload[i : i + CSEG] for i in range(0, len(payload), CSEG)]


def test_swapped_segments(multi: tuple[bytes, bytes], sym: SymmetricKey) -> None:
    head, segs = _segments(multi[1])
    assert_rejected(head + segs[1] + segs[0] + b"".join(segs[2:]), unwrapper=sym)


def test_duplicated_segment(multi: tuple[bytes, bytes], sym: SymmetricKey) -> None:
    head, segs = _segments(multi[1])
    assert_rejected(head + segs[0] + segs[1] + segs[1] + b"".join(segs[2:]), unwrapper=sym)
    assert_rejected(head + b"".join(segs[:3]) + segs[2] + segs[3], unwrapper=sym)


def test_dropped_middle_segment(multi: tuple[bytes, bytes], sym: SymmetricKey) -> None:
    head, segs = _segments(multi[1])
    assert_rejected(head + segs[0] + b"".join(segs[2:]), unwrapper=sym)


class _Impostor:
    """Claims the right key id but holds another key: only cryptography can catch it."""

    def __init__(self, real: SymmetricKey | VaultPrivateKey, key_id: str) -> None:
        self._real, self.key_id, self.scheme = real, key_id, real.scheme

    def unwrap(self, wrapped: bytes, object_id: str) -> bytes:
        return self._real.unwrap(wrapped, object_id)


def test_wrong_symmetric_key(multi: tuple[bytes, bytes], sym: SymmetricKey) -> None:
    other = SymmetricKey.generate()
    assert_rejected(multi[1], unwrapper=other)
    assert_rejected(multi[1], unwrapper=_Impostor(other, sym.key_id))


def test_wrong_vault_key(vault: VaultPrivateKey) -> None:
    blob, writer = seal_bytes(os.urandom(SEG + 1), vault.public_key())
    other = VaultPrivateKey.generate()
    assert_rejected(blob, unwrapper=other)
    assert_rejected(blob, unwrapper=_Impostor(other, vault.key_id))
    assert_rejected(blob, unwrapper=SymmetricKey.generate())


def test_wrong_data_key(multi: tuple[bytes, bytes]) -> None:
    assert_rejected(multi[1], data_key=os.urandom(32))


def test_wrong_object_id(multi: tuple[bytes, bytes], sym: SymmetricKey) -> None:
    assert_rejected(multi[1], "obj-2", unwrapper=sym)


def test_object_id_rewritten_in_header(sym: SymmetricKey) -> None:
    blob, writer = seal_bytes(os.urandom(SEG + 3), sym, "obj-A")
    moved = blob.replace(b'"oid":"obj-A"', b'"oid":"obj-B"')
    assert moved != blob
    assert_rejected(moved, "obj-B", unwrapper=sym)  # wk is bound to obj-A
    # Even with the right DEK, segments are bound to the original object id.
    assert_rejected(moved, "obj-B", data_key=writer.data_key)


def test_wrapped_key_swapped_from_other_object(sym: SymmetricKey) -> None:
    blob_a, writer_a = seal_bytes(os.urandom(1000), sym, "obj-A")
    _, writer_b = seal_bytes(os.urandom(1000), sym, "obj-B")
    wk_a = base64.b64encode(writer_a.wrapped_key)
    wk_b = base64.b64encode(writer_b.wrapped_key)
    assert_rejected(blob_a.replace(wk_a, wk_b), "obj-A", unwrapper=sym)


def test_detached_needs_the_right_wrapped_key(sym: SymmetricKey) -> None:
    blob, writer = seal_bytes(os.urandom(SEG + 9), sym, "obj-A", embed_key=False)
    _, other = seal_bytes(b"x", sym, "obj-B", embed_key=False)
    assert_rejected(blob, "obj-A", unwrapper=sym)  # no wrapped key at all
    assert_rejected(blob, "obj-A", unwrapper=sym, wrapped_key=other.wrapped_key)
    assert_rejected(blob, "obj-A", unwrapper=sym, wrapped_key=os.urandom(60))
    assert_rejected(
        blob, "obj-A", unwrapper=SymmetricKey.generate(), wrapped_key=writer.wrapped_key
    )


def test_shredding_the_detached_key_makes_backups_useless(sym: SymmetricKey) -> None:
    blob, writer = seal_bytes(b"My Number 1234-5678-9012", sym, embed_key=False)
    assert b"1234" not in blob and writer.wrapped_key not in blob
    # Without the database copy of the wrapped key there is no way in, whatever key.
    assert_rejected(blob, unwrapper=sym)


def test_bad_arguments(multi: tuple[bytes, bytes], sym: SymmetricKey) -> None:
    with pytest.raises(ValueError):
        open_envelope(io.BytesIO(multi[1]), "obj-1")
    with pytest.raises(ValueError):
        open_envelope(io.BytesIO(multi[1]), "obj-1", unwrapper=sym, data_key=bytes(32))
    with pytest.raises(ValueError):
        open_envelope(io.BytesIO(multi[1]), "bad id with spaces", unwrapper=sym)
