"""Test data builders shared by the scanners tests (EICAR at runtime, crafted zips)."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from typing import Protocol


class _Feedable(Protocol):
    def feed(self, data: bytes) -> bool: ...


def feed_in_chunks(scan: _Feedable, data: bytes, chunk: int = 128 << 10) -> bool:
    """Feed ``data`` to a StreamScan or FdScan ``chunk`` bytes at a time; False if any
    feed said the session was abandoned."""
    ok = True
    for start in range(0, len(data), chunk):
        ok = scan.feed(data[start:start + chunk]) and ok
    return ok


def eicar_bytes() -> bytes:
    """The 68-byte EICAR test string, assembled so the repository never contains it."""
    return ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*").encode()


def zipcrypto_flagged_zip(name: str = "secret.txt", payload: bytes = b"x" * 64) -> bytes:
    """A one-entry zip whose entry has general-purpose flag bit 0 (encrypted) set.

    The entry data is a 12-byte ZipCrypto header plus opaque bytes, i.e. what a real
    password-protected entry looks like to anyone without the password.
    """
    data = os.urandom(12) + payload
    fname = name.encode()
    crc = zlib.crc32(payload)
    local = (
        struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            20,
            0x1,
            0,
            0,
            0,
            crc,
            len(data),
            len(payload),
            len(fname),
            0,
        )
        + fname
        + data
    )
    central = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0x1,
            0,
            0,
            0,
            crc,
            len(data),
            len(payload),
            len(fname),
            0,
            0,
            0,
            0,
            0,
            0,
        )
        + fname
    )
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + eocd


def make_zip(entries: list[tuple[str, bytes]], *, first_stored: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, (name, data) in enumerate(entries):
            method = zipfile.ZIP_STORED if (first_stored and i == 0) else zipfile.ZIP_DEFLATED
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def make_xlsx(extra: list[tuple[str, bytes]] | None = None) -> bytes:
    """A real workbook made by openpyxl, optionally with extra zip entries appended."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["氏名", "個人番号"])
    ws.append(["山田太郎", "123456789018"])
    buf = io.BytesIO()
    wb.save(buf)
    if extra:
        with zipfile.ZipFile(buf, "a") as zf:
            for name, data in extra:
                zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()
