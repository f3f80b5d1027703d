"""The office inbox, purposes, retention and client deletion requests, over real HTTPS."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import requests

from .harness import Stack, csrf_from

JST = ZoneInfo("Asia/Tokyo")


def unique_csv() -> bytes:
    # clamd caches verdicts by content: every test file is new.
    return f"name,value\n{uuid.uuid4()},{os.urandom(8).hex()}\n".encode()


def clean_upload(stack: Stack, token: str, purpose: str = "koyo") -> str:
    r = stack.api_upload(token, unique_csv(), f"{uuid.uuid4().hex[:8]}.csv", purpose=purpose)
    assert r.status_code == 201, r.text
    upload_id = str(r.json()["id"])
    assert stack.wait_for(token, upload_id, {"clean", "infected", "refused"})["status"] == "clean"
    return upload_id


def vaulted_upload(stack: Stack, token: str, purpose: str = "koyo") -> str:
    upload_id = clean_upload(stack, token, purpose)
    stack.kinko("vault", "pull", upload_id, "--staff", "boss")
    stack.wait_for(token, upload_id, {"vaulted"})
    return upload_id


def audit(stack: Stack, action: str, upload_id: str | None = None) -> list[dict[str, object]]:
    with stack.db() as db:
        rows = db.execute("SELECT upload_id, actor_label, details FROM audit_events "
                          "WHERE action = ? ORDER BY id", (action,)).fetchall()
    return [{"upload_id": u, "actor": a, **json.loads(d)} for u, a, d in rows
            if upload_id is None or u == upload_id]


def db_value(stack: Stack, sql: str, *args: object) -> object:
    with stack.db() as db:
        row = db.execute(sql, args).fetchone()
    if not row:
        return None
    # PostgreSQL returns dates and times as objects, SQLite as ISO text.
    return row[0].isoformat() if hasattr(row[0], "isoformat") else row[0]


def post_form(session: requests.Session, page_url: str, url: str,
              data: dict[str, object]) -> requests.Response:
    page = session.get(page_url)
    assert page.status_code == 200, page.status_code
    return session.post(url, data={"csrf_token": csrf_from(page.text), **data},
                        allow_redirects=False)


@pytest.fixture(scope="module")
def boss(stack: Stack) -> requests.Session:
    return stack.office("boss")


@pytest.fixture(scope="module")
def hana(stack: Stack) -> requests.Session:
    return stack.office("hana")


@pytest.fixture(scope="module")
def acme_vaulted(stack: Stack, acme_token: str) -> str:
    return vaulted_upload(stack, acme_token)


# -- the inbox -------------------------------------------------------------------------


def test_bulk_pull_moves_every_chosen_clean_upload_into_the_vault(
        stack: Stack, acme_token: str, boss: requests.Session) -> None:
    ids = [clean_upload(stack, acme_token) for _ in range(3)]
    inbox = boss.get(stack.office_url + "/?company=acme&status=clean")
    assert inbox.status_code == 200
    for upload_id in ids:
        assert f'value="{upload_id}"' in inbox.text  # a checkbox for each
    r = boss.post(stack.office_url + "/pull", allow_redirects=False,
                  data={"csrf_token": csrf_from(inbox.text), "upload_ids": ids,
                        "company": "acme", "status": "clean"})
    assert r.status_code == 303, r.text[:300]
    assert "company=acme" in r.headers["Location"]
    for upload_id in ids:
        stack.wait_for(acme_token, upload_id, {"vaulted"})
        assert [e["upload_id"] for e in audit(stack, "office:vault:pull_requested",
                                               upload_id)] == [upload_id]


def test_pull_all_clean_respects_the_company_filter(
        stack: Stack, acme_token: str, beta_token: str, boss: requests.Session) -> None:
    acme_id, beta_id = clean_upload(stack, acme_token), clean_upload(stack, beta_token)
    r = post_form(boss, stack.office_url + "/", stack.office_url + "/pull",
                  {"all": "1", "company": "beta"})
    assert r.status_code == 303
    stack.wait_for(beta_token, beta_id, {"vaulted"})
    assert stack.status(acme_token, acme_id)["status"] == "clean"
    assert audit(stack, "office:vault:pull_requested", acme_id) == []


def test_handler_bulk_pull_ignores_other_companies(
        stack: Stack, acme_token: str, beta_token: str, hana: requests.Session) -> None:
    acme_id, beta_id = clean_upload(stack, acme_token), clean_upload(stack, beta_token)
    r = post_form(hana, stack.office_url + "/", stack.office_url + "/pull",
                  {"upload_ids": [beta_id, acme_id]})
    assert r.status_code == 303
    stack.wait_for(acme_token, acme_id, {"vaulted"})
    assert stack.status(beta_token, beta_id)["status"] == "clean"
    assert audit(stack, "office:vault:pull_requested", beta_id) == []
    assert not stack.objects("vault", f"vault/{beta_id}")
    # "Pull all" of a handler does not reach the other company either.
    r = post_form(hana, stack.office_url + "/", stack.office_url + "/pull",
                  {"all": "1", "company": "beta"})
    assert r.status_code == 303
    assert stack.status(beta_token, beta_id)["status"] == "clean"
    # And the handler's filter does not even offer it.
    assert "ベータ商事株式会社" not in hana.get(stack.office_url + "/?company=beta").text


def test_inbox_filters_by_date_and_pages(stack: Stack, acme_vaulted: str,
                                         boss: requests.Session) -> None:
    today = datetime.now(JST).date().isoformat()
    r = boss.get(stack.office_url + f"/?from={today}&to={today}&company=acme")
    assert r.status_code == 200 and acme_vaulted in r.text
    r = boss.get(stack.office_url + "/?from=2001-01-01&to=2001-01-02")
    assert r.status_code == 200 and acme_vaulted not in r.text
    r = boss.get(stack.office_url + "/?page=99999")
    assert r.status_code == 200


# -- retention ---------------------------------------------------------------------------


def test_retention_date_is_shown_and_a_manager_changes_it_with_a_reason(
        stack: Stack, acme_vaulted: str, boss: requests.Session,
        hana: requests.Session) -> None:
    page_url = f"{stack.office_url}/uploads/{acme_vaulted}"
    url = page_url + "/retention"
    today = datetime.now(JST).date()
    expected = today.replace(year=today.year + 7).isoformat()  # koyo: 7 years
    assert db_value(stack, "SELECT retention_until FROM uploads WHERE id = ?",
                    acme_vaulted) == expected
    page = boss.get(page_url)
    assert expected in page.text and 'name="retention_until"' in page.text
    assert f'{expected}' in hana.get(page_url).text  # shown to handlers too
    assert 'name="retention_until"' not in hana.get(page_url).text

    # No reason: refused, nothing changes.
    r = post_form(boss, page_url, url, {"retention_until": "2030-03-31", "reason": "  "})
    assert r.status_code == 400
    assert db_value(stack, "SELECT retention_until FROM uploads WHERE id = ?",
                    acme_vaulted) == expected
    # A handler: 403, audited as a refusal.
    r = post_form(hana, page_url, url, {"retention_until": "2030-03-31", "reason": "x"})
    assert r.status_code == 403
    assert db_value(stack, "SELECT retention_until FROM uploads WHERE id = ?",
                    acme_vaulted) == expected

    r = post_form(boss, page_url, url, {"retention_until": "2030-03-31",
                                        "reason": "退職者の書類のため前倒し"})
    assert r.status_code == 303
    assert "2030-03-31" in boss.get(page_url).text
    [event] = audit(stack, "office:retention:changed", acme_vaulted)
    assert event == {"upload_id": acme_vaulted, "actor": "boss", "old": expected,
                     "new": "2030-03-31", "reason": "退職者の書類のため前倒し"}

    # A reason holding a 12-digit run: the change is made, only its length is logged.
    reason = "番号 1234-5678-9012 の件"
    r = post_form(boss, page_url, url, {"retention_until": "2031-03-31", "reason": reason})
    assert r.status_code == 303
    last = audit(stack, "office:retention:changed", acme_vaulted)[-1]
    assert last["reason_length"] == len(reason) and "reason" not in last
    assert "1234-5678-9012" not in json.dumps(last)


def test_due_for_disposal_lists_files_past_their_date(
        stack: Stack, acme_token: str, boss: requests.Session, hana: requests.Session) -> None:
    upload_id = vaulted_upload(stack, acme_token)
    page_url = f"{stack.office_url}/uploads/{upload_id}"
    assert upload_id not in boss.get(stack.office_url + "/retention/due").text
    r = post_form(boss, page_url, page_url + "/retention",
                  {"retention_until": "2020-01-01", "reason": "期限切れの確認"})
    assert r.status_code == 303
    for who in (boss, hana):
        due = who.get(stack.office_url + "/retention/due")
        assert due.status_code == 200 and upload_id in due.text
    assert upload_id not in boss.get(stack.office_url + "/retention/due?company=beta").text


# -- purposes --------------------------------------------------------------------------


def test_manager_edits_a_purpose_and_clients_see_it(
        stack: Stack, acme_token: str, boss: requests.Session, hana: requests.Session) -> None:
    url = stack.office_url + "/admin/purposes/rosai"
    assert hana.get(url, allow_redirects=False).status_code == 403
    r = post_form(boss, url, url, {"label_ja": "労災保険給付請求", "label_en": "Accident claims",
                                   "retention_years": "3", "sort_order": "30", "active": "1"})
    assert r.status_code == 303, r.text[:300]
    listed = requests.get(stack.client_url + "/api/v1/purposes", verify=stack.cert,
                          headers={"Authorization": f"Bearer {acme_token}"}).json()["purposes"]
    assert {"code": "rosai", "label": "労災保険給付請求"} in listed
    [event] = audit(stack, "office:purpose:updated")
    assert event["code"] == "rosai"
    assert event["changes"] == {"label_ja": ["労災保険請求", "労災保険給付請求"],
                                "label_en": ["Industrial accident insurance claims",
                                             "Accident claims"],
                                "retention_years": [7, 3]}
    # New vault moves for it are kept for the new period.
    upload_id = vaulted_upload(stack, acme_token, purpose="rosai")
    today = datetime.now(JST).date()
    try:
        expected = today.replace(year=today.year + 3)
    except ValueError:  # 29 February
        expected = today.replace(year=today.year + 3, day=28)
    assert db_value(stack, "SELECT retention_until FROM uploads WHERE id = ?",
                    upload_id) == expected.isoformat()
    # Adding one, then a bad value.
    url = stack.office_url + "/admin/purposes"
    r = post_form(boss, url, url, {"code": "nenkin", "label_ja": "年金請求",
                                   "label_en": "Pension claims", "retention_years": "5",
                                   "sort_order": "60", "active": "1"})
    assert r.status_code == 303
    assert audit(stack, "office:purpose:created")[-1]["code"] == "nenkin"
    r = post_form(boss, url, url, {"code": "bad code", "label_ja": "x", "label_en": "x",
                                   "retention_years": "5", "sort_order": "1"})
    assert r.status_code == 400


# -- client deletion requests ------------------------------------------------------------------


def test_client_deletion_request_reaches_the_office(
        stack: Stack, acme_vaulted: str, beta_token: str, boss: requests.Session,
        hana: requests.Session) -> None:
    acme = stack.client("acme", "hr", "acme-Passw0rd")
    page_url = f"{stack.client_url}/uploads/{acme_vaulted}"
    url = page_url + "/deletion-request"
    assert 'id="deletion-form"' in acme.get(page_url).text

    # A reason with a personal number is refused kindly; nothing is stored.
    r = post_form(acme, page_url, url, {"reason": "山田 123456789012"})
    assert r.status_code == 303
    assert db_value(stack, "SELECT count(*) FROM deletion_requests WHERE upload_id = ?",
                    acme_vaulted) == 0
    r = post_form(acme, page_url, url, {"reason": "退職した山田さんの分"})
    assert r.status_code == 303
    page = acme.get(page_url).text
    assert 'id="deletion-request"' in page and 'id="deletion-form"' not in page
    [event] = audit(stack, "client:deletion:requested", acme_vaulted)
    assert event["reason_length"] == len("退職した山田さんの分") and "reason" not in event

    beta_id = vaulted_upload(stack, beta_token)
    beta = stack.client("beta", "hr", "beta-Passw0rd")
    r = post_form(beta, f"{stack.client_url}/uploads/{beta_id}",
                  f"{stack.client_url}/uploads/{beta_id}/deletion-request", {"reason": ""})
    assert r.status_code == 303
    # Another company's upload: 404, nothing recorded.
    r = post_form(beta, f"{stack.client_url}/uploads/{beta_id}", url, {"reason": ""})
    assert r.status_code == 404

    office_list = stack.office_url + "/deletion-requests"
    boss_list, hana_list = boss.get(office_list).text, hana.get(office_list).text
    assert acme_vaulted in boss_list and beta_id in boss_list
    assert acme_vaulted in hana_list and "退職した山田さんの分" in hana_list
    assert beta_id not in hana_list
    # The marker on the office's upload page and inbox row.
    assert 'id="deletion-request-' in boss.get(f"{stack.office_url}/uploads/{acme_vaulted}").text
    inbox = boss.get(stack.office_url + "/?company=acme&status=vaulted").text
    row = inbox[inbox.index(acme_vaulted):][:600]
    assert "s-refused" in row

    # Withdrawn while open: gone from the office's open list.
    r = post_form(acme, page_url, url + "/withdraw", {})
    assert r.status_code == 303
    assert acme_vaulted not in boss.get(office_list).text
    assert acme_vaulted in boss.get(office_list + "?status=all").text
    assert [e["upload_id"] for e in audit(stack, "client:deletion:withdrawn")] == [acme_vaulted]
    assert 'id="deletion-form"' in acme.get(page_url).text


def test_zz_audit_chain_verifies(stack: Stack) -> None:
    assert "intact" in stack.kinko("audit", "verify").stdout
