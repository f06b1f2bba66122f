"""Purge means purge (issue 22): the report files forgetctl wrote with the subject's name
go, the blind indexes go (from the row and from what the append-only events recorded)
unless the policy keeps a suppression list, and a refused intake leaves no payload key."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from clirun import cli

from forgetctl.app import intake
from forgetctl.app.home import resolve_home
from forgetctl.app.workspace import Workspace
from forgetctl.store.crypto import Keyring


@pytest.fixture
def home(forgetctl_home) -> Path:
    cli("init")
    return forgetctl_home


def ledger_text(home: Path, rows: bool = True) -> str:
    """What the events (and ``rows``: the requests) hold that could name a subject."""
    db = sqlite3.connect(home / "ledger.db")
    try:
        events = db.execute("SELECT data, writes FROM events").fetchall()
        requests = db.execute("SELECT subject_index, identifier_indexes FROM requests").fetchall()
    finally:
        db.close()
    return json.dumps([events, requests if rows else []])


def add(subject: str, email: str, ref: str) -> None:
    cli("request", "add", "--subject", subject, "--regulation", "gdpr", "--email", email,
        "--ref", ref)  # fmt: skip


def test_purge_removes_reports_and_blind_indexes(home, tmp_path):
    add("Ann Lee", "ann@example.org", "R-1")
    keys = Keyring(home / "keys")
    name_index = keys.blind_index("Ann Lee")
    email_index = keys.blind_index("ann@example.org", kind="id:email")
    in_home, changed = home / "reports" / "ann-lee.md", home / "reports" / "r1-edited.md"
    outside = tmp_path / "r1-outside.md"
    for path in (in_home, changed, outside):
        cli("report", "R-1", "--out", str(path))
        assert "Ann Lee" in path.read_text()
    changed.write_text(changed.read_text() + "\nan operator's note\n")
    assert name_index not in ledger_text(home, rows=False)  # events record them salted
    result = cli("request", "purge", "1", "--now", "--reason", "subject asked")
    assert "1 report file(s) removed" in result.stdout
    assert not in_home.exists()
    assert changed.exists() and outside.exists()  # not what forgetctl wrote, or not ours
    assert str(changed) in result.stderr and str(outside) in result.stderr
    text = ledger_text(home)
    assert name_index not in text and email_index not in text
    assert "ann-lee" not in text and "r1-outside" not in text  # report paths are sealed
    cli("ledger", "verify")
    # the same person again is a new request, not a duplicate of the purged one
    add("Ann Lee", "ann@example.org", "R-2")
    assert json.loads(cli("request", "show", "2", "--json").stdout)["status"] == "received"


def test_a_suppression_list_keeps_the_indexes(home):
    policy = home / "policies" / "gdpr.toml"
    policy.write_text("keep_suppression_index = true\n" + policy.read_text())
    add("Ann Lee", "ann@example.org", "R-1")
    cli("request", "purge", "1", "--now", "--reason", "subject asked")
    ws = Workspace.open(resolve_home(home))
    row = ws.ledger.requests.get(1)
    assert row["subject_index"] == ws.keys.blind_index("Ann Lee") and row["identifier_indexes"]
    assert row["payload"] is None
    cli("ledger", "verify")
    add("Ann Lee", "other@example.org", "R-2")
    ws = Workspace.open(resolve_home(home))
    assert ws.ledger.requests.get(2)["subject_index"] == row["subject_index"]


def test_a_refused_import_leaves_no_payload_key(home, monkeypatch):
    ws = Workspace.open(resolve_home(home))
    reqs = [
        intake.parse_request({"regulation": "gdpr", "subject": {"name": name}})
        for name in ("Ann Lee", "Bob Ray", "Cy Dee")
    ]
    calls = []
    real = ws.ledger.requests.set_payload

    def fail_on_the_third(request_id, payload):
        calls.append(request_id)
        if len(calls) == 3:
            raise OSError("disk full")
        real(request_id, payload)

    monkeypatch.setattr(ws.ledger.requests, "set_payload", fail_on_the_third)
    with pytest.raises(OSError):
        intake.import_requests(ws, reqs)
    assert ws.ledger.requests.all() == []
    assert not list((home / "keys" / "requests").glob("*.key"))
    monkeypatch.undo()
    intake.import_requests(ws, reqs[:1])  # the next request gets a fresh key for id 1
    assert ws.keys.decrypt(1, ws.ledger.requests.get(1)["payload"])["subject"]["name"] == (
        "Ann Lee"
    )
