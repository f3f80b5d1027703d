"""No plaintext at rest: a unique marker uploaded by form (over Werkzeug's
500 KiB spooling threshold) and by API is nowhere on disk afterwards."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from .harness import Stack, csrf_from


def files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            with path.open("rb") as fh:
                tail = b""
                while chunk := fh.read(1 << 20):
                    if needle in tail + chunk:
                        hits.append(path)
                        break
                    tail = chunk[-len(needle):]
        except OSError:
            continue
    return hits


def test_marker_is_nowhere_on_disk_after_the_chain(stack: Stack, acme_token: str) -> None:
    marker = f"KINKO-MARKER-{uuid.uuid4().hex}".encode()
    big = b"name,value\n" + (b"row," + marker + b"\n") * ((2 << 20) // (len(marker) + 5))
    big += os.urandom(16).hex().encode()
    assert len(big) > 600 * 1024
    small = b"a,b\n" + marker + b",1\n"

    client = stack.client("acme", "hr", "acme-Passw0rd")
    r = stack.form_upload(client, big, "big.csv")
    assert r.status_code == 303
    form_id = r.headers["Location"].rsplit("/", 1)[-1]
    api_id = stack.api_upload(acme_token, small, "small.csv").json()["id"]
    for upload_id in (form_id, api_id):
        stack.wait_for(acme_token, upload_id, {"clean"})
    office = stack.office("boss")
    for upload_id in (form_id, api_id):
        page = office.get(f"{stack.office_url}/uploads/{upload_id}")
        office.post(f"{stack.office_url}/uploads/{upload_id}/pull",
                    data={"csrf_token": csrf_from(page.text)})
        stack.wait_for(acme_token, upload_id, {"vaulted"})
    page = office.get(f"{stack.office_url}/uploads/{form_id}")
    r = office.post(f"{stack.office_url}/uploads/{form_id}/download", data={
        "csrf_token": csrf_from(page.text), "purpose": "koyo",
        "code": stack.totps["boss"].code()})
    assert r.content == big  # the office can read it back ...

    # ... yet no file under KINKO_HOME, the temp directory or tmpfs has it.
    roots = {stack.home, Path(tempfile.gettempdir()), Path("/dev/shm")}
    for root in roots:  # on the scale profile this includes PostgreSQL's data directory
        assert files_containing(root, marker) == [], root
    for area in ("dropzone", "vault"):  # S3 objects on the scale profile, files otherwise
        assert [o.name for o in stack.objects(area) if marker in o.read_bytes()] == []
