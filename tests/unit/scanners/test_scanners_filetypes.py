"""Content-type policy: kinds by content, extension agreement, encryption, archive limits."""

from __future__ import annotations

import io
import random
import struct
import zipfile

import pytest
from _scanners_helpers import make_xlsx, make_zip, zipcrypto_flagged_zip

from scanners.filetypes import ALLOWED_KINDS, EXTENSIONS, PolicyVerdict, check_file, sniff

ODS_MIME = b"application/vnd.oasis.opendocument.spreadsheet"
MANIFEST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<manifest:manifest xmlns:manifest='
    b'"urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
    b'<manifest:file-entry manifest:full-path="/" manifest:media-type="'
    + ODS_MIME
    + b'"/><manifest:file-entry manifest:full-path="content.xml" '
    b'manifest:media-type="text/xml"%s/></manifest:manifest>'
)
ENCRYPTION_DATA = (
    b'><manifest:encryption-data manifest:checksum-type="SHA1/1K" '
    b'manifest:checksum="x"><manifest:algorithm manifest:algorithm-name="Blowfish CFB" '
    b'manifest:initialisation-vector="x"/></manifest:encryption-data></manifest:file-entry'
)
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
    b"xref\n0 3\n0000000000 65535 f \n0000000009 00000 n \n0000000052 00000 n \n"
    b"trailer<</Size 3/Root 1 0 R@EXTRA@>>\nstartxref\n95\n%%EOF\n"
)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 40
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40


def ods(manifest_extra: bytes = b"", *, mimetype: bytes = ODS_MIME) -> bytes:
    return make_zip(
        [
            ("mimetype", mimetype),
            ("META-INF/manifest.xml", MANIFEST % manifest_extra),
            ("content.xml", b"<office:document-content/>"),
        ],
        first_stored=True,
    )


def ole2(names: list[str]) -> bytes:
    """Minimal OLE2: 512-byte header (sector shift 9, directory at sector 0) + one
    directory sector holding the given UTF-16LE entry names."""
    header = bytearray(512)
    header[:8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    struct.pack_into("<HHH", header, 24, 0x3E, 3, 0xFFFE)
    struct.pack_into("<H", header, 30, 9)
    struct.pack_into("<I", header, 48, 0)
    directory = bytearray(512)
    for i, name in enumerate(["Root Entry", *names][:4]):
        raw = (name + "\0").encode("utf-16-le")
        directory[i * 128 : i * 128 + len(raw)] = raw
        struct.pack_into("<H", directory, i * 128 + 64, len(raw))
    return bytes(header) + bytes(directory) + b"\0" * 512


def pdf(trailer_extra: bytes = b"") -> bytes:
    return PDF.replace(b"@EXTRA@", trailer_extra)


def _flag_entries_encrypted(data: bytes) -> bytes:
    """Set flag bit 0 on every central directory entry of a real workbook."""
    buf = bytearray(data)
    pos = 0
    while (pos := buf.find(b"PK\x01\x02", pos)) >= 0:
        flags = struct.unpack_from("<H", buf, pos + 8)[0]
        struct.pack_into("<H", buf, pos + 8, flags | 1)
        pos += 4
    return bytes(buf)


def check(data: bytes, name: str, **kwargs: int) -> PolicyVerdict:
    return check_file(io.BytesIO(data), name, len(data), **kwargs)


XLSX = make_xlsx()
CSV_UTF8 = "氏名,個人番号\n山田太郎,123456789018\n".encode()
CSV_BOM = b"\xef\xbb\xbf" + CSV_UTF8
CSV_CP932 = "氏名,個人番号\n山田太郎,123456789018\n".encode("cp932")
XLS = ole2(["Workbook", "\x05SummaryInformation"])


def test_allowed_kinds_and_extensions() -> None:
    assert ALLOWED_KINDS == ("xlsx", "xls", "csv", "ods", "pdf", "jpeg", "png")
    assert EXTENSIONS[".jpg"] == EXTENSIONS[".jpeg"] == "jpeg"
    assert set(EXTENSIONS.values()) == set(ALLOWED_KINDS)


@pytest.mark.parametrize(
    ("data", "name", "kind"),
    [
        (XLSX, "給与.xlsx", "xlsx"),
        (XLSX, "BOOK.XLSX", "xlsx"),
        (CSV_UTF8, "a.csv", "csv"),
        (CSV_BOM, "a.csv", "csv"),
        (CSV_CP932, "社員.CSV", "csv"),
        (ods(), "a.ods", "ods"),
        (XLS, "a.xls", "xls"),
        (ole2(["Book"]), "a.xls", "xls"),
        (pdf(), "a.pdf", "pdf"),
        (PNG, "a.png", "png"),
        (JPEG, "a.jpg", "jpeg"),
        (JPEG, "a.JPEG", "jpeg"),
        (XLSX, "C:\\Users\\me\\book.xlsx", "xlsx"),
    ],
)
def test_allowed(data: bytes, name: str, kind: str) -> None:
    assert check(data, name) == PolicyVerdict(True, kind, None)


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (pdf(), "a.xlsx", "extension_mismatch"),
        (XLSX, "a.csv", "extension_mismatch"),
        (XLSX, "a.ods", "extension_mismatch"),
        (ods(), "a.xlsx", "extension_mismatch"),
        (XLS, "a.xlsx", "extension_mismatch"),
        (PNG, "a.jpg", "extension_mismatch"),
        (CSV_UTF8, "a.pdf", "extension_mismatch"),
        (b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 100, "a.pdf", "type_not_allowed"),
        (make_zip([("a.txt", b"hi")]), "a.xlsx", "type_not_allowed"),
        (make_zip([("[Content_Types].xml", b"<x/>")]), "a.xlsx", "type_not_allowed"),
        (ods(mimetype=b"application/vnd.oasis.opendocument.text"), "a.ods", "type_not_allowed"),
        (ole2(["WordDocument"]), "a.xlsx", "encrypted"),  # unknown OLE2 under .xlsx
        (XLSX, "a.xlsm", "type_not_allowed"),
        (XLSX, "a.zip", "type_not_allowed"),
        (XLSX, "xlsx", "type_not_allowed"),
        (XLSX, "a.xlsx.", "type_not_allowed"),
        (CSV_UTF8, "a.exe", "type_not_allowed"),
        (CSV_UTF8 + b"\0", "a.csv", "type_not_allowed"),
        (CSV_UTF8 * 1000 + b"\0" + CSV_UTF8, "a.csv", "type_not_allowed"),  # NUL past head
        (b"\x80\xff\xfe" * 10, "a.csv", "type_not_allowed"),
        (b"a,b\x01\x02\x03,c\n", "a.csv", "type_not_allowed"),
    ],
)
def test_denied(data: bytes, name: str, reason: str) -> None:
    verdict = check(data, name)
    assert verdict.allowed is False
    assert verdict.reason == reason


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (zipcrypto_flagged_zip(), "a.xlsx"),
        (zipcrypto_flagged_zip(), "a.ods"),
        (_flag_entries_encrypted(XLSX), "a.xlsx"),
        (ole2(["\x06DataSpaces", "EncryptionInfo", "EncryptedPackage"]), "a.xlsx"),
        (ole2(["EncryptedPackage"]), "a.xls"),
        (ods(ENCRYPTION_DATA), "a.ods"),
        (pdf(b"/Encrypt 5 0 R"), "a.pdf"),
    ],
)
def test_encrypted(data: bytes, name: str) -> None:
    verdict = check(data, name)
    assert verdict.allowed is False
    assert verdict.reason == "encrypted"


def test_pdf_encrypt_metadata_word_alone_is_not_a_false_positive() -> None:
    assert check(pdf(b"/Info 3 0 R"), "a.pdf").allowed is True
    assert check(pdf(b"/Encrypt<</Filter/Standard>>"), "a.pdf").reason == "encrypted"


def test_pdf_encrypt_found_via_startxref_in_large_file() -> None:
    body = b"%PDF-1.7\n" + b"% filler\n" * 30000
    xref_at = len(body)
    trailer = b"xref\n0 1\n0000000000 65535 f \ntrailer<</Size 1/Encrypt 9 0 R>>\n"
    tail = b"% more filler\n" * 10000 + b"startxref\n%d\n%%%%EOF\n" % xref_at
    assert check(body + trailer + tail, "a.pdf").reason == "encrypted"


def test_empty() -> None:
    assert check(b"", "a.csv") == PolicyVerdict(False, None, "empty")
    assert check_file(io.BytesIO(b""), "a.csv", 10).reason == "empty"


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04" + b"\x00" * 100,
        XLSX[: len(XLSX) // 2],
        ole2(["Workbook"])[:40],
    ],
)
def test_malformed(data: bytes) -> None:
    assert check(data, "a.xlsx").reason in ("malformed", "encrypted")
    assert check(b"PK\x03\x04" + b"\x00" * 100, "a.xlsx").reason == "malformed"


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil", "/etc/passwd", "a\\..\\b", "C:/x"])
def test_path_traversal_entry(name: str) -> None:
    data = make_xlsx(extra=[(name, b"x")])
    assert check(data, "a.xlsx").reason == "archive_limits"


def test_symlink_entry() -> None:
    buf = io.BytesIO(make_xlsx())
    with zipfile.ZipFile(buf, "a") as zf:
        info = zipfile.ZipInfo("xl/link")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    assert check(buf.getvalue(), "a.xlsx").reason == "archive_limits"


def test_too_many_entries() -> None:
    assert check(XLSX, "a.xlsx", max_entries=5).reason == "archive_limits"
    assert check(XLSX, "a.xlsx", max_entries=50).allowed is True


def test_too_much_unpacked() -> None:
    assert check(XLSX, "a.xlsx", max_unpacked=1000).reason == "archive_limits"
    big = make_xlsx(extra=[("xl/media/big.bin", b"\0" * (20 << 20))])
    assert check(big, "a.xlsx", max_unpacked=4 << 20).reason == "archive_limits"
    assert check(big, "a.xlsx", max_entry_size=1 << 20).reason == "archive_limits"
    assert check(big, "a.xlsx").reason == "archive_limits"  # default: > clamd MaxFileSize
    assert check(big, "a.xlsx", max_entry_size=32 << 20).allowed is True


def test_sniff() -> None:
    assert sniff(pdf()) == "pdf"
    assert sniff(b"\n" * 1000 + b"%PDF-1.5") == "pdf"
    assert sniff(b"\n" * 1100 + b"%PDF-1.5") == "text"
    assert sniff(PNG) == "png"
    assert sniff(JPEG) == "jpeg"
    assert sniff(XLS) == "ole2"
    assert sniff(XLSX) == "zip"
    assert sniff(b"PK\x05\x06" + b"\0" * 18) == "zip"
    assert sniff(CSV_UTF8) == sniff(CSV_BOM) == sniff(CSV_CP932) == "text"
    assert sniff(b"MZ\x90\x00") == "unknown"
    assert sniff(b"") == "unknown"


def test_sniff_multibyte_cut_at_end_of_head() -> None:
    utf8 = ("あ" * 3000).encode()
    cp932 = ("あ" * 5000).encode("cp932")
    assert sniff(utf8[:8191]) == "text"  # 8191 = 3 * 2730 + 1: cut mid-character
    assert sniff(cp932[:8191]) == "text"


def test_never_raises_on_garbage() -> None:
    rng = random.Random(4242)
    prefixes = [
        b"",
        b"PK\x03\x04",
        b"PK\x05\x06",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        b"%PDF-1.4\n",
        b"\x89PNG\r\n\x1a\n",
    ]
    names = ["a.xlsx", "a.xls", "a.csv", "a.ods", "a.pdf", "a.png", "a.jpg", "a"]
    for i in range(400):
        size = rng.randrange(0, 3000)
        data = rng.choice(prefixes) + bytes(rng.randrange(256) for _ in range(size))
        if i % 4 == 0:  # mutate a valid archive
            base = bytearray(rng.choice([XLSX, ods()]))
            for _ in range(rng.randrange(1, 20)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            data = bytes(base)
        verdict = check(data, rng.choice(names))
        assert isinstance(verdict, PolicyVerdict)
        assert verdict.allowed is (verdict.reason is None)
