"""Find 12-digit numbers in csv/xlsx/ods uploads and check their My Number check digit.

The report names cells only (sheet, row, column) and counts; it never contains,
stores or logs the digits themselves.

Security invariants:

* streaming: csv is read in 256 KiB pieces (the unfinished last line is carried over;
  runs of plain lines are checked 128 Ki characters at a time, lines with quotes go
  through ``csv.reader`` record by record, see ``_scan_csv_fast``), xlsx/ods members
  are decompressed in 64 KiB chunks and fed to an expat parser; nothing is expanded
  in memory;
* XML with a DOCTYPE (and so with entity declarations) is refused before any entity
  can be expanded (``error="unsafe_xml"``); undeclared entities are malformed;
* zip members are read only if their declared uncompressed size is under the cap and
  their compression ratio is plausible; the bytes actually produced are counted too.
  A zip bomb is refused (``error="too_large"``) with nothing counted;
* work is bounded by ``max_cells`` and ``max_seconds`` (``error="too_large"`` /
  ``"timeout"``); an error report never carries partial counts.  A csv without
  quotes or NUL bytes has its cells counted first at C speed (``_csv_over_cells``),
  so that one over the limit costs no per-cell work before it is refused.

Pure stdlib; imports neither Flask nor portal nor storage.
"""

from __future__ import annotations

import codecs
import csv
import io
import posixpath
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from itertools import accumulate
from typing import IO, Any
from xml.parsers import expat

from scanners.mynumber import invalid_indexes, is_valid_mynumber

__all__ = ["KINDS", "MAX_INVALID", "CellRef", "NumberReport", "column_letters", "scan_numbers"]

KINDS: tuple[str, ...] = ("csv", "xlsx", "ods")
MAX_INVALID = 1000
MAX_CELLS = 2_000_000
MAX_XML_BYTES = 256 << 20  # decompressed XML read, all members together
MAX_SECONDS = 30.0
MAX_RATIO = 200  # uncompressed / compressed, for members above RATIO_FLOOR
RATIO_FLOOR = 1 << 20
SMALL_MEMBER_CAP = 8 << 20  # workbook.xml and its relationships
CSV_LINE_CAP = 1 << 20
_CHUNK = 64 * 1024
_TEXT_CAP = 64  # a cell value longer than this cannot be a candidate
_CHECK_EVERY = 4096  # cells between clock checks

# Spaces and hyphens (half/full width, and the dashes Japanese IMEs produce) are ignored;
# full-width digits count as digits.
_SEPARATORS = " \t\u3000-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\uff0d\u30fc\uff70"
_NORMALIZE = str.maketrans(
    {**{ch: None for ch in _SEPARATORS}, **{chr(0xFF10 + i): str(i) for i in range(10)}}
)
_TWELVE = re.compile(r"[0-9]{12}")
_FLOAT = re.compile(r"[+]?[0-9]+(?:\.[0-9]*)?(?:[eE][+]?[0-9]{1,3})?")
_DIGIT_RUN = re.compile(r"[0-9０-９]{6,}")

_NS_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_NS_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_NS_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_NS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_NS_REL_STRICT = "http://purl.oclc.org/ooxml/officeDocument/relationships"


@dataclass(frozen=True)
class CellRef:
    """A cell position: sheet name ("" for csv), 1-based row, column letters."""

    sheet: str
    row: int
    column: str

    def as_dict(self) -> dict[str, Any]:
        return {"sheet": self.sheet, "row": self.row, "column": self.column}


@dataclass
class NumberReport:
    """``found`` candidates; ``invalid`` cells failing the check digit (first
    :data:`MAX_INVALID`; ``truncated`` if there were more).  On ``error`` (one of
    ``too_large``, ``timeout``, ``unsafe_xml``, ``encrypted``, ``malformed``,
    ``unsupported``) the counts are empty and mean nothing."""

    found: int = 0
    invalid: list[CellRef] = field(default_factory=list)
    truncated: bool = False
    error: str | None = None


class _Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


_PARSE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    struct.error,
    zlib.error,
    expat.ExpatError,
    csv.Error,
    ValueError,
    EOFError,
    NotImplementedError,
    IndexError,
    KeyError,
    UnicodeError,
)


def column_letters(index: int) -> str:
    """1 -> A, 26 -> Z, 27 -> AA."""
    out = ""
    while index > 0:
        index, rem = divmod(index - 1, 26)
        out = chr(65 + rem) + out
    return out or "A"


def _column_index(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - 64)
    return n


_CELL_REF = re.compile(r"([A-Z]{1,3})([0-9]{1,7})")


def _candidate(value: str) -> str | None:
    """The 12 ASCII digits of a text cell that holds one number, else None."""
    if len(value) > _TEXT_CAP:
        return None
    digits = value.strip().translate(_NORMALIZE)
    return digits if _TWELVE.fullmatch(digits) else None


def _numeric_candidate(value: str) -> str | None:
    """A numeric cell (possibly an Excel float such as ``1.23456789018E+11``)."""
    value = value.strip()
    if len(value) > _TEXT_CAP or not _FLOAT.fullmatch(value):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    if number != number.to_integral_value() or not 10**11 <= number < 10**12:
        return None
    return str(int(number))


def _safe_sheet_name(name: str, index: int) -> str:
    # A sheet may be named after a person's number; never echo long digit runs.
    if _DIGIT_RUN.search(name.translate(_NORMALIZE)) or _DIGIT_RUN.search(name):
        return f"#{index}"
    return name[:100]


class _Tally:
    def __init__(self, max_cells: int, max_seconds: float) -> None:
        self.report = NumberReport()
        self.max_cells = max_cells
        self.deadline = time.monotonic() + max_seconds
        self.cells = 0

    def tick(self, n: int = 1) -> None:
        before = self.cells
        self.cells += n
        if self.cells > self.max_cells:
            raise _Refused("too_large")
        if self.cells // _CHECK_EVERY != before // _CHECK_EVERY:
            self.clock()

    def clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Refused("timeout")

    def add(self, digits: str | None, sheet: str, row: int, col: int) -> None:
        self.add_valid(None if digits is None else is_valid_mynumber(digits), sheet,
                       range(row, row + 1), range(col, col + 1))

    def add_valid(self, valid: bool | None, sheet: str, rows: range, cols: range) -> None:
        """Count a candidate repeated over ``rows`` x ``cols`` (ods repeats)."""
        if valid is None:
            return
        report = self.report
        report.found += len(rows) * len(cols)
        if valid:
            return
        for row in rows:
            for col in cols:
                if len(report.invalid) >= MAX_INVALID:
                    report.truncated = True
                    return
                report.invalid.append(CellRef(sheet, row, column_letters(col)))


def scan_numbers(
    fileobj: IO[bytes],
    kind: str,
    *,
    max_cells: int = MAX_CELLS,
    max_xml_bytes: int = MAX_XML_BYTES,
    max_seconds: float = MAX_SECONDS,
) -> NumberReport:
    """Report the 12-digit numbers of a csv/xlsx/ods file.  Never raises for bad content.

    ``fileobj`` must be readable and seekable; its position is left undefined.
    Exceptions of ``fileobj`` itself other than parse errors propagate.
    """
    tally = _Tally(max_cells, max_seconds)
    try:
        if kind == "csv":
            _scan_csv(fileobj, tally)
        elif kind == "xlsx":
            _scan_xlsx(fileobj, tally, max_xml_bytes)
        elif kind == "ods":
            _scan_ods(fileobj, tally, max_xml_bytes)
        else:
            raise _Refused("unsupported")
    except _Refused as exc:
        return NumberReport(error=exc.code)
    except RecursionError:
        return NumberReport(error="malformed")
    except _PARSE_ERRORS:
        return NumberReport(error="malformed")
    return tally.report


# -- csv -------------------------------------------------------------------------------


class _RawAdapter(io.RawIOBase):
    """Lets TextIOWrapper read ``fileobj`` without ever closing it."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self._inner.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _lines(fileobj: IO[bytes], encoding: str) -> Iterator[str]:
    fileobj.seek(0)
    text = io.TextIOWrapper(
        io.BufferedReader(_RawAdapter(fileobj), _CHUNK),
        encoding=encoding,
        errors="strict",
        newline="",
    )
    while True:
        line = text.readline(CSV_LINE_CAP)
        if not line:
            return
        if len(line) >= CSV_LINE_CAP and not line.endswith(("\n", "\r")):
            raise _Refused("too_large")
        yield line


_NOT_A_MARK = bytes(i for i in range(256) if i not in b',\r\n"\0')


def _csv_over_cells(fileobj: IO[bytes], tally: _Tally) -> bool:
    """True if the csv certainly has more than ``tally.max_cells`` cells.

    Without quotes (and NUL bytes, which the parser refuses), every comma and every line
    end ends a cell: the count the parser reaches, taken on the raw
    bytes (the same in utf-8 and cp932, whose second bytes are never ``,`` ``\r``
    ``\n`` ``"`` or NUL).  It stops as soon as the count is over, and answers False (the
    parser decides) at the first quote or NUL.  The same reads as the parser's, so the
    time limit applies."""
    fileobj.seek(0)
    cells = 0
    after_cr = False
    last = b""
    while chunk := fileobj.read(_FAST_READ):
        # One pass keeps the few bytes that matter (commas, line ends, quotes, NUL).
        marks = chunk.translate(None, _NOT_A_MARK)
        if b'"' in marks or b"\0" in marks:
            return False
        cells += (len(marks) - (chunk.count(b"\r\n") if b"\r" in marks else 0)
                  - (after_cr and chunk[:1] == b"\n"))
        if cells > tally.max_cells:
            return True
        tally.clock()
        after_cr = chunk[-1:] == b"\r"
        last = chunk[-1:]
    # A last line without a line end is a cell too.
    return cells + (last not in (b"", b"\n", b"\r")) > tally.max_cells


def _scan_csv(fileobj: IO[bytes], tally: _Tally) -> None:
    scan_as = _scan_csv_fast  # looked up here: a test swaps in _scan_csv_reference
    if _csv_over_cells(fileobj, tally):
        raise _Refused("too_large")
    fileobj.seek(0)
    head = fileobj.read(3)
    encodings = ["utf-8-sig"] if head == codecs.BOM_UTF8 else ["utf-8", "cp932"]
    for i, encoding in enumerate(encodings):
        attempt = _Tally(tally.max_cells, 0)
        attempt.deadline = tally.deadline
        try:
            scan_as(fileobj, encoding, attempt)
        except UnicodeDecodeError:
            if i + 1 == len(encodings):
                raise
            continue
        tally.report = attempt.report
        return


def _cell_digits(value: str) -> str | None:
    """The 12 digits a csv cell stands for, else None (the reference's rules)."""
    # Fewer than 12 characters and no exponent: no 12 digits either way
    # (a fast path for the many short cells; same result as the checks).
    if len(value) < 12 and "e" not in value and "E" not in value:
        return None
    if len(value) == 12 and value.isascii() and value.isdigit():
        return value  # the common case, a plain number
    if len(value) <= _TEXT_CAP:
        return _candidate(value) or _numeric_candidate(value)
    return None


def _scan_record(record: list[str], row_no: int, tally: _Tally) -> None:
    tally.tick(max(1, len(record)))
    for col_no, value in enumerate(record, start=1):
        if len(value) < 12 and "e" not in value and "E" not in value:
            continue
        if len(value) == 12 and value.isascii() and value.isdigit():
            if is_valid_mynumber(value):
                tally.report.found += 1
            else:
                tally.add(value, "", row_no, col_no)
            continue
        tally.add(_cell_digits(value), "", row_no, col_no)


def _scan_csv_reference(fileobj: IO[bytes], encoding: str, tally: _Tally) -> None:
    """The exact parser: ``csv.reader`` over the lines, one record at a time."""
    reader = csv.reader(_lines(fileobj, encoding), strict=False)
    for row_no, record in enumerate(reader, start=1):
        _scan_record(record, row_no, tally)


# The fast path (same report as _scan_csv_reference, at C speed for the common case).
# Runs of complete lines without a quote or NUL, and no line longer than the csv
# module's field limit, are cut at commas and line ends exactly as csv.reader would
# cut them, so they are counted with str.count and searched with bytes.split (digits,
# commas and line ends only) or compiled patterns; only the cells that could hold a
# number are looked at, their check digits computed all at once (invalid_indexes),
# and only the failing ones located (row, column) by counting.  Every other line
# (quotes: a field may span lines) goes through csv.reader, one record at a time,
# from the same buffer.
_FAST_READ = 256 << 10  # bytes read (and decoded) at a time
_FAST_BLOCK = 128 << 10  # characters checked at a time (bounds the lists of cells)
_FIELD_LIMIT = csv.field_size_limit()
_LONG_LINE = re.compile("(?<![^\r\n])[^\r\n]{" + str(_FIELD_LIMIT + 1) + "}")
_EOL = re.compile("\r\n?|\n")
# A cell: delimited by commas and line ends (lookarounds also match at the ends).
_PLAIN = re.compile("(?<![^,\r\n])[0-9]{12}(?![^,\r\n])")
_NOT_PLAIN = "(?![0-9]{12}(?![^,\r\n]))"
# Digits -> "d", commas and line ends -> ",", anything else -> "x" (ASCII blocks).
_SHAPE = bytes(
    100 if 48 <= i <= 57 else 44 if i in (10, 13, 44) else 120 for i in range(256))
_THIRTEEN = b"d" * 13
_OTHER = re.compile("(?<![^,\r\n])" + _NOT_PLAIN + "[^,\r\n]{12,}")
_OTHER_E = re.compile(
    "(?<![^,\r\n])(?:" + _NOT_PLAIN + "[^,\r\n]{12,}|[^,\r\n]*[eE][^,\r\n]*)")


class _CsvText:
    """The decoded text of a csv file, read ahead by at most about 1 MiB."""

    def __init__(self, fileobj: IO[bytes], encoding: str) -> None:
        fileobj.seek(0)
        self.fileobj = fileobj
        self.decoder = codecs.getincrementaldecoder(encoding)("strict")
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.row = 0

    def fill(self, want: int) -> None:
        while not self.eof and len(self.buf) - self.pos < want:
            raw = self.fileobj.read(_FAST_READ)
            text = self.decoder.decode(raw, final=not raw)
            self.eof = not raw
            self.buf = self.buf[self.pos:] + text
            self.pos = 0

    def readline(self) -> str:
        """``TextIOWrapper.readline(CSV_LINE_CAP)`` with ``newline=""``, as _lines."""
        self.fill(CSV_LINE_CAP + 1)
        buf, pos = self.buf, self.pos
        cap = min(len(buf), pos + CSV_LINE_CAP)
        m = _EOL.search(buf, pos, cap)
        end = m.end() if m else cap
        line = buf[pos:end]
        self.pos = end
        if len(line) >= CSV_LINE_CAP and not line.endswith(("\n", "\r")):
            raise _Refused("too_large")
        return line

    def lines(self) -> Iterator[str]:
        while line := self.readline():
            yield line

    def fast_end(self) -> int:
        """End of the run of lines from ``pos`` that the fast path may take."""
        buf, pos = self.buf, self.pos
        if self.eof:
            stop = len(buf)
        else:
            # Complete lines only; a final "\r" may be the first half of a "\r\n".
            last = max(buf.rfind("\n", pos, len(buf) - 1), buf.rfind("\r", pos, len(buf) - 1))
            if last < 0:
                return pos
            stop = last + 1
            if buf[last] == "\r" and buf[stop] == "\n":
                stop += 1
        if stop - pos > _FAST_BLOCK:
            cut = max(buf.rfind("\n", pos, pos + _FAST_BLOCK),
                      buf.rfind("\r", pos, pos + _FAST_BLOCK - 1))
            if cut >= 0:
                stop = cut + 1
        for char in ('"', "\x00"):
            q = buf.find(char, pos, stop)
            if q >= 0:
                stop = max(buf.rfind("\n", pos, q), buf.rfind("\r", pos, q), pos - 1) + 1
        if stop - pos > _FIELD_LIMIT:
            m = _LONG_LINE.search(buf, pos, stop)
            if m:
                q = m.start()
                stop = max(buf.rfind("\n", pos, q), buf.rfind("\r", pos, q), pos - 1) + 1
        return stop


def _scan_csv_fast(fileobj: IO[bytes], encoding: str, tally: _Tally) -> None:
    text = _CsvText(fileobj, encoding)
    while True:
        text.fill(_FAST_READ)
        end = text.fast_end()
        if end > text.pos:
            block = text.buf[text.pos:end]
            text.pos = end
            text.row = _scan_block(block, text.row, tally)
            continue
        record = next(csv.reader(text.lines(), strict=False), None)
        if record is None:
            return
        text.row += 1
        _scan_record(record, text.row, tally)


def _scan_block(block: str, row0: int, tally: _Tally) -> int:
    """Count and check a run of complete, quote-free lines; returns the last row."""
    terminators = block.count("\n")
    if "\r" in block:
        terminators += block.count("\r") - block.count("\r\n")
    lines = terminators + (0 if block.endswith(("\n", "\r")) else 1)
    tally.tick(block.count(",") + lines)
    tally.clock()
    report = tally.report
    cells: list[bytes] | None = None
    if block.isascii():
        raw = block.encode("ascii")
        shape = raw.translate(_SHAPE)
        if b"x" not in shape and _THIRTEEN not in shape:
            # Digits, commas and line ends only, no run of 13 digits or more: the
            # candidates are exactly the cells of 12 characters, found without a regex.
            # ("\r\n" becomes two commas: one more empty cell, same offsets.)
            cells = raw.replace(b"\r", b",").replace(b"\n", b",").split(b",")
    others: list[tuple[int, str]] = []
    if cells is not None:
        plain: list[str] | list[bytes] = [c for c in cells if len(c) == 12]
    else:
        plain = _PLAIN.findall(block)
        pattern = _OTHER_E if ("e" in block or "E" in block) else _OTHER
        others = [(m.start(), digits) for m in pattern.finditer(block)
                  if (digits := _cell_digits(m.group())) is not None]
    report.found += len(plain) + len(others)
    if report.truncated:
        return row0 + lines
    room = MAX_INVALID - len(report.invalid)
    bad, first = invalid_indexes(plain, room)
    positions = [pos for pos, digits in others if not is_valid_mynumber(digits)]
    if bad + len(positions) > room:
        report.truncated = True
    if first and cells is not None:
        index = [k for k, c in enumerate(cells) if len(c) == 12]
        starts = list(accumulate(map(len, cells), initial=0))
        positions += [starts[k] + k for k in (index[i] for i in first)]
    elif first:
        last = first[-1]
        wanted = set(first)
        for i, m in enumerate(_PLAIN.finditer(block)):
            if i in wanted:
                positions.append(m.start())
            if i == last:
                break
    positions.sort()
    counted, row = 0, row0 + 1
    for pos in positions[:room]:
        row += (block.count("\n", counted, pos) + block.count("\r", counted, pos)
                - block.count("\r\n", counted, pos))
        counted = pos
        start = max(block.rfind("\n", 0, pos), block.rfind("\r", 0, pos)) + 1
        report.invalid.append(CellRef("", row, column_letters(block.count(",", start, pos) + 1)))
    return row0 + lines


# -- zip members through expat ---------------------------------------------------------


class _Members:
    """Bounded access to the members of a zip."""

    def __init__(self, zf: zipfile.ZipFile, tally: _Tally, max_xml_bytes: int) -> None:
        self.zf = zf
        self.tally = tally
        self.budget = max_xml_bytes
        self.infos = {info.filename: info for info in zf.infolist()}
        for info in self.infos.values():
            if info.flag_bits & 0x1:
                raise _Refused("encrypted")

    def _check(self, info: zipfile.ZipInfo, cap: int) -> None:
        if info.file_size > min(cap, self.budget):
            raise _Refused("too_large")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(
            1, info.compress_size
        ):
            raise _Refused("too_large")

    def check_all(self, names: list[str]) -> None:
        """Refuse up front if the members we are going to read are too big together."""
        total = 0
        for name in names:
            info = self.infos[name]
            self._check(info, self.budget)
            total += info.file_size
        if total > self.budget:
            raise _Refused("too_large")

    def parse(self, name: str, parser: Any, cap: int | None = None) -> None:
        info = self.infos[name]
        limit = min(cap if cap is not None else self.budget, self.budget)
        self._check(info, limit)
        read = 0
        with self.zf.open(info) as fh:
            while chunk := fh.read(_CHUNK):
                read += len(chunk)
                if read > limit:
                    raise _Refused("too_large")
                parser.Parse(chunk, False)
                self.tally.clock()
            parser.Parse(b"", True)
        self.budget -= read


def _refuse_dtd(*_args: Any) -> None:
    raise _Refused("unsafe_xml")


def _new_parser(
    start: Callable[[str, dict[str, str]], None],
    end: Callable[[str], None],
    text: Callable[[str], None] | None,
) -> Any:
    """An expat parser with namespaces resolved ("uri local") that refuses any DTD."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.UnparsedEntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd  # type: ignore[assignment]
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    if text is not None:
        parser.CharacterDataHandler = text
    return parser


def _local(name: str) -> str:
    return name.rsplit(" ", 1)[-1]


def _attr(attrs: dict[str, str], local: str) -> str | None:
    for key, value in attrs.items():
        if _local(key) == local:
            return value
    return None


class _Text:
    """Collects character data up to a small cap (longer text is never a candidate)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.active = False

    def start(self) -> None:
        self.parts, self.size, self.active = [], 0, True

    def feed(self, data: str) -> None:
        if self.active and self.size <= _TEXT_CAP:
            self.parts.append(data)
            self.size += len(data)

    def value(self) -> str:
        self.active = False
        return "".join(self.parts) if self.size <= _TEXT_CAP else "x" * (_TEXT_CAP + 1)


# -- xlsx ------------------------------------------------------------------------------


def _scan_xlsx(fileobj: IO[bytes], tally: _Tally, max_xml_bytes: int) -> None:
    fileobj.seek(0)
    with zipfile.ZipFile(fileobj) as zf:
        members = _Members(zf, tally, max_xml_bytes)
        sheets = _xlsx_sheets(members)
        names = [path for _, path in sheets]
        if "xl/sharedStrings.xml" in members.infos:
            names.append("xl/sharedStrings.xml")
        members.check_all(names)
        shared = _xlsx_shared(members) if "xl/sharedStrings.xml" in members.infos else {}
        for index, (name, path) in enumerate(sheets, start=1):
            _xlsx_sheet(members, path, _safe_sheet_name(name, index), shared)


def _xlsx_sheets(members: _Members) -> list[tuple[str, str]]:
    """(sheet name, member path) in workbook order."""
    names: list[tuple[str, str | None]] = []
    targets: dict[str, str] = {}

    def wb_start(tag: str, attrs: dict[str, str]) -> None:
        if _local(tag) == "sheet":
            rid = attrs.get(_NS_REL + " id") or attrs.get(_NS_REL_STRICT + " id")
            names.append((attrs.get("name", ""), rid))

    def rel_start(tag: str, attrs: dict[str, str]) -> None:
        if _local(tag) == "Relationship" and "Id" in attrs and "Target" in attrs:
            targets[attrs["Id"]] = attrs["Target"]

    if "xl/workbook.xml" in members.infos:
        members.parse("xl/workbook.xml", _new_parser(wb_start, _ignore, None), SMALL_MEMBER_CAP)
    if "xl/_rels/workbook.xml.rels" in members.infos:
        members.parse(
            "xl/_rels/workbook.xml.rels", _new_parser(rel_start, _ignore, None), SMALL_MEMBER_CAP
        )
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, rid in names:
        target = targets.get(rid or "")
        if not target:
            continue
        path = target.lstrip("/") if target.startswith("/") else "xl/" + target
        path = posixpath.normpath(path)
        if path in members.infos and path not in seen:
            seen.add(path)
            out.append((name, path))
    if not out:  # no usable workbook map: every worksheet, numbered
        found = sorted(
            (n for n in members.infos if re.fullmatch(r"xl/worksheets/sheet[0-9]+\.xml", n)),
            key=lambda n: int(re.sub(r"\D", "", n.rsplit("/", 1)[-1])),
        )
        out = [(f"Sheet{i}", path) for i, path in enumerate(found, start=1)]
    return out


def _ignore(*_args: Any) -> None:
    return None


def _xlsx_shared(members: _Members) -> dict[int, bool]:
    """Index -> validity, only for shared strings that are candidates (no digits kept)."""
    shared: dict[int, bool] = {}
    text = _Text()
    state = {"index": -1, "phonetic": 0}

    def start(tag: str, attrs: dict[str, str]) -> None:
        local = _local(tag)
        if local == "si":
            state["index"] += 1
            members.tally.tick()
            text.start()
        elif local == "rPh":
            state["phonetic"] += 1

    def end(tag: str) -> None:
        local = _local(tag)
        if local == "rPh":
            state["phonetic"] -= 1
        elif local == "si":
            digits = _candidate(text.value())
            if digits is not None:
                shared[state["index"]] = is_valid_mynumber(digits)

    def chars(data: str) -> None:
        if not state["phonetic"]:
            text.feed(data)

    members.parse("xl/sharedStrings.xml", _new_parser(start, end, chars))
    return shared


def _xlsx_sheet(members: _Members, path: str, sheet: str, shared: dict[int, bool]) -> None:
    tally = members.tally
    text = _Text()
    cell: dict[str, Any] = {"row": 0, "col": 0, "type": "n", "in_cell": False, "phonetic": 0}

    def start(tag: str, attrs: dict[str, str]) -> None:
        local = _local(tag)
        if local == "row":
            r = attrs.get("r", "")
            cell["row"] = int(r) if r.isdigit() and len(r) < 9 else cell["row"] + 1
            cell["col"] = 0
        elif local == "c":
            tally.tick()
            ref = _CELL_REF.fullmatch(attrs.get("r", ""))
            if ref:
                cell["col"] = _column_index(ref.group(1))
                cell["row"] = int(ref.group(2))
            else:
                cell["col"] += 1
            cell["type"] = attrs.get("t", "n")
            cell["in_cell"] = True
            text.start()
        elif local == "rPh":
            cell["phonetic"] += 1

    def end(tag: str) -> None:
        local = _local(tag)
        if local == "rPh":
            cell["phonetic"] -= 1
        elif local == "c" and cell["in_cell"]:
            cell["in_cell"] = False
            value = text.value()
            kind = cell["type"]
            row, col = cell["row"], cell["col"]
            if kind == "s":
                value = value.strip()
                if value.isdigit() and len(value) < 10:
                    valid = shared.get(int(value))
                    tally.add_valid(valid, sheet, range(row, row + 1), range(col, col + 1))
            elif kind in ("str", "inlineStr"):
                tally.add(_candidate(value), sheet, row, col)
            elif kind == "n":
                tally.add(_numeric_candidate(value), sheet, row, col)

    def chars(data: str) -> None:
        if cell["in_cell"] and not cell["phonetic"]:
            text.feed(data)

    members.parse(path, _new_parser(start, end, chars))


# -- ods -------------------------------------------------------------------------------

_T_TABLE = _NS_TABLE + " table"
_T_ROW = _NS_TABLE + " table-row"
_T_CELLS = (_NS_TABLE + " table-cell", _NS_TABLE + " covered-table-cell")
_A_NAME = _NS_TABLE + " name"
_A_ROWS = _NS_TABLE + " number-rows-repeated"
_A_COLS = _NS_TABLE + " number-columns-repeated"
_A_VTYPE = _NS_OFFICE + " value-type"
_A_VALUE = _NS_OFFICE + " value"
_T_P = _NS_TEXT + " p"
_T_S = _NS_TEXT + " s"
_T_TAB = _NS_TEXT + " tab"
_T_BREAK = _NS_TEXT + " line-break"
_MAX_REPEAT = 1 << 24


def _repeat(attrs: dict[str, str], key: str) -> int:
    value = attrs.get(key, "1")
    if not value.isdigit() or len(value) > 8:
        return 1
    return max(1, min(int(value), _MAX_REPEAT))


def _scan_ods(fileobj: IO[bytes], tally: _Tally, max_xml_bytes: int) -> None:
    fileobj.seek(0)
    with zipfile.ZipFile(fileobj) as zf:
        members = _Members(zf, tally, max_xml_bytes)
        if "content.xml" not in members.infos:
            raise _Refused("malformed")
        members.check_all(["content.xml"])
        text = _Text()
        st: dict[str, Any] = {
            "tables": 0, "sheet": "", "row": 0, "rows": 1, "col": 0,
            "cell_depth": 0, "cols": 1, "vtype": "", "value": None, "paras": 0,
        }

        def start(tag: str, attrs: dict[str, str]) -> None:
            if st["cell_depth"]:
                if tag in _T_CELLS or tag == _T_TABLE:
                    st["cell_depth"] += 1  # a nested table inside a cell: ignored
                elif tag == _T_P:
                    st["paras"] += 1
                    if st["paras"] > 1:
                        text.feed("\n")
                elif tag == _T_S:
                    text.feed(" " * min(_repeat(attrs, _NS_TEXT + " c"), _TEXT_CAP + 1))
                elif tag in (_T_TAB, _T_BREAK):
                    text.feed("\n")
                return
            if tag == _T_TABLE:
                st["tables"] += 1
                st["sheet"] = _safe_sheet_name(attrs.get(_A_NAME, ""), st["tables"])
                st["row"] = 0
            elif tag == _T_ROW:
                st["rows"] = _repeat(attrs, _A_ROWS)
                st["col"] = 0
                st["row"] += 1
            elif tag in _T_CELLS:
                tally.tick()
                st["cell_depth"] = 1
                st["cols"] = _repeat(attrs, _A_COLS)
                st["vtype"] = attrs.get(_A_VTYPE, "")
                st["value"] = attrs.get(_A_VALUE)
                st["paras"] = 0
                text.start()

        def end(tag: str) -> None:
            if st["cell_depth"] > 1:
                if tag in _T_CELLS or tag == _T_TABLE:
                    st["cell_depth"] -= 1
                return
            if st["cell_depth"] == 1 and tag in _T_CELLS:
                st["cell_depth"] = 0
                value = text.value()
                first = st["col"] + 1
                st["col"] += st["cols"]
                if st["vtype"] == "float" and st["value"] is not None:
                    digits = _numeric_candidate(st["value"])
                elif st["vtype"] in ("string", ""):
                    digits = _candidate(value)
                else:
                    digits = None
                row = st["row"]
                valid = None if digits is None else is_valid_mynumber(digits)
                tally.add_valid(valid, st["sheet"], range(row, row + st["rows"]),
                                range(first, first + st["cols"]))
            elif tag == _T_ROW and not st["cell_depth"]:
                st["row"] += st["rows"] - 1

        def chars(data: str) -> None:
            if st["cell_depth"] == 1 and st["paras"]:
                text.feed(data)

        members.parse("content.xml", _new_parser(start, end, chars))
