"""The check-digit finder on crafted csv/xlsx/ods, and its refusal of XML and zip bombs."""

from __future__ import annotations

import io
import random
import re
import time
import tracemalloc
import zipfile

import pytest
from _scanners_helpers import make_zip

from scanners.mynumber import check_digit
from scanners.numbers_scan import CellRef, NumberReport, column_letters, scan_numbers

RNG = random.Random(4242)


def valid_number(lead: str = "") -> str:
    first = lead + "".join(RNG.choice("0123456789") for _ in range(11 - len(lead)))
    return first + str(check_digit(first))


def invalid_number() -> str:
    good = valid_number()
    return good[:11] + str((int(good[11]) + 1 + RNG.randrange(9)) % 10)


def scan(data: bytes, kind: str, **kw: object) -> NumberReport:
    return scan_numbers(io.BytesIO(data), kind, **kw)  # type: ignore[arg-type]


def assert_no_digits(report: NumberReport, *numbers: str) -> None:
    text = repr(report)
    assert not re.search(r"[0-9]{12}", text)
    for n in numbers:
        assert n not in text and n[:6] not in text


def test_column_letters() -> None:
    assert [column_letters(i) for i in (1, 2, 26, 27, 52, 703)] == [
        "A", "B", "Z", "AA", "AZ", "AAA"]


# -- csv -------------------------------------------------------------------------------


def test_csv_valid_invalid_and_separators() -> None:
    v1, v2, v3 = valid_number(), valid_number(), valid_number()
    bad1, bad2 = invalid_number(), invalid_number()
    fw = v3.translate({ord(c): chr(0xFF10 + int(c)) for c in "0123456789"})
    rows = [
        "氏名,個人番号,メモ",
        f"山田,{v1},",
        f"佐藤,{v2[:4]}-{v2[4:8]}-{v2[8:]},",
        f"鈴木,{fw[:4]}\u3000{fw[4:8]}－{fw[8:]},",
        f"田中,{bad1[:4]} {bad1[4:8]} {bad1[8:]},",
        f"高橋,x,{bad2}",
        "電話,0312345678,12345678901234",  # neither is 12 digits
        f"文,番号は{v1}です,",  # not only digits
    ]
    data = ("\r\n".join(rows) + "\r\n").encode("utf-8")
    report = scan(data, "csv")
    assert report.error is None
    assert report.found == 5
    assert report.invalid == [CellRef("", 5, "B"), CellRef("", 6, "C")]
    assert not report.truncated
    assert_no_digits(report, v1, v2, v3, bad1, bad2)


def test_csv_shift_jis_and_bom() -> None:
    good, bad = valid_number(), invalid_number()
    text = f"氏名,番号\n山田太郎,{good}\n佐藤花子,{bad}\n"
    for data in (text.encode("cp932"), b"\xef\xbb\xbf" + text.encode("utf-8")):
        report = scan(data, "csv")
        assert (report.found, report.invalid, report.error) == (
            2, [CellRef("", 3, "B")], None)


def test_csv_excel_float_and_quoted_multiline() -> None:
    good = "123456789018"
    rows = 'a,b\n"メモ\n二行目",1.23456789018E+11\nx,"1234 5678 9017"\n'
    report = scan(rows.encode(), "csv")
    assert report.found == 2
    assert report.invalid == [CellRef("", 3, "B")]
    assert_no_digits(report, good)


def test_csv_invalid_list_is_capped() -> None:
    bad = invalid_number()
    data = "".join(f"{bad}\n" for _ in range(1500)).encode()
    report = scan(data, "csv")
    assert report.found == 1500 and len(report.invalid) == 1000 and report.truncated


def test_csv_200k_rows_completes_with_bounded_memory() -> None:
    good, bad = valid_number(), invalid_number()
    data = "".join(f"社員{i},{good if i % 7 else bad},東京都\n" for i in range(200_000)).encode()
    tracemalloc.start()
    try:
        report = scan(data, "csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.error is None and report.found == 200_000
    assert len(report.invalid) == 1000 and report.truncated
    assert peak < 8 << 20  # the file is ~6 MB; the finder holds only a line at a time


def test_cell_limit_refuses_without_counts() -> None:
    data = "".join(f"{valid_number()}\n" for _ in range(100)).encode()
    report = scan(data, "csv", max_cells=50)
    assert report.error == "too_large" and report.found == 0 and report.invalid == []


def test_time_limit() -> None:
    data = "".join(f"{valid_number()},a,b\n" for _ in range(20_000)).encode()
    report = scan(data, "csv", max_seconds=0)
    assert report.error == "timeout" and report.found == 0


def test_unknown_kind() -> None:
    assert scan(b"x", "pdf").error == "unsupported"


# -- xlsx ------------------------------------------------------------------------------


def openpyxl_book(sheets: dict[str, list[list[object]]]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_xlsx_strings_ints_floats_two_sheets() -> None:
    g1, g2, g3, g4 = (valid_number() for _ in range(4))
    g3 = valid_number("1")  # no leading zero: stored as a number
    bad_s, bad_n = invalid_number(), "1" + invalid_number()[1:]
    data = openpyxl_book({
        "社員": [
            ["氏名", "個人番号"],
            ["山田", g1],
            ["佐藤", f"{g2[:4]}-{g2[4:8]}-{g2[8:]}"],
            ["鈴木", int(g3)],
            ["田中", bad_s],
            ["重複", g1],  # the same shared string again counts again
        ],
        "扶養": [
            ["x", "y", "z"],
            [None, None, float(int(bad_n))],
            [None, 3.5, "　" + g4 + "　"],
        ],
    })
    report = scan(data, "xlsx")
    assert report.error is None
    assert report.found == 7
    assert report.invalid == [CellRef("社員", 5, "B"), CellRef("扶養", 2, "C")]
    assert_no_digits(report, g1, g2, g3, g4, bad_s, bad_n)


def xlsx_parts(sheet_xml: str, shared_xml: str | None = None) -> bytes:
    wb = ('<?xml version="1.0"?><workbook xmlns="http://schemas.openxmlformats.org/'
          'spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/'
          'officeDocument/2006/relationships"><sheets><sheet name="S" sheetId="1" '
          'r:id="rId1"/></sheets></workbook>')
    rels = ('<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
            'package/2006/relationships"><Relationship Id="rId1" Type="x" '
            'Target="/xl/worksheets/sheet1.xml"/></Relationships>')
    entries = [("[Content_Types].xml", b"<Types/>"), ("xl/workbook.xml", wb.encode()),
               ("xl/_rels/workbook.xml.rels", rels.encode()),
               ("xl/worksheets/sheet1.xml", sheet_xml.encode())]
    if shared_xml is not None:
        entries.append(("xl/sharedStrings.xml", shared_xml.encode()))
    return make_zip(entries)


def test_xlsx_excel_float_notation_inline_strings_and_phonetics() -> None:
    shared = ('<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
              '<si><t>1234</t><rPh><t>ヨミ</t></rPh></si>'
              '<si><r><t>1234 5678</t></r><r><t> 9018</t></r></si></sst>')
    sheet = ('<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
             '<sheetData><row r="3"><c r="B3"><v>1.23456789018E+11</v></c>'
             '<c r="C3" t="s"><v>0</v></c><c r="D3" t="s"><v>1</v></c>'
             '<c r="E3" t="inlineStr"><is><t>123456789017</t></is></c>'
             '<c r="F3"><v>123456789017.5</v></c></row></sheetData></worksheet>')
    report = scan(xlsx_parts(sheet, shared), "xlsx")
    assert report.error is None
    assert report.found == 3
    assert report.invalid == [CellRef("S", 3, "E")]


def test_xlsx_entity_bomb_refused_quickly() -> None:
    lol = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
           + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">'
                     for i in range(1, 10)).replace("&lol0;", "&lol;")
           + ']><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
           '<si><t>&lol9;</t></si></sst>')
    sheet = '<worksheet><sheetData/></worksheet>'
    tracemalloc.start()
    started = time.monotonic()
    try:
        report = scan(xlsx_parts(sheet, lol), "xlsx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.error == "unsafe_xml" and report.found == 0
    assert peak < 4 << 20 and time.monotonic() - started < 5


def test_xlsx_external_entity_and_undeclared_entity() -> None:
    xxe = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
           '<worksheet><sheetData><row><c t="inlineStr"><is><t>&e;</t></is></c></row>'
           '</sheetData></worksheet>')
    assert scan(xlsx_parts(xxe), "xlsx").error == "unsafe_xml"
    undeclared = '<worksheet><sheetData><row><c><v>&e;</v></c></row></sheetData></worksheet>'
    assert scan(xlsx_parts(undeclared), "xlsx").error == "malformed"


def test_xlsx_zip_bomb_refused_without_reading() -> None:
    bomb = b"<worksheet><sheetData>" + b" " * (40 << 20) + b"</sheetData></worksheet>"
    wb_less = make_zip([("[Content_Types].xml", b"<Types/>"), ("xl/workbook.xml", b"<w/>"),
                        ("xl/worksheets/sheet1.xml", bomb)])
    with zipfile.ZipFile(io.BytesIO(wb_less)) as zf:
        info = zf.getinfo("xl/worksheets/sheet1.xml")
        assert info.file_size > 200 * info.compress_size  # ratio ~1000, under the byte cap
    started = time.monotonic()
    report = scan(wb_less, "xlsx")
    assert report.error == "too_large" and report.found == 0 and report.invalid == []
    assert time.monotonic() - started < 2


def test_xlsx_member_over_byte_cap_refused() -> None:
    rows = "".join(f'<row r="{i}"><c r="A{i}"><v>{valid_number("1")}</v></c></row>'
                   for i in range(1, 2000))
    data = xlsx_parts(f"<worksheet><sheetData>{rows}</sheetData></worksheet>")
    assert scan(data, "xlsx").found == 1999
    report = scan(data, "xlsx", max_xml_bytes=10_000)
    assert report.error == "too_large" and report.found == 0


def test_xlsx_malformed_zip() -> None:
    assert scan(b"PK\x03\x04 not really a zip", "xlsx").error == "malformed"


# -- ods -------------------------------------------------------------------------------


def ods(content: str) -> bytes:
    return make_zip([("mimetype", b"application/vnd.oasis.opendocument.spreadsheet"),
                     ("content.xml", content.encode()),
                     ("META-INF/manifest.xml", b"<manifest/>")], first_stored=True)


ODS_HEAD = ('<?xml version="1.0" encoding="UTF-8"?><office:document-content '
            'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
            'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
            'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0">'
            '<office:body><office:spreadsheet>')
ODS_TAIL = '</office:spreadsheet></office:body></office:document-content>'


def test_ods_strings_floats_and_repeats() -> None:
    good, bad = valid_number(), invalid_number()
    body = (
        '<table:table table:name="一覧">'
        '<table:table-row><table:table-cell office:value-type="string"><text:p>氏名</text:p>'
        '</table:table-cell></table:table-row>'
        '<table:table-row><table:table-cell table:number-columns-repeated="2"/>'
        f'<table:table-cell office:value-type="string"><text:p>{good[:4]}<text:s/>'
        f'{good[4:8]}-{good[8:]}</text:p></table:table-cell>'
        f'<table:table-cell office:value-type="float" office:value="{bad}">'
        '<text:p>1.23E+11</text:p></table:table-cell></table:table-row>'
        '<table:table-row table:number-rows-repeated="3">'
        f'<table:table-cell office:value-type="string" table:number-columns-repeated="2">'
        f'<text:p>{bad}</text:p></table:table-cell></table:table-row>'
        '<table:table-row table:number-rows-repeated="1048000">'
        '<table:table-cell table:number-columns-repeated="16384"/></table:table-row>'
        f'<table:table-row><table:table-cell office:value-type="float" office:value="{good}">'
        '</table:table-cell></table:table-row>'
        '</table:table>'
        '<table:table table:name="２枚目"><table:table-row>'
        f'<table:table-cell office:value-type="string"><text:p>{bad}</text:p>'
        '<text:p>二段落目</text:p></table:table-cell>'
        f'<table:table-cell office:value-type="string"><text:p>{bad}</text:p>'
        '</table:table-cell></table:table-row></table:table>'
    )
    started = time.monotonic()
    report = scan(ods(ODS_HEAD + body + ODS_TAIL), "ods")
    assert time.monotonic() - started < 2  # huge repeats are never expanded
    assert report.error is None
    assert report.found == 1 + 1 + 6 + 1 + 1
    assert report.invalid == [
        CellRef("一覧", 2, "D"),
        CellRef("一覧", 3, "A"), CellRef("一覧", 3, "B"),
        CellRef("一覧", 4, "A"), CellRef("一覧", 4, "B"),
        CellRef("一覧", 5, "A"), CellRef("一覧", 5, "B"),
        CellRef("２枚目", 1, "B"),
    ]
    assert_no_digits(report, good, bad)


def test_ods_huge_repeat_of_an_invalid_cell_is_counted_not_expanded() -> None:
    bad = invalid_number()
    body = ('<table:table table:name="T"><table:table-row table:number-rows-repeated="1000000">'
            '<table:table-cell office:value-type="string" table:number-columns-repeated="1000">'
            f'<text:p>{bad}</text:p></table:table-cell></table:table-row></table:table>')
    report = scan(ods(ODS_HEAD + body + ODS_TAIL), "ods")
    assert report.found == 1_000_000_000
    assert len(report.invalid) == 1000 and report.truncated


def test_sheet_named_like_a_number_is_not_echoed() -> None:
    bad = invalid_number()
    body = (f'<table:table table:name="{bad}"><table:table-row>'
            f'<table:table-cell office:value-type="string"><text:p>{bad}</text:p>'
            '</table:table-cell></table:table-row></table:table>')
    report = scan(ods(ODS_HEAD + body + ODS_TAIL), "ods")
    assert report.invalid == [CellRef("#1", 1, "A")]
    assert_no_digits(report, bad)


def test_ods_entity_bomb_and_zip_bomb() -> None:
    lol = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
           '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>' + ODS_HEAD + ODS_TAIL)
    assert scan(ods(lol), "ods").error == "unsafe_xml"
    bomb = ODS_HEAD + " " * (30 << 20) + ODS_TAIL
    report = scan(ods(bomb), "ods")
    assert report.error == "too_large" and report.found == 0


@pytest.mark.parametrize("kind", ["xlsx", "ods"])
def test_encrypted_members_refused(kind: str) -> None:
    from _scanners_helpers import zipcrypto_flagged_zip

    assert scan(zipcrypto_flagged_zip("content.xml"), kind).error == "encrypted"
