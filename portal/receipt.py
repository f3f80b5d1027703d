"""The receipt (受領書) of one upload as a PDF, for the client company.

What goes in: company, upload id, the file name with any My-Number-shaped
run masked, size, SHA-256, purpose, the scan verdict and every step of the
chain of custody with its time.  Never the file's content.  The text comes
from the catalogue of ``lang`` (Japanese first), whatever the caller's UI
language; the font is the certificate's embedded IPAex Gothic.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from .certificate import N_, _translations, font_name, format_when
from .custody import Step, render, scan_verdict
from .models import Company, Upload
from .pii import mask_mynumbers

TITLE = N_("Receipt")


def receipt_pdf(upload: Upload, company: Company, steps: list[Step], lang: str = "ja", *,
                purpose_label: str | None = None, issued_at: datetime | None = None
                ) -> bytes:
    """The receipt of ``upload`` as PDF bytes.  Raises certificate.CertificateError
    when the Japanese font is missing."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    tr = _translations(lang)
    _ = tr.gettext
    font = font_name()
    body = ParagraphStyle("body", fontName=font, fontSize=10, leading=15, wordWrap="CJK")
    small = ParagraphStyle("small", parent=body, fontSize=8.5, leading=12)
    mono = ParagraphStyle("mono", parent=small, wordWrap=None, splitLongWords=True)
    right = ParagraphStyle("right", parent=body, alignment=2)
    heading = ParagraphStyle("heading", parent=body, fontSize=12, leading=18,
                             spaceBefore=4 * mm, spaceAfter=2 * mm)
    title = ParagraphStyle("title", parent=body, fontSize=20, leading=28, alignment=1,
                           spaceAfter=6 * mm)

    def p(text: str, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(escape(text), style)

    def grid(table: Table, header: bool = False) -> Table:
        style = [("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                 ("VALIGN", (0, 0), (-1, -1), "TOP")]
        if header:
            style.append(("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.94, 0.94, 0.94)))
        else:
            style.append(("BACKGROUND", (0, 0), (0, -1), colors.Color(0.94, 0.94, 0.94)))
        table.setStyle(TableStyle(style))
        return table

    issued = issued_at or datetime.now(UTC)
    verdict, verdict_args = scan_verdict(upload)
    verdict_text = _(verdict) % verdict_args if verdict_args else _(verdict)
    if purpose_label is None:
        purpose_label = upload.purpose.label(lang) if upload.purpose else upload.purpose_code
    facts: list[tuple[str, Any]] = [
        (_("Company name"), p(company.name)),
        (_("Upload ID"), p(upload.id)),
        (_("File name"), p(mask_mynumbers(upload.filename))),
        (_("Size"), p(_("%(n)s bytes") % {"n": f"{upload.size:,}"})),
        ("SHA-256", p(upload.sha256, mono)),
        (_("Purpose of use"), p(purpose_label)),
        (_("Received at"), p(format_when(upload.created_at, lang))),
        (_("Scan result"), p(verdict_text)),
    ]
    facts_table = grid(Table([[p(k), v] for k, v in facts], colWidths=[40 * mm, 120 * mm]))

    rows = render(steps, tr.gettext)
    step_table = grid(Table(
        [[p(_("Time"), small), p(_("Step"), small), p(_("By"), small), p(_("Details"), small)]]
        + [[p(format_when(r.at, lang), small), p(r.label, small), p(r.who, small),
            p(r.detail, small)] for r in rows],
        colWidths=[30 * mm, 38 * mm, 30 * mm, 62 * mm], repeatRows=1), header=True)

    story: list[Any] = [
        p(_("Issued on %(date)s") % {"date": format_when(issued, lang, time=False)}, right),
        Spacer(1, 6 * mm),
        p(_(TITLE), title),
        p(_("To: %(company)s") % {"company": company.name}),
        Spacer(1, 4 * mm),
        p(_("We confirm that kinko received the file described below. kinko encrypted the "
            "file as it arrived, so it was never stored unencrypted, and checked it for "
            "viruses.")),
        Spacer(1, 4 * mm),
        facts_table,
        p(_("Chain of custody"), heading),
        step_table,
        Spacer(1, 6 * mm),
        p(_("Times are Japan Standard Time. The SHA-256 value lets you check that the file "
            "the office holds is exactly the file you sent. This receipt holds neither the "
            "file's contents nor any personal number."), small),
    ]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=25 * mm, rightMargin=25 * mm,
                            topMargin=20 * mm, bottomMargin=20 * mm,
                            title=_(TITLE), author="kinko",
                            subject=f"{company.code} {upload.id}", creator="kinko")
    doc.build(story)
    return buf.getvalue()


__all__ = ["receipt_pdf"]
