"""The client's own view over the real stack: the chain of custody of a file,
the office's download in it (who, for what), and the receipt (受領書) as a
Japanese PDF with the SHA-256 and never a personal number."""

from __future__ import annotations

import io
import re
import uuid

import requests
from pypdf import PdfReader

from .harness import Stack
from .test_chain import office_download

IN_CONTENT = "987654321098"
IN_NAME = "123456789018"


def pdf_text(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF")
    return re.sub(r"\s+", "", "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages))


def test_the_client_sees_the_chain_and_downloads_a_receipt(
        stack: Stack, acme_token: str, beta_token: str) -> None:
    content = (f"氏名,個人番号\n山田太郎,{IN_CONTENT}\n# {uuid.uuid4()}\n").encode()
    r = stack.api_upload(acme_token, content, f"山田_{IN_NAME}.csv", purpose="koyo")
    assert r.status_code == 201, r.text
    up = r.json()
    upload_id, sha = up["id"], up["sha256"]
    stack.wait_for(acme_token, upload_id, {"clean"})
    stack.kinko("vault", "pull", upload_id, "--staff", "boss")
    stack.wait_for(acme_token, upload_id, {"vaulted"})
    r = office_download(stack, stack.office("boss"), "boss", upload_id, purpose="koyo")
    assert r.status_code == 200 and r.content == content

    # The upload page: every step, the office's download with who and why.
    client = stack.client("acme", "hr", "acme-Passw0rd")
    page = client.get(f"{stack.client_url}/uploads/{upload_id}")
    assert page.status_code == 200
    steps = re.findall(r'<tr class="step-([a-z_]+)">(.*?)</tr>', page.text, re.S)
    assert [code for code, _ in steps] == [
        "received", "scan_started", "scan_clean", "vaulted", "dropzone_deleted", "downloaded"]
    received, downloaded = steps[0][1], steps[-1][1]
    assert sha in received
    assert "boss" in downloaded and "雇用保険届出" in downloaded  # display name, purpose label
    assert "受領書" in page.text
    assert f"/uploads/{upload_id}/receipt.pdf" in page.text

    # The receipt, by the API (bearer token) and by the page (session).
    api = requests.get(f"{stack.client_url}/api/v1/uploads/{upload_id}/receipt",
                       headers={"Authorization": f"Bearer {acme_token}"}, verify=stack.cert,
                       timeout=30)
    assert api.status_code == 200, api.text[:300]
    assert api.headers["Content-Type"] == "application/pdf"
    web = client.get(f"{stack.client_url}/uploads/{upload_id}/receipt.pdf")
    assert web.status_code == 200
    assert web.headers["Content-Type"] == "application/pdf"
    assert web.headers["Content-Disposition"] == f'attachment; filename="receipt-{upload_id}.pdf"'
    for pdf in (api.content, web.content):
        text = pdf_text(pdf)
        assert "受領書" in text and "株式会社アクメ" in text
        assert sha in text
        assert "雇用保険届出" in text and "boss" in text
        assert IN_NAME not in text and IN_CONTENT not in text
        assert IN_NAME.encode() not in pdf and IN_CONTENT.encode() not in pdf

    # Another company gets nothing, not even a hint.
    other = requests.get(f"{stack.client_url}/api/v1/uploads/{upload_id}/receipt",
                         headers={"Authorization": f"Bearer {beta_token}"}, verify=stack.cert,
                         timeout=30)
    assert other.status_code == 404
    assert other.headers["Content-Type"].startswith("application/json")
    assert upload_id not in other.text
    beta = stack.client("beta", "hr", "beta-Passw0rd")
    r = beta.get(f"{stack.client_url}/uploads/{upload_id}/receipt.pdf", allow_redirects=False)
    assert r.status_code == 404 and not r.content.startswith(b"%PDF")
