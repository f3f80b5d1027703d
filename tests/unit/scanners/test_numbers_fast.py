"""The csv fast path of the number check gives exactly the reference parser's report.

Property style: seeded random CSVs with everything the reference handles (quotes,
doubled quotes, quoted line breaks, hyphenated, spaced and full-width numbers, Excel
floats, BOM, CRLF/CR/LF, Shift_JIS, empty lines, a missing final line break, blocks
far apart), each scanned twice: once through ``_scan_csv_fast`` and once through
``_scan_csv_reference`` (``csv.reader`` over the lines, as before).
"""

from __future__ import annotations

import codecs
import io
import random

import pytest

from scanners import numbers_scan
from scanners.mynumber import check_digit, invalid_indexes, is_valid_mynumber
from scanners.numbers_scan import NumberReport, scan_numbers

FULL = {ord(c): chr(0xFF10 + int(c)) for c in "0123456789"}


def _number(rng: random.Random, valid: bool) -> str:
    first = "".join(rng.choice("0123456789") for _ in range(11))
    digit = check_digit(first)
    return first + str(digit if valid else (digit + 1 + rng.randrange(9)) % 10)


def _cell(rng: random.Random) -> str:
    n = _number(rng, rng.random() < 0.5)
    kind = rng.randrange(22)
    if kind < 6:
        return n
    return [
        f"{n[:4]}-{n[4:8]}-{n[8:]}",
        f"{n[:4]} {n[4:8]} {n[8:]}",
        n.translate(FULL),
        f"{n[:4]}\u3000{n[4:8]}\uff0d{n[8:]}".translate(FULL),
        f" {n} ",
        f"{n[0]}.{n[1:]}E+11",
        "1e11",
        "0" + n,
        n + ".0",
        n[:11],
        "山田 太郎",
        "",
        "x" * rng.randrange(60, 70),
        f'"{n}"',
        f'"{n[:6]},{n[6:]}"',
        f'"複数行\n{n}"',
        f'"a ""quoted"" {n}"',
        f'"{n}\r\n"',
        f'x"{n}',
    ][kind - 6]


def _digits_cell(rng: random.Random) -> str:
    # Only digits: the fast path's cut-at-commas case (cells of 12 and 13+ digits mixed).
    n = _number(rng, rng.random() < 0.5)
    return rng.choice([n, n, n, n[:rng.randrange(12)], n + n[:rng.randrange(1, 12)], ""])


def _csv(rng: random.Random, rows: int, digits_only: bool = False) -> str:
    ends = rng.choice([["\n"], ["\r\n"], ["\r"], ["\n", "\r\n", "\r"]])
    make = _digits_cell if digits_only else _cell
    lines = []
    for _ in range(rows):
        if rng.random() < 0.05:
            lines.append("")
            continue
        lines.append(",".join(make(rng) for _ in range(rng.randrange(1, 8))))
    text = "".join(line + rng.choice(ends) for line in lines)
    if rng.random() < 0.3:
        text = text.rstrip("\r\n")
    return text


def _encode(rng: random.Random, text: str) -> bytes:
    choice = rng.randrange(3)
    if choice == 0:
        return text.encode("utf-8")
    if choice == 1:
        return codecs.BOM_UTF8 + text.encode("utf-8")
    return text.encode("cp932")


def _both(data: bytes, monkeypatch: pytest.MonkeyPatch, **kw: object
          ) -> tuple[NumberReport, NumberReport]:
    fast = scan_numbers(io.BytesIO(data), "csv", **kw)  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(numbers_scan, "_scan_csv_fast", numbers_scan._scan_csv_reference)
        reference = scan_numbers(io.BytesIO(data), "csv", **kw)  # type: ignore[arg-type]
    return fast, reference


@pytest.mark.parametrize("seed", range(60))
def test_fast_path_matches_the_reference_on_random_csvs(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    text = _csv(rng, rng.randrange(1, 300), digits_only=seed % 3 == 1)
    if seed % 3 == 0:  # quote-free: all of it through the fast path
        text = text.replace('"', "")
    data = _encode(rng, text)
    if seed % 4 == 0:
        monkeypatch.setattr(numbers_scan, "MAX_INVALID", rng.randrange(1, 20))
    kw = {"max_cells": rng.randrange(50, 1500)} if seed % 5 == 0 else {}
    fast, reference = _both(data, monkeypatch, **kw)
    assert fast == reference
    if not kw:
        assert reference.error is None


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_matches_the_reference_across_blocks(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Several fast blocks and reads, quoted records across their edges, a cap on the
    # invalid list reached in the middle.
    rng = random.Random(1000 + seed)
    text = _csv(rng, 12_000, digits_only=seed >= 2)
    if seed == 1:  # mostly quote-free, with a few quoted line breaks far apart
        text = text.replace('"', "")
        lines = text.split("\n")
        for i in range(0, len(lines), 2500):
            lines[i] = f'"first\n{_number(rng, False)}",x'
        text = "\n".join(lines)
    data = _encode(rng, text)
    monkeypatch.setattr(numbers_scan, "MAX_INVALID", 3000)
    fast, reference = _both(data, monkeypatch)
    assert reference.error is None and reference.found > 1000
    assert fast == reference


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_invalid_list_cap_at_its_edge(extra: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(extra)
    monkeypatch.setattr(numbers_scan, "MAX_INVALID", 10)
    for header in ("", "name,number\n"):  # the cut-at-commas case and the pattern case
        rows = [f"{_number(rng, True)},{_number(rng, False)}" for _ in range(10 + extra)]
        fast, reference = _both((header + "\n".join(rows)).encode(), monkeypatch)
        assert fast == reference and reference.truncated == (extra > 0)
        assert len(reference.invalid) == min(10, 10 + extra)


def test_fast_path_matches_on_lines_longer_than_the_field_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    n = _number(rng, False)
    long_ok = ",".join(["abc"] * 40_000)  # a 160,000-character line of short fields
    data = f"{n},x\n{long_ok}\n{n}\n{'9' * 140_000}\n{n}\n".encode()
    fast, reference = _both(data, monkeypatch)
    assert fast == reference and reference.error == "malformed"  # field over the limit
    data = f"{n},x\n{long_ok}\r\n{n}\n".encode()
    fast, reference = _both(data, monkeypatch)
    assert fast == reference and reference.error is None and len(reference.invalid) == 2
    data = ("1" * (numbers_scan.CSV_LINE_CAP + 10)).encode()
    fast, reference = _both(data, monkeypatch)
    assert fast == reference and reference.error == "too_large"


@pytest.mark.parametrize("data", [
    b"123456789012\x00,1\n",
    b"\xff\xfe,123456789012\n",
    "caf\u00e9,123456789012\n".encode("latin-1"),
    b"",
    b"\n\n\r\n",
    b'"unterminated,123456789012\n',
])
def test_fast_path_matches_on_odd_files(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, reference = _both(data, monkeypatch)
    assert fast == reference


def test_invalid_indexes_is_is_valid_mynumber() -> None:
    rng = random.Random(11)
    for _ in range(200):
        numbers = ["".join(rng.choice("0123456789") for _ in range(12))
                   for _ in range(rng.randrange(0, 80))]
        bad = [i for i, x in enumerate(numbers) if not is_valid_mynumber(x)]
        limit = rng.randrange(0, 90)
        assert invalid_indexes(numbers, limit) == (len(bad), bad[:limit])


def test_fast_path_matches_on_a_digits_heavy_csv(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 60,000 rows like the benchmark's (two 12-digit columns and a short one).
    rng = random.Random(5)
    rows = [f"{_number(rng, i % 3 == 0)},{_number(rng, True)},{i % 99999}"
            for i in range(60_000)]
    data = ("\n".join(rows) + "\n").encode()
    fast = scan_numbers(io.BytesIO(data), "csv")  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(numbers_scan, "_scan_csv_fast", numbers_scan._scan_csv_reference)
        reference = scan_numbers(io.BytesIO(data), "csv")  # type: ignore[arg-type]
    # Speed is measured by bench/e2e.py (ratios in one run), never asserted here.
    assert fast == reference and fast.found == 120_000 and fast.truncated


# -- the cell count taken before the scan (numbers_scan._csv_over_cells) -----------------


def _parser_cells(data: bytes) -> int:
    """The cells the parser counts (no limit, no precount)."""
    encoding = "utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8"
    for enc in (encoding, "cp932"):
        tally = numbers_scan._Tally(1 << 40, 60)
        try:
            numbers_scan._scan_csv_fast(io.BytesIO(data), enc, tally)
        except UnicodeDecodeError:
            continue
        return tally.cells
    raise AssertionError("undecodable")


@pytest.mark.parametrize("seed", range(40))
def test_precount_agrees_with_the_parser_at_the_limit(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5000 + seed)
    text = _csv(rng, rng.randrange(1, 400), digits_only=seed % 2 == 0).replace('"', "")
    data = _encode(rng, text)
    cells = _parser_cells(data)
    # Small reads put "\r\n" pairs and the last byte on every side of a read's edge.
    monkeypatch.setattr(numbers_scan, "_FAST_READ", rng.choice([1, 2, 7, 64, 1 << 18]))
    for limit in (cells - 1, cells, cells + 1):
        over = numbers_scan._csv_over_cells(io.BytesIO(data), numbers_scan._Tally(limit, 60))
        assert over == (cells > limit), (limit, cells)
    monkeypatch.undo()
    # ... and the report at the limit is the one the parser alone gives.
    for limit in (cells - 1, cells):
        with monkeypatch.context() as m:
            m.setattr(numbers_scan, "_csv_over_cells", lambda *_: False)
            alone = scan_numbers(io.BytesIO(data), "csv", max_cells=limit)  # type: ignore[arg-type]
        assert scan_numbers(io.BytesIO(data), "csv", max_cells=limit) == alone  # type: ignore[arg-type]
        assert (alone.error == "too_large") == (cells > limit)


def test_precount_leaves_quoted_csvs_to_the_parser() -> None:
    rng = random.Random(3)
    quoted = "".join(f'"{_number(rng, True)}",x\n' for _ in range(100)).encode()
    tally = numbers_scan._Tally(10, 60)
    assert numbers_scan._csv_over_cells(io.BytesIO(quoted), tally) is False
    assert scan_numbers(io.BytesIO(quoted), "csv", max_cells=10).error == "too_large"  # type: ignore[arg-type]


class _CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        self.read_bytes += len(out)
        return out


def test_a_csv_far_over_the_limit_is_refused_early() -> None:
    rng = random.Random(4)
    row = ",".join(_number(rng, True) for _ in range(8)) + "\n"
    data = (row * 100_000).encode()  # 800,000 cells, 10 MB
    reader = _CountingReader(data)
    report = scan_numbers(reader, "csv", max_cells=50_000)  # type: ignore[arg-type]
    assert report.error == "too_large" and report.found == 0
    assert reader.read_bytes < len(data) // 10  # stopped a little past the limit
