"""Opening a password-protected upload with its password, in memory only.

A password-protected ZIP, Office document or PDF cannot be virus-scanned, so
the scan refuses it (``encrypted``).  When the office turns on the setting
:data:`SETTING` (off by default), the client may instead type the password in
the room: :mod:`portal.opening` decrypts the drop-zone object into memory and
calls :func:`open_protected`, which returns the *unprotected* file(s); those
go through the normal intake path (encrypted at rest, clamd, type policy,
check-digit report) as new uploads.

Security invariants kept here:

* Plaintext only ever lives in memory: every opener reads from and writes to
  ``bytes``/``BytesIO``; nothing touches a disk.  The input is bounded by
  :data:`MAX_IN_MEMORY` (checked by the caller before decrypting) and every
  output is bounded again here (a ZIP entry may claim any size).
* The password is an argument only: it is never logged, stored, put in an
  exception message or returned.  Library exceptions are mapped to stable
  codes (:class:`UnlockError`) without their text.

Formats:

* ZIP (``.zip``; ZipCrypto and WinZip AES, via ``pyzipper``): each file inside
  becomes its own upload (at most :data:`MAX_ENTRIES`; folders and names are
  flattened to the base name).  A ZIP-based document under another name
  (e.g. an ``.xlsx`` whose parts were ZIP-encrypted) is re-packed unprotected
  under its own name.
* Office (OOXML ``.xlsx`` saved with a password, i.e. an OLE2 container with
  ``EncryptionInfo``; legacy ``.xls`` with RC4/CryptoAPI; via
  ``msoffcrypto-tool``).
* PDF (RC4 or AES, via ``pypdf``): re-written without encryption.
* ODF (``.ods`` saved with a password): **not supported** -- ODF encrypts each
  part under its own key derivation (and LibreOffice 24.2+ uses Argon2id and
  AES-GCM "wholesome" encryption); the client is asked to save the file
  without a password (``odf_unsupported``).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from scanners.filetypes import sniff

from .models import Policy

log = logging.getLogger(__name__)

SETTING = "password_opening"
# The protected original is kept (encrypted) this long for the client to type
# its password; then the reconciler deletes it (portal.opening.expire_kept).
KEEP_FOR = timedelta(hours=24)
# Wrong passwords allowed per file; the last one discards the protected file.
MAX_ATTEMPTS = 5
# The whole file is decrypted into memory, and so is what comes out of it.
MAX_IN_MEMORY = 200 * 1024 * 1024
MAX_ENTRIES = 20
MAX_PASSWORD = 256
_READ_PIECE = 1 << 20
_ODF_MIME = b"application/vnd.oasis.opendocument"


class UnlockError(Exception):
    """Opening failed; ``code`` is stable and the UI maps it to words.

    ``wrong_password``, ``too_large``, ``odf_unsupported``, ``unsupported``,
    ``too_many_entries``, ``malformed``, ``no_password``.  The message is the
    code only, never the password or a library's text.
    """

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Opened:
    """One unprotected file, in memory, with the name it is registered under."""

    filename: str
    data: bytes


# -- the office setting ----------------------------------------------------------


def opening_enabled(db: Session) -> bool:
    """Whether clients may type passwords (the office setting; default off)."""
    row = db.get(Policy, SETTING)
    if row is None:
        return False
    try:
        return bool(json.loads(row.value).get("enabled", False))
    except (ValueError, AttributeError):
        return False  # fail closed on a damaged value


def save_opening_enabled(db: Session, enabled: bool) -> bool:
    """Store the setting; returns whether it changed (the caller audits)."""
    if opening_enabled(db) == enabled:
        return False
    row = db.get(Policy, SETTING)
    value = json.dumps({"enabled": enabled})
    if row is None:
        db.add(Policy(key=SETTING, value=value))
    else:
        row.value = value
    return True


# -- the openers -------------------------------------------------------------------


def open_protected(data: bytes, filename: str, password: str) -> list[Opened]:
    """The unprotected content of ``data``; raises :class:`UnlockError`.

    The format is decided by content, never by name (except that a ``.zip``
    is unpacked into its files while a ZIP-based document is re-packed).
    """
    if not password:
        raise UnlockError("no_password")
    if len(password) > MAX_PASSWORD:
        raise UnlockError("wrong_password")
    if len(data) > MAX_IN_MEMORY:
        raise UnlockError("too_large")
    family = sniff(data[:8192])
    try:
        if family == "zip":
            return _open_zip(data, filename, password)
        if family == "ole2":
            return [Opened(filename, _open_office(data, password))]
        if family == "pdf":
            return [Opened(filename, _open_pdf(data, password))]
    except UnlockError:
        raise
    except Exception as exc:  # noqa: BLE001 - library errors carry no verdict; never their text
        log.warning("opening a protected file failed: %s", type(exc).__name__)
        raise UnlockError("malformed") from None
    raise UnlockError("unsupported")


def _passwords(password: str) -> list[bytes]:
    """ZIP passwords are bytes: UTF-8 (7-Zip, WinZip AES) or, from Japanese
    Windows' built-in tool and Lhaplus, Shift_JIS (cp932)."""
    out = [password.encode("utf-8")]
    try:
        sjis = password.encode("cp932")
    except UnicodeEncodeError:
        return out
    return out if sjis in out else out + [sjis]


def _open_zip(data: bytes, filename: str, password: str) -> list[Opened]:
    import pyzipper

    with pyzipper.AESZipFile(io.BytesIO(data)) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        first = infos[0] if infos else None
        if first is not None and first.filename == "mimetype":
            if zf.read(first)[:len(_ODF_MIME)] == _ODF_MIME:
                raise UnlockError("odf_unsupported")
        if not any(i.flag_bits & 0x1 for i in infos):
            raise UnlockError("unsupported")  # nothing here is protected
        if len(infos) > MAX_ENTRIES and filename.lower().endswith(".zip"):
            raise UnlockError("too_many_entries")
        if sum(i.file_size for i in infos) > MAX_IN_MEMORY:
            raise UnlockError("too_large")
        entries = _read_entries(zf, infos, password)
    if filename.lower().endswith(".zip"):
        return [Opened(_base_name(name), body) for name, body in entries]
    # A ZIP-based document (xlsx, ods …) whose parts were encrypted: the same
    # document, re-packed without protection.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as packed:
        for name, body in entries:
            packed.writestr(name, body)
    return [Opened(filename, out.getvalue())]


def _read_entries(zf: Any, infos: list[Any], password: str) -> list[tuple[str, bytes]]:
    last: UnlockError | None = None
    for candidate in _passwords(password):
        try:
            entries, total = [], 0
            for info in infos:
                with zf.open(info, pwd=candidate if info.flag_bits & 0x1 else None) as fh:
                    body = _read_bounded(fh, MAX_IN_MEMORY - total)
                total += len(body)
                entries.append((info.filename, body))
            return entries
        except RuntimeError:  # pyzipper: "Bad password for file …"
            last = UnlockError("wrong_password")
        except (zipfile.BadZipFile, zlib.error):
            # ZipCrypto checks one byte of the password: a wrong one passes that
            # check 1 time in 256 and then fails the CRC or decompression.
            last = UnlockError("wrong_password")
    assert last is not None
    raise last


def _read_bounded(fh: Any, limit: int) -> bytes:
    """An entry's bytes, read a piece at a time (one read would hold the entry's
    stored bytes, their decryption and the result at once); at most ``limit``
    bytes (zipfile stops at the declared size itself: this is a second bound).
    The BytesIO's buffer becomes the result."""
    out = io.BytesIO()
    while piece := fh.read(_READ_PIECE):
        out.write(piece)
        if out.tell() > limit:
            raise UnlockError("too_large")
    return out.getvalue()


def _base_name(name: str) -> str:
    """The entry's own name, without folders (names are cleaned again at intake)."""
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "file"


def _open_office(data: bytes, password: str) -> bytes:
    import msoffcrypto
    from msoffcrypto.exceptions import DecryptionError, InvalidKeyError
    from msoffcrypto.format.ooxml import OOXMLFile

    office = msoffcrypto.OfficeFile(io.BytesIO(data))
    if not office.is_encrypted():
        raise UnlockError("unsupported")
    try:
        if isinstance(office, OOXMLFile):
            office.load_key(password=password, verify_password=True)
        else:  # legacy formats check the password as they load the key
            office.load_key(password=password)
    except (InvalidKeyError, DecryptionError):
        raise UnlockError("wrong_password") from None
    out = io.BytesIO()
    try:
        office.decrypt(out)
    except (InvalidKeyError, DecryptionError):
        raise UnlockError("wrong_password") from None
    result = out.getvalue()
    if len(result) > MAX_IN_MEMORY:
        raise UnlockError("too_large")
    return result


def _open_pdf(data: bytes, password: str) -> bytes:
    from pypdf import PasswordType, PdfReader, PdfWriter

    reader = PdfReader(io.BytesIO(data))
    if not reader.is_encrypted:
        raise UnlockError("unsupported")
    if reader.decrypt(password) == PasswordType.NOT_DECRYPTED:
        raise UnlockError("wrong_password")
    writer = PdfWriter(clone_from=reader)
    out = io.BytesIO()
    writer.write(out)
    result = out.getvalue()
    if len(result) > MAX_IN_MEMORY:
        raise UnlockError("too_large")
    return result


__all__ = ["KEEP_FOR", "MAX_ATTEMPTS", "MAX_IN_MEMORY", "Opened", "SETTING", "UnlockError",
           "open_protected", "opening_enabled", "save_opening_enabled"]
