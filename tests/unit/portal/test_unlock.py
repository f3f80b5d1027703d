"""The openers of portal.unlock, on protected files built at test time.

AES ZIP: pyzipper; ZipCrypto ZIP: the traditional PKWARE cipher below (no
library writes it); OOXML: msoffcrypto-tool; PDF: pypdf.  Each result is
checked by reading it back with an ordinary reader, and by the scanner's own
type policy (``check_file``), which refuses anything still encrypted.
"""

from __future__ import annotations

import binascii
import io
import os
import secrets
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import openpyxl
import pytest
import pyzipper
from pypdf import PdfReader, PdfWriter
from sqlalchemy.orm import Session

from portal import unlock
from portal.db import make_engine
from portal.instance import migrate
from portal.models import Policy
from portal.settings import Settings
from portal.unlock import MAX_ENTRIES, UnlockError, open_protected
from scanners.filetypes import check_file

PASSWORD = "Kinko-パス1234"


def _xlsx(text: str = "hello") -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws["A1"] = text
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _aes_zip(files: dict[str, bytes], password: str = PASSWORD) -> bytes:
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password.encode())
        for name, body in files.items():
            zf.writestr(name, body)
    return out.getvalue()


# -- ZipCrypto (PKWARE traditional encryption), written by hand ------------------


class _ZipCrypto:
    def __init__(self, password: bytes) -> None:
        self.keys = [0x12345678, 0x23456789, 0x34567890]
        for b in password:
            self._update(b)

    def _crc(self, crc: int, b: int) -> int:
        return binascii.crc32(bytes([b]), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    def _update(self, b: int) -> None:
        k0, k1, k2 = self.keys
        k0 = self._crc(k0, b)
        k1 = (k1 + (k0 & 0xFF)) & 0xFFFFFFFF
        k1 = (k1 * 134775813 + 1) & 0xFFFFFFFF
        k2 = self._crc(k2, (k1 >> 24) & 0xFF)
        self.keys = [k0, k1, k2]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            t = (self.keys[2] | 2) & 0xFFFF
            out.append(b ^ (((t * (t ^ 1)) >> 8) & 0xFF))
            self._update(b)
        return bytes(out)


def _zipcrypto_zip(files: dict[str, bytes], password: bytes) -> bytes:
    """A ZIP whose entries are deflated, then ZipCrypto-encrypted (flag bit 0)."""
    out = io.BytesIO()
    central = []
    for name, body in files.items():
        crc = zlib.crc32(body)
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        deflated = comp.compress(body) + comp.flush()
        header = secrets.token_bytes(11) + bytes([(crc >> 24) & 0xFF])
        payload = _ZipCrypto(password).encrypt(header + deflated)
        raw = name.encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 1, 8, 0, 0, crc,
                              len(payload), len(body), len(raw), 0) + raw + payload)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 1, 8, 0, 0,
                                   crc, len(payload), len(body), len(raw), 0, 0, 0, 0, 0,
                                   offset) + raw)
    start = out.tell()
    for entry in central:
        out.write(entry)
    size = out.tell() - start
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), size,
                          start, 0))
    return out.getvalue()


def _ooxml_protected(plain: bytes, password: str = PASSWORD) -> bytes:
    from msoffcrypto.format.ooxml import OOXMLFile

    out = io.BytesIO()
    OOXMLFile(io.BytesIO(plain)).encrypt(password, out)
    return out.getvalue()


def _pdf(text_marker: str = "kinko") -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.add_metadata({"/Title": text_marker})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _pdf_protected(password: str = PASSWORD, algorithm: str = "AES-256") -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_pdf())))
    writer.encrypt(user_password=password, owner_password=None, algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _allowed(data: bytes, name: str) -> str | None:
    verdict = check_file(cast(Any, io.BytesIO(data)), name, len(data))
    return verdict.kind if verdict.allowed else f"refused:{verdict.reason}"


# -- ZIP ---------------------------------------------------------------------------


def test_aes_zip_opens_into_its_files() -> None:
    xlsx = _xlsx()
    data = _aes_zip({"給与/社員.xlsx": xlsx, "memo.csv": b"a,b\n1,2\n"})
    assert _allowed(data, "files.zip") == "refused:encrypted"
    opened = open_protected(data, "files.zip", PASSWORD)
    assert [(o.filename, o.data) for o in opened] == [("社員.xlsx", xlsx),
                                                      ("memo.csv", b"a,b\n1,2\n")]
    assert _allowed(opened[0].data, opened[0].filename) == "xlsx"


@pytest.mark.parametrize("password", [PASSWORD.encode("utf-8"), PASSWORD.encode("cp932")])
def test_zipcrypto_zip_opens_with_utf8_or_shift_jis_password(password: bytes) -> None:
    body = b"name,number\n" * 200
    data = _zipcrypto_zip({"list.csv": body}, password)
    # The fixture is a real ZipCrypto archive: the standard library reads it.
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read("list.csv", pwd=password) == body
    assert _allowed(data, "list.zip") == "refused:encrypted"
    opened = open_protected(data, "list.zip", PASSWORD)
    assert [(o.filename, o.data) for o in opened] == [("list.csv", body)]


@pytest.mark.parametrize("maker", [
    lambda: _aes_zip({"a.csv": b"x,y\n"}),
    lambda: _zipcrypto_zip({"a.csv": b"x,y\n" * 50}, PASSWORD.encode()),
])
def test_zip_wrong_password(maker: Any) -> None:
    data = maker()
    for wrong in ("wrong-password-1", PASSWORD + "x", "zzzz"):
        with pytest.raises(UnlockError) as info:
            open_protected(data, "a.zip", wrong)
        assert info.value.code == "wrong_password"
        assert wrong not in str(info.value)


def test_zip_based_document_is_repacked_under_its_name() -> None:
    xlsx = _xlsx()
    with zipfile.ZipFile(io.BytesIO(xlsx)) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist()}
    data = _aes_zip(parts)
    assert _allowed(data, "book.xlsx") == "refused:encrypted"
    opened = open_protected(data, "book.xlsx", PASSWORD)
    assert [o.filename for o in opened] == ["book.xlsx"]
    assert _allowed(opened[0].data, "book.xlsx") == "xlsx"
    assert openpyxl.load_workbook(io.BytesIO(opened[0].data)).active["A1"].value == "hello"


def test_zip_limits() -> None:
    many = _aes_zip({f"f{i}.csv": b"a\n" for i in range(MAX_ENTRIES + 1)})
    with pytest.raises(UnlockError) as info:
        open_protected(many, "many.zip", PASSWORD)
    assert info.value.code == "too_many_entries"


def test_zip_entry_bigger_than_declared_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unlock, "MAX_IN_MEMORY", 64 * 1024)
    data = _aes_zip({"big.csv": b"0" * (65 * 1024)})
    with pytest.raises(UnlockError) as info:
        open_protected(data, "big.zip", PASSWORD)
    assert info.value.code == "too_large"


def test_entries_are_read_a_piece_at_a_time_and_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # zipfile stops at the declared size itself; the bound is kept while reading
    # anyway, in case a reader ever yields more.
    monkeypatch.setattr(unlock, "_READ_PIECE", 7)
    body = os.urandom(100)
    reads: list[int] = []

    class Entry(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            reads.append(-1 if n is None else n)
            return super().read(n)

    assert unlock._read_bounded(Entry(body), 100) == body
    assert set(reads) == {7}
    with pytest.raises(UnlockError) as info:
        unlock._read_bounded(Entry(body), 99)
    assert info.value.code == "too_large"


def test_unprotected_zip_is_not_opened() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("a.csv", b"a\n")
    with pytest.raises(UnlockError) as info:
        open_protected(out.getvalue(), "a.zip", PASSWORD)
    assert info.value.code == "unsupported"


def test_odf_is_refused_with_its_own_reason() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("mimetype", b"application/vnd.oasis.opendocument.spreadsheet")
        zf.writestr("META-INF/manifest.xml", b"<manifest:encryption-data/>")
        zf.writestr("content.xml", secrets.token_bytes(64))
    with pytest.raises(UnlockError) as info:
        open_protected(out.getvalue(), "book.ods", PASSWORD)
    assert info.value.code == "odf_unsupported"


# -- Office ------------------------------------------------------------------------


def test_ooxml_opens() -> None:
    xlsx = _xlsx("給与")
    data = _ooxml_protected(xlsx)
    assert _allowed(data, "book.xlsx") == "refused:encrypted"
    opened = open_protected(data, "book.xlsx", PASSWORD)
    assert [o.filename for o in opened] == ["book.xlsx"]
    assert _allowed(opened[0].data, "book.xlsx") == "xlsx"
    assert openpyxl.load_workbook(io.BytesIO(opened[0].data)).active["A1"].value == "給与"


def test_ooxml_wrong_password() -> None:
    data = _ooxml_protected(_xlsx())
    with pytest.raises(UnlockError) as info:
        open_protected(data, "book.xlsx", "not-the-password")
    assert info.value.code == "wrong_password"


# -- PDF ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["AES-256", "AES-128", "RC4-128"])
def test_pdf_opens(algorithm: str) -> None:
    data = _pdf_protected(algorithm=algorithm)
    assert _allowed(data, "scan.pdf") == "refused:encrypted"
    opened = open_protected(data, "scan.pdf", PASSWORD)
    assert [o.filename for o in opened] == ["scan.pdf"]
    assert _allowed(opened[0].data, "scan.pdf") == "pdf"
    reader = PdfReader(io.BytesIO(opened[0].data))
    assert not reader.is_encrypted and len(reader.pages) == 1


def test_pdf_wrong_password() -> None:
    with pytest.raises(UnlockError) as info:
        open_protected(_pdf_protected(), "scan.pdf", "not-the-password")
    assert info.value.code == "wrong_password"


# -- anything else -----------------------------------------------------------------


def test_other_content_and_bad_input() -> None:
    with pytest.raises(UnlockError) as info:
        open_protected(b"\x89PNG\r\n\x1a\n" + b"0" * 100, "a.png", PASSWORD)
    assert info.value.code == "unsupported"
    with pytest.raises(UnlockError) as info:
        open_protected(_pdf_protected(), "scan.pdf", "")
    assert info.value.code == "no_password"
    with pytest.raises(UnlockError) as info:
        open_protected(b"%PDF-1.7\n garbage /Encrypt", "scan.pdf", PASSWORD)
    assert info.value.code == "malformed"


def test_unprotected_pdf_is_not_opened() -> None:
    with pytest.raises(UnlockError) as info:
        open_protected(_pdf(), "scan.pdf", PASSWORD)
    assert info.value.code == "unsupported"


# -- the office setting --------------------------------------------------------------


@contextmanager
def _db(tmp_path: Path) -> Iterator[Session]:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path)})
    migrate(settings)
    engine = make_engine(settings.database_url)
    with Session(engine) as db, db.begin():
        yield db


def test_setting_defaults_off_and_fails_closed(tmp_path: Path) -> None:
    with _db(tmp_path) as db:
        assert unlock.opening_enabled(db) is False
        assert unlock.save_opening_enabled(db, True) is True
        assert unlock.opening_enabled(db) is True
        assert unlock.save_opening_enabled(db, True) is False
        row = db.get(Policy, unlock.SETTING)
        assert row is not None
        row.value = "not json"
        assert unlock.opening_enabled(db) is False


def test_keep_window_is_a_day() -> None:
    now = datetime.now(UTC)
    assert now + unlock.KEEP_FOR - now == timedelta(hours=24)
