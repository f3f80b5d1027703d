"""The disposal certificate (廃棄証明書) as a PDF, printed from a disposal record.

Only what the record holds goes in: company, upload id, kind, purpose,
size, dates, who proposed and approved, reason and method.  Never a file
name, a digest or anything read from the file.  The text comes from the
catalogue of ``lang`` (Japanese first), whatever the caller's UI language.

The Japanese font is IPAexGothic from Debian's ``fonts-ipaexfont-gothic``
(scripts/install-system-deps.sh), embedded (subset) so that the PDF shows
the same on any reader.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from .i18n import N_
from .i18n import translations as _translations
from .models import Company, DisposalRecord

JST = ZoneInfo("Asia/Tokyo")
FONT_NAME = "IPAexGothic"
FONT_PATHS = (
    Path("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"),
    Path("/usr/share/fonts/truetype/ipaexfont-gothic/ipaexg.ttf"),
    Path("/usr/share/fonts/truetype/fonts-japanese-gothic.ttf"),
)




# Text stored in records in English (data), shown in the reader's language.
METHODS = {
    "vault object and all versions deleted; data key destroyed": N_(
        "The stored data (every copy and version) was deleted and its encryption key "
        "destroyed, so that no copy, including backups, can be decrypted."),
}


class CertificateError(Exception):
    """The certificate cannot be produced (e.g. the Japanese font is missing)."""




@lru_cache(maxsize=1)
def font_name() -> str:
    """Register the Japanese TrueType font once; raises CertificateError without it."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    for path in FONT_PATHS:
        if path.exists():
            pdfmetrics.registerFont(TTFont(FONT_NAME, str(path)))
            return FONT_NAME
    raise CertificateError("Japanese font not found: install the Debian package "
                           "fonts-ipaexfont-gothic (scripts/install-system-deps.sh)")


def format_when(value: datetime | None, lang: str, *, time: bool = True) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    local = value.astimezone(JST)
    if lang == "ja":
        day = f"{local.year}年{local.month}月{local.day}日"
        return f"{day} {local:%H:%M}" if time else day
    return f"{local:%Y-%m-%d %H:%M} JST" if time else f"{local:%Y-%m-%d}"


def certificate_pdf(record: DisposalRecord, company: Company, lang: str = "ja", *,
                    purpose_label: str | None = None, issued_at: datetime | None = None
                    ) -> bytes:
    """The certificate for ``record`` as PDF bytes.  Raises CertificateError."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    tr = _translations(lang)
    _ = tr.gettext
    font = font_name()
    body = ParagraphStyle("body", fontName=font, fontSize=10.5, leading=16, wordWrap="CJK")
    small = ParagraphStyle("small", parent=body, fontSize=9, leading=13)
    right = ParagraphStyle("right", parent=body, alignment=2)
    title = ParagraphStyle("title", parent=body, fontSize=20, leading=28, alignment=1,
                           spaceAfter=6 * mm)

    def p(text: str, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(escape(text), style)

    issued = issued_at or datetime.now(UTC)
    method = METHODS.get(record.method)
    rows: list[tuple[str, str]] = [
        (_("Company"), f"{company.name} ({company.code})"),
        (_("Upload ID"), record.upload_id),
        (_("Type of file"), record.kind or "—"),
        (_("Purpose of use"), purpose_label or record.purpose_code),
        (_("Size"), _("%(n)s bytes") % {"n": f"{record.size:,}"}),
        (_("Received at"), format_when(record.received_at, lang)),
        (_("Disposal proposed by"), record.proposed_by),
        (_("Proposed on"), format_when(record.proposed_at, lang)),
        (_("Disposal approved by"), record.approved_by),
        (_("Disposed on"), format_when(record.approved_at, lang)),
        (_("Reason"), record.reason or "—"),
        (_("Method of disposal"), tr.gettext(method) if method else record.method),
    ]
    table = Table([[p(k), p(v)] for k, v in rows], colWidths=[45 * mm, 115 * mm])
    table.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
        ("BACKGROUND", (0, 0), (0, -1), colors.Color(0.94, 0.94, 0.94)),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]))
    story: list[Any] = [
        p(_("Certificate No. %(number)s") % {"number": record.id}, right),
        p(_("Issued on %(date)s") % {"date": format_when(issued, lang, time=False)}, right),
        Spacer(1, 8 * mm),
        p(_("Certificate of Disposal"), title),
        p(_("To: %(company)s") % {"company": company.name}),
        Spacer(1, 4 * mm),
        p(_("We certify that the file described below, which contained specific personal "
            "information (My Number) entrusted to our office, was disposed of by deleting "
            "the stored data and destroying its encryption key, so that it can no longer "
            "be restored or read.")),
        Spacer(1, 6 * mm),
        table,
        Spacer(1, 6 * mm),
        p(_("This certificate was issued from the office's disposal record. The record "
            "holds neither the file's contents nor any personal number."), small),
    ]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=25 * mm, rightMargin=25 * mm,
                            topMargin=20 * mm, bottomMargin=20 * mm,
                            title=_("Certificate of Disposal"), author="kinko",
                            subject=f"{company.code} #{record.id}", creator="kinko")
    doc.build(story)
    return buf.getvalue()


__all__ = ["CertificateError", "certificate_pdf", "font_name", "format_when"]
