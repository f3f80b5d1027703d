"""Scanning while receiving: the client app hands each upload to clamd as it arrives
(a memory file passed with FILDES, or a stream with KINKO_SCAN_BUFFER_MB=0) and the
worker takes clamd's answer from the row instead of streaming the file again.  Its
verdicts are clamd's (clean, EICAR infected), and when it gives none (off, clamd hung,
or the client app dies holding the answer) the worker scans by itself: never clean
unscanned."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

import pytest
import requests

from .harness import Stack, build_stack, eicar, require_clamd, teardown_stack
from .invariants import check_invariants


def scan_events(stack: Stack, upload_id: str) -> list[tuple[str, dict[str, object]]]:
    with stack.db() as db:
        return [(r[0], json.loads(r[1] or "{}")) for r in db.execute(
            "SELECT action, details FROM audit_events WHERE upload_id = ? "
            "AND action LIKE 'system:scan:%' ORDER BY id", (upload_id,))]


def prescan_of(stack: Stack, upload_id: str) -> str | None:
    with stack.db() as db:
        return db.execute("SELECT prescan FROM uploads WHERE id = ?", (upload_id,)).fetchone()[0]


def by_memory(stack: Stack) -> bool:
    """True if the client app hands uploads to clamd as memory files (the default)."""
    return stack.env.get("KINKO_SCAN_BUFFER_MB") != "0"


@pytest.fixture(scope="module", params=["memory", "stream"])
def receipt_stack(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose scans while receiving go by memory file or by stream, with a
    short scan timeout for the hung-clamd test."""
    require_clamd()
    env = {"KINKO_SCAN_TIMEOUT": "4"}
    if request.param == "stream":
        env["KINKO_SCAN_BUFFER_MB"] = "0"
    s = build_stack(tmp_path_factory.mktemp, extra_env=env)
    try:
        yield s
    finally:
        teardown_stack(s)


def test_clean_and_infected_verdicts_come_from_the_scan_while_receiving(
        receipt_stack: Stack) -> None:
    stack = receipt_stack
    token = stack.token("acme", "hr")
    marker = os.urandom(16).hex().encode()
    data = b"id,memo\n" + b"".join(b"%d,%s\n" % (i, marker) for i in range(40_000))
    clean = stack.api_upload(token, data, "receipt.csv")
    assert clean.status_code == 201, clean.text
    up = clean.json()["id"]
    assert stack.wait_for(token, up, {"clean", "infected", "refused"})["status"] == "clean"
    assert prescan_of(stack, up) == "clean"
    assert ("system:scan:clean", {"kind": "csv", "on_receipt": True}) in scan_events(stack, up)

    bad = stack.api_upload(token, b"a,b\n" + eicar() + b"\n", "receipt-eicar.csv").json()
    assert stack.wait_for(token, bad["id"], {"clean", "infected", "refused"})[
        "status"] == "infected"
    assert prescan_of(stack, bad["id"]) == "infected"
    (action, details), = [e for e in scan_events(stack, bad["id"])
                          if e[0] == "system:scan:infected"]
    assert details["on_receipt"] is True
    assert str(details["signature"]).startswith("Kinko.Test.EICAR")
    # clamd's own log names what it scanned: the memory file, or its own copy of a stream.
    found = [line for line in stack.clamd.log_tail(20_000).splitlines() if "FOUND" in line]
    assert found and ("/memfd:kinko-scan" in found[-1]) == by_memory(stack), found
    check_invariants(stack, markers=[marker])


@pytest.fixture(scope="module")
def answer_lost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_clamd()
    # The client-app process SIGKILLs itself just before it records clamd's answer.
    s = build_stack(tmp_path_factory.mktemp, extra_env={
        "KINKO_FAULT_CRASH_AT": "receipt:answered", "KINKO_SCAN_TIMEOUT": "4"})
    try:
        yield s
    finally:
        teardown_stack(s)


def test_an_answer_lost_with_the_client_app_means_the_worker_scans(
        answer_lost: Stack) -> None:
    stack = answer_lost
    token = stack.token("acme", "hr")
    for name, data, final in (("lost.csv", b"a,b\n1,2\n", "clean"),
                              ("lost-eicar.csv", b"a,b\n" + eicar() + b"\n", "infected")):
        # The process may die before its 201 is out: the row is what counts.
        with contextlib.suppress(requests.RequestException):
            stack.api_upload(token, data, name)
        with stack.db() as db:
            (up,), = db.execute("SELECT id FROM uploads WHERE filename = ?", (name,)).fetchall()
        # The row says an answer may come; it never does (the process died),
        # so after prescan_until the worker streams the file to clamd itself.
        body = stack.wait_for(token, up, {"clean", "infected", "refused"}, timeout=60)
        assert body["status"] == final
        assert prescan_of(stack, up) == "pending"
        assert all("on_receipt" not in d for _, d in scan_events(stack, up))
    check_invariants(stack)


def test_off_means_the_worker_streams_every_file(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    require_clamd()
    stack = build_stack(tmp_path_factory.mktemp, extra_env={"KINKO_SCAN_ON_RECEIPT": "0"})
    try:
        token = stack.token("acme", "hr")
        up = stack.api_upload(token, b"a,b\n1,2\n", "off.csv").json()["id"]
        assert stack.wait_for(token, up, {"clean", "infected", "refused"})["status"] == "clean"
        assert prescan_of(stack, up) is None
        assert scan_events(stack, up)[-1] == ("system:scan:clean", {"kind": "csv"})
    finally:
        teardown_stack(stack)


def test_a_hung_clamd_holds_no_upload_and_passes_nothing(receipt_stack: Stack) -> None:
    stack = receipt_stack
    token = stack.token("acme", "hr")
    # small: a stream fits in the socket and ends; a memory file is handed over: either
    # way the answer never comes.  big: a stream falls behind and is abandoned while
    # receiving; a memory file never waits for clamd, and its answer never comes.
    small = b"a,b\n1,2\n"
    big = b"id,memo\n" + os.urandom(3 << 20).hex().encode()
    stack.clamd.pause()  # SIGSTOP: connections are accepted, nothing is read
    try:
        ids = []
        for name, data in (("hung-small.csv", small), ("hung-big.csv", big)):
            r = stack.api_upload(token, data, name)
            assert r.status_code == 201, r.text  # received and stored all the same
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 60
        while not all("system:scan:deferred" in [a for a, _ in scan_events(stack, up)]
                      for up in ids):
            assert time.monotonic() < deadline, [scan_events(stack, up) for up in ids]
            for up in ids:
                assert stack.status(token, up)["status"] in {"received", "scanning"}
            time.sleep(0.5)
        assert prescan_of(stack, ids[0]) == "failed"  # the client app gave up waiting
        assert prescan_of(stack, ids[1]) == ("failed" if by_memory(stack) else None)
    finally:
        stack.clamd.resume()
    for up in ids:
        assert stack.wait_for(token, up, {"clean", "infected", "refused"})["status"] == "clean"
    check_invariants(stack, markers=[big[-64:]])
