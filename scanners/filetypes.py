"""Content-type policy for uploads: types are judged by content, never by extension alone.

Security invariant: :func:`check_file` allows a file only when its (case-insensitive)
extension is on the allow-list *and* the content positively looks like that kind, is not
encrypted (which would hide it from the virus scanner) and stays within archive limits.
It never raises on malformed input and never decompresses whole entries.
"""

from __future__ import annotations

import codecs
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from scanners.limits import MAX_FILE, clamd_limits

__all__ = [
    "ALLOWED_KINDS",
    "EXTENSIONS",
    "KIND_EXTENSIONS",
    "PolicyVerdict",
    "check_file",
    "sniff",
]

ALLOWED_KINDS: tuple[str, ...] = ("xlsx", "xls", "csv", "ods", "pdf", "jpeg", "png")
KIND_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "xlsx": (".xlsx",),
    "xls": (".xls",),
    "csv": (".csv",),
    "ods": (".ods",),
    "pdf": (".pdf",),
    "jpeg": (".jpg", ".jpeg"),
    "png": (".png",),
}
EXTENSIONS: dict[str, str] = {ext: kind for kind, exts in KIND_EXTENSIONS.items() for ext in exts}

HEAD_SIZE = 8192
_CHUNK = 64 * 1024
_PDF_WINDOW = 64 * 1024
_MANIFEST_CAP = 1 << 20
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ODS_MIMETYPE = b"application/vnd.oasis.opendocument.spreadsheet"
_PDF_ENCRYPT = re.compile(rb"/Encrypt(?![A-Za-z0-9])")
_STARTXREF = re.compile(rb"startxref\s+(\d{1,15})")
# C0/C1 controls except TAB LF FF CR and SUB (DOS end-of-file), plus the cp932 oddities.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0e-\x19\x1b-\x1f\x7f-\x9f\uf8f0-\uf8f3]")
# Errors that malformed content can provoke in zipfile/struct/codecs (and OSError for
# seeks to nonsense offsets).  They all mean "malformed", never "allowed".
_PARSE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    struct.error,
    zlib.error,
    ValueError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    IndexError,
    KeyError,
    UnicodeError,
)


@dataclass(frozen=True)
class PolicyVerdict:
    """Outcome of :func:`check_file`.

    ``reason`` is None when allowed, else one of the stable codes ``"empty"``,
    ``"type_not_allowed"``, ``"extension_mismatch"``, ``"encrypted"``,
    ``"archive_limits"``, ``"malformed"``.  ``kind`` is the detected kind if known.
    """

    allowed: bool
    kind: str | None
    reason: str | None


def _deny(reason: str, kind: str | None = None) -> PolicyVerdict:
    return PolicyVerdict(False, kind, reason)


def _decodes(head: bytes, encoding: str) -> bool:
    # Incremental decoding with final=False tolerates a multibyte character cut off by
    # the end of the head, but still rejects invalid byte sequences.
    try:
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    # Python's cp932 maps almost every byte somewhere (0x80, 0xA0, 0xFD-0xFF to control
    # or private-use code points), so binary would pass as "text" without this check.
    return _NOT_TEXT.search(text) is None


def sniff(head: bytes) -> str:
    """Coarse content family of ``head`` (pass >= 8 KiB when available).

    Returns one of ``pdf png jpeg ole2 zip text unknown``.  Pure; never raises.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_OLE2_MAGIC):
        return "ole2"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head and b"\0" not in head:
        body = head[3:] if head.startswith(codecs.BOM_UTF8) else head
        if _decodes(body, "utf-8") or _decodes(head, "cp932"):
            return "text"
    return "unknown"


def _read_at(fileobj: BinaryIO, offset: int, length: int) -> bytes:
    fileobj.seek(offset)
    return fileobj.read(length)


def _extension(filename: str) -> str:
    # The name comes from a browser and may carry a client-side path.
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if "." not in base:
        return ""
    return "." + base.rsplit(".", 1)[1].lower()


# -- OLE2 ------------------------------------------------------------------------------


def _ole2_first_dir_names(fileobj: BinaryIO, size: int) -> bytes:
    """Raw bytes of the first directory sector (UTF-16LE entry names live there)."""
    header = _read_at(fileobj, 0, 512)
    (shift,) = struct.unpack_from("<H", header, 30)
    if shift not in (9, 12):
        raise ValueError("bad OLE2 sector shift")
    (dir_sector,) = struct.unpack_from("<I", header, 48)
    offset = (dir_sector + 1) << shift
    if dir_sector >= 0xFFFFFFFA or offset >= size:
        raise ValueError("bad OLE2 directory sector")
    return _read_at(fileobj, offset, 1 << shift)


def _ole2_kind(fileobj: BinaryIO, size: int) -> str:
    """``"encrypted"`` (an Office-encrypted OOXML package), ``"xls"`` or ``"ole2"``."""
    names = _ole2_first_dir_names(fileobj, size)
    if "EncryptionInfo".encode("utf-16-le") in names or (
        "EncryptedPackage".encode("utf-16-le") in names
    ):
        return "encrypted"
    if "Workbook".encode("utf-16-le") in names or "Book\0".encode("utf-16-le") in names:
        return "xls"
    return "ole2"


# -- ZIP (xlsx / ods) ------------------------------------------------------------------


def _unsafe_name(name: str) -> bool:
    if not name or "\0" in name or "\\" in name or name.startswith("/"):
        return True
    if re.match(r"[A-Za-z]:", name):
        return True
    return any(part == ".." for part in name.split("/"))


def _declared_entries(fileobj: BinaryIO, size: int) -> int | None:
    """Entry count from the end-of-central-directory record, read before zipfile builds
    its in-memory index (so a million-entry archive costs nothing).  None if unknown."""
    window = min(size, 22 + 0xFFFF)
    tail = _read_at(fileobj, size - window, window)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        return None
    (total,) = struct.unpack_from("<H", tail, pos + 10)
    return None if total == 0xFFFF else total


def _zip_verdict(
    fileobj: BinaryIO, size: int, max_entries: int, max_unpacked: int, max_entry: int
) -> PolicyVerdict | str:
    """Structural checks of a zip; returns a denial or the detected kind string."""
    declared = _declared_entries(fileobj, size)
    if declared is not None and declared > max_entries:
        return _deny("archive_limits")
    fileobj.seek(0)
    with zipfile.ZipFile(fileobj) as zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            return _deny("archive_limits")
        total = 0
        for info in infos:
            if info.flag_bits & 0x1:
                return _deny("encrypted")
            mode = info.external_attr >> 16
            is_symlink = info.create_system == 3 and mode & 0o170000 == 0o120000
            if _unsafe_name(info.filename) or is_symlink:
                return _deny("archive_limits")
            total += info.file_size
            # clamd silently scans only the first MaxFileSize bytes of an entry.
            if info.file_size > max_entry or total > max_unpacked:
                return _deny("archive_limits")
        names = {info.filename for info in infos}
        if "[Content_Types].xml" in names and "xl/workbook.xml" in names:
            return "xlsx"
        if infos and infos[0].filename == "mimetype" and infos[0].file_size <= 256:
            with zf.open(infos[0]) as fh:
                mimetype = fh.read(257)
            if mimetype == _ODS_MIMETYPE:
                if "META-INF/manifest.xml" in names:
                    # Substring check on a bounded read: no XML parser, no entities.
                    with zf.open("META-INF/manifest.xml") as fh:
                        manifest = fh.read(_MANIFEST_CAP)
                    if b"encryption-data" in manifest:
                        return _deny("encrypted", "ods")
                return "ods"
        return "zip"


def _zip_protected(fileobj: BinaryIO, size: int, head: bytes, max_entries: int) -> bool:
    """A ``.zip`` (not an allowed type) with any password-protected entry."""
    if sniff(head) != "zip":
        return False
    declared = _declared_entries(fileobj, size)
    if declared is not None and declared > max_entries:
        return False
    fileobj.seek(0)
    with zipfile.ZipFile(fileobj) as zf:
        return any(info.flag_bits & 0x1 for info in zf.infolist()[:max_entries])


# -- PDF -------------------------------------------------------------------------------


def _pdf_encrypted(fileobj: BinaryIO, size: int, head: bytes) -> bool:
    """/Encrypt in the trailer (end of file, at startxref, or a linearized first page)."""
    tail = _read_at(fileobj, max(0, size - _PDF_WINDOW), _PDF_WINDOW)
    windows = [tail, head + _read_at(fileobj, len(head), _PDF_WINDOW - len(head))]
    for match in _STARTXREF.finditer(tail):
        offset = int(match.group(1))
        if 0 <= offset < size:
            windows.append(_read_at(fileobj, offset, _PDF_WINDOW))
    return any(_PDF_ENCRYPT.search(window) for window in windows)


def _stream_has_nul(fileobj: BinaryIO) -> bool:
    fileobj.seek(0)
    while chunk := fileobj.read(_CHUNK):
        if b"\0" in chunk:
            return True
    return False


# -- policy ----------------------------------------------------------------------------


def _content_kind(
    fileobj: BinaryIO,
    size: int,
    head: bytes,
    expected: str,
    limits: tuple[int, int, int],
) -> PolicyVerdict | str:
    family = sniff(head)
    if family in ("pdf", "png", "jpeg"):
        return family
    if family == "text":
        return "csv"
    if family == "ole2":
        kind = _ole2_kind(fileobj, size)
        if kind == "encrypted":
            return _deny("encrypted")
        if expected == "xlsx" and kind == "ole2":
            # Excel saves password-protected .xlsx as an OLE2 container; if we could not
            # see its directory entries, fail closed with the most likely explanation.
            return _deny("encrypted")
        return "xls"
    if family == "zip":
        return _zip_verdict(fileobj, size, *limits)
    return "unknown"


def check_file(
    fileobj: BinaryIO,
    filename: str,
    size: int,
    *,
    max_entries: int = 10000,
    max_unpacked: int = 4 << 30,
    max_entry_size: int | None = None,
    scan_nul: bool = True,
) -> PolicyVerdict:
    """Decide whether an upload is an allowed, unencrypted, well-formed file.

    ``fileobj`` must be readable and seekable; ``size`` is its length in bytes.
    Never raises for malformed content (-> ``malformed``); I/O errors of ``fileobj``
    that are OSError/ValueError are reported as ``malformed`` too (fail closed), other
    exceptions from ``fileobj`` propagate.  The file position is left undefined.

    Archive limits: more than ``max_entries`` entries, declared uncompressed total above
    ``max_unpacked``, or any entry above ``max_entry_size`` -> ``archive_limits``.  The
    default ``max_entry_size`` is clamd's MaxFileSize for a cap equal to this file's
    size, which is <= the MaxFileSize of any clamd configured for the real cap (clamd
    silently truncates larger entries, see :mod:`scanners.limits`).

    ``scan_nul=False`` skips the one full pass (a CSV must not contain NUL bytes): for a
    caller that reads every byte anyway and refuses such a CSV itself.
    """
    if size <= 0:
        return _deny("empty")
    if max_entry_size is None:
        try:
            max_entry_size = clamd_limits(size).max_file_size
        except ValueError:  # larger than clamd can scan at all; the scan will refuse it
            max_entry_size = MAX_FILE
    expected = EXTENSIONS.get(_extension(filename))
    try:
        head = _read_at(fileobj, 0, HEAD_SIZE)
        if not head:
            return _deny("empty")
        if expected is None:
            if _extension(filename) == ".zip" and _zip_protected(fileobj, size, head,
                                                                 max_entries):
                # PPAP: say why (password) rather than only "type not allowed".
                return _deny("encrypted")
            return _deny("type_not_allowed")
        limits = (max_entries, max_unpacked, max_entry_size)
        found = _content_kind(fileobj, size, head, expected, limits)
        if isinstance(found, PolicyVerdict):
            return found
        if found != expected:
            reason = "extension_mismatch" if found in ALLOWED_KINDS else "type_not_allowed"
            return _deny(reason, found if found in ALLOWED_KINDS else None)
        if found == "pdf" and _pdf_encrypted(fileobj, size, head):
            return _deny("encrypted", "pdf")
        if found == "csv" and scan_nul and _stream_has_nul(fileobj):
            return _deny("type_not_allowed")
    except _PARSE_ERRORS:
        return _deny("malformed")
    return PolicyVerdict(True, found, None)
