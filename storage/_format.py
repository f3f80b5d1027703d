"""Byte-level format of kinko envelopes (constants, header codec, nonces, AAD, layout).

Layout of an envelope::

    "KINKOENC" | 0x01 | u32be L | L bytes canonical JSON header | segment 0 | ... | segment n-1

Segment i = AES-256-GCM(DEK, nonce_i, plaintext_i, AAD) = ciphertext || 16-byte tag, with
``nonce_i = u88be(i) || flag`` (flag 0x01 only on the last segment) and
``AAD = stream_aad(object_id)``.  Every plaintext segment is exactly SEGMENT_SIZE bytes
except the last, which is 1..SEGMENT_SIZE bytes -- or 0 bytes when the whole plaintext is
empty (this canonical layout means the segment structure follows from the length alone).

Internal module: the public names are re-exported by :mod:`storage.envelope`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import BinaryIO

from ._keyio import length_prefixed
from .errors import IntegrityError, InvalidKeyError

MAGIC = b"KINKOENC"
VERSION = 1
ALG = "AES-256-GCM-STREAM-64K"
SEGMENT_SIZE = 65536
TAG_SIZE = 16
CIPHER_SEGMENT_SIZE = SEGMENT_SIZE + TAG_SIZE
MAX_HEADER_JSON = 1 << 16
_PREAMBLE = len(MAGIC) + 1 + 4
_MAX_COUNTER = 1 << 88
_OID_RE = re.compile(r"[\x21-\x7e]{1,256}")
_KID_RE = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True)
class Header:
    """Parsed envelope header (nothing in it is secret; none of it is authenticated alone).

    ``size`` is the total header length in bytes (payload starts there);
    ``wrapped_key`` is ``None`` for a detached envelope.
    """

    version: int
    alg: str
    object_id: str
    key_id: str
    wrap: str
    wrapped_key: bytes | None
    size: int

    @property
    def detached(self) -> bool:
        """True when the wrapped DEK is stored outside the object (e.g. in the database)."""
        return self.wrapped_key is None


def check_object_id(object_id: str) -> str:
    """Object ids are printable ASCII without spaces, 1..256 chars; else ``InvalidKeyError``."""
    if not isinstance(object_id, str) or not _OID_RE.fullmatch(object_id):
        raise InvalidKeyError("invalid object id (1..256 printable ASCII, no spaces)")
    return object_id


def stream_aad(object_id: str) -> bytes:
    """AAD of every segment: the *stable* header part (magic, version, alg, segment size, oid).

    The key id and wrapped key are deliberately excluded, so re-wrapping the DEK for a new
    key rewrites only the header.  Binding the object id stops an attacker from passing
    one object's payload off as another's even if DEKs were ever shared or leaked.
    """
    return (
        MAGIC
        + bytes([VERSION])
        + length_prefixed(ALG.encode(), SEGMENT_SIZE.to_bytes(4, "big"), object_id.encode())
    )


def nonce(counter: int, last: bool) -> bytes:
    """STREAM nonce: 11-byte big-endian counter || last-segment flag (as in age)."""
    if counter >= _MAX_COUNTER:
        raise IntegrityError("segment counter overflow")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _canonical(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_header(object_id: str, key_id: str, wrap: str, wrapped_key: bytes | None) -> bytes:
    """Serialise a header; ``wrapped_key=None`` produces a detached header."""
    fields: dict[str, object] = {
        "alg": ALG,
        "kid": key_id,
        "oid": check_object_id(object_id),
        "v": VERSION,
        "wrap": wrap,
    }
    if wrapped_key is None:
        fields["detached"] = True
    else:
        fields["wk"] = base64.b64encode(wrapped_key).decode("ascii")
    body = _canonical(fields)
    return MAGIC + bytes([VERSION]) + len(body).to_bytes(4, "big") + body


def read_exact(source: BinaryIO, size: int) -> bytes:
    """Read exactly ``size`` bytes, or fewer only at end of stream (handles short reads)."""
    first = source.read(size)
    if first is None or len(first) == size or not first:
        return first or b""
    parts = [first]
    remaining = size - len(first)
    while remaining:
        chunk = source.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise IntegrityError("duplicate field in envelope header")
    return result


def _reject_constant(name: str) -> object:
    raise IntegrityError("non-finite number in envelope header")


def parse_header(source: BinaryIO) -> Header:
    """Read and strictly validate a header from ``source``; raises ``IntegrityError``.

    Strictness is a security feature: the header is not MACed as a whole, so the parser
    accepts exactly one byte string per header (canonical JSON, fixed field set,
    canonical base64).  Any flipped byte therefore either changes a field that is
    authenticated elsewhere (oid, kid, wk) or makes parsing fail.
    """
    preamble = read_exact(source, _PREAMBLE)
    if len(preamble) != _PREAMBLE or preamble[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a kinko envelope")
    if preamble[len(MAGIC)] != VERSION:
        raise IntegrityError("unsupported envelope version")
    length = int.from_bytes(preamble[len(MAGIC) + 1 :], "big")
    if not 2 <= length <= MAX_HEADER_JSON:  # cap before allocating: no memory DoS
        raise IntegrityError("bad envelope header length")
    body = read_exact(source, length)
    if len(body) != length:
        raise IntegrityError("truncated envelope header")
    try:
        fields = json.loads(
            body, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        raise IntegrityError("malformed envelope header") from exc
    if not isinstance(fields, dict) or _canonical(fields) != body:
        raise IntegrityError("non-canonical envelope header")
    return _header_from_fields(fields, _PREAMBLE + length)


def _header_from_fields(fields: dict[str, object], size: int) -> Header:
    base = {"alg", "kid", "oid", "v", "wrap"}
    if set(fields) not in (base | {"wk"}, base | {"detached"}):
        raise IntegrityError("unexpected envelope header fields")
    oid, kid, wrap = fields["oid"], fields["kid"], fields["wrap"]
    if (
        fields["v"] != VERSION
        or type(fields["v"]) is not int
        or fields["alg"] != ALG
        or not isinstance(oid, str)
        or not _OID_RE.fullmatch(oid)
        or not isinstance(kid, str)
        or not _KID_RE.fullmatch(kid)
        or not isinstance(wrap, str)
        or not _KID_RE.fullmatch(wrap)
        or fields.get("detached", True) is not True
    ):
        raise IntegrityError("invalid envelope header field")
    wrapped: bytes | None = None
    if "wk" in fields:
        encoded = fields["wk"]
        try:
            if not isinstance(encoded, str):
                raise ValueError("wk must be a string")
            wrapped = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise IntegrityError("invalid wrapped key encoding") from exc
        # base64 is malleable in its padding bits; insist on the one canonical spelling.
        if not wrapped or base64.b64encode(wrapped).decode("ascii") != encoded:
            raise IntegrityError("non-canonical wrapped key encoding")
    return Header(VERSION, ALG, oid, kid, wrap, wrapped, size)


def layout(payload_size: int) -> tuple[int, int]:
    """Return ``(segment_count, last_plaintext_size)`` for a payload of this many bytes.

    Raises ``IntegrityError`` for sizes no writer produces (truncated mid-tag, or an empty
    final segment after non-empty ones) -- the canonical layout is what lets random-access
    readers know which segment must carry the last-segment flag.
    """
    if payload_size < TAG_SIZE:
        raise IntegrityError("envelope payload truncated")
    count = -(-payload_size // CIPHER_SEGMENT_SIZE)
    last_ct = payload_size - (count - 1) * CIPHER_SEGMENT_SIZE
    if last_ct < TAG_SIZE or (last_ct == TAG_SIZE and count > 1):
        raise IntegrityError("envelope payload has an invalid length")
    return count, last_ct - TAG_SIZE
