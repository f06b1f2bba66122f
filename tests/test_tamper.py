"""Tamper evidence (issue 22): every edit to the ledger's tables, its chain or its keys is
named by `ledger verify` (exit 5), and a damaged home is refused, never rebuilt."""

from __future__ import annotations

import gc
import json
import sqlite3

import pytest
from clirun import cli

from forgetctl.app.home import resolve_home
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import LedgerCorrupt
from forgetctl.store.crypto import Keyring
from forgetctl.store.ledger import GENESIS, event_hash
from forgetctl.store.tables import canonical

CORRUPT = LedgerCorrupt.exit_code


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Requests in several states, a plan, versions, aliases and verifications, all written
    the way forgetctl writes them."""
    monkeypatch.setenv("FORGETCTL_HOME", str(tmp_path / "home"))
    cli("init")
    for subject in ("Ada Quillfeather", "Bram Osterwald", "Cora Lindqvist"):
        cli("request", "add", "--subject", subject, "--regulation", "gdpr")
    cli("request", "cancel", "2", "--reason", "withdrawn")
    cli("request", "purge", "2", "--now", "--reason", "subject asked")
    cli("request", "extend", "1", "--days", "30", "--reason", "complex", "--notified", "2026-01-02")
    ws = Workspace.open(resolve_home())
    led = ws.ledger
    led.plans.put(1, ws.keys.encrypt(1, {"forget": []}), {"forget": 0}, "ab" * 32)
    with led.transaction():
        base = led.versions.add(id=0, kind="base", status="promoted", base_sha256="00")
        led.aliases.move("production", base, "base model registered")
    vid = led.versions.add(kind="adapter", parent=base, status="candidate", requests=[1])
    led.verifications.add(vid, "forget", "fail", {"gap": 0.1}, ["too close"])
    led.verifications.add(vid, "retain", "pass", {}, [])
    led.versions.set_status(vid, "rejected")
    led.close()
    cli("ledger", "verify")  # the untouched home verifies
    # In-process commands leave their connections to the garbage collector, which could
    # checkpoint the WAL into a file a test has just damaged: close them first.
    gc.collect()
    return tmp_path / "home"


def tamper(home, *statements: str, params=()) -> None:
    """Edit ledger.db as someone with write access to the file, triggers dropped."""
    con = sqlite3.connect(home / "ledger.db")
    con.execute("DROP TRIGGER IF EXISTS events_no_update")
    con.execute("DROP TRIGGER IF EXISTS events_no_delete")
    for sql in statements:
        con.execute(sql, params)
    con.commit()
    con.close()


def events(home) -> list[dict]:
    con = sqlite3.connect(home / "ledger.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM events ORDER BY seq")]
    con.close()
    return rows


def rewrite(home, rows: list[dict]) -> None:
    """Replace the chain with ``rows``, renumbered and rehashed from the genesis."""
    prev = GENESIS
    for seq, row in enumerate(rows, 1):
        row.update(seq=seq, prev_hash=prev)
        row["hash"] = prev = event_hash(row)
    con = sqlite3.connect(home / "ledger.db")
    con.execute("DROP TRIGGER IF EXISTS events_no_delete")
    con.execute("DELETE FROM events")
    cols = list(rows[0])
    marks = ",".join("?" * len(cols))
    con.executemany(f"INSERT INTO events ({','.join(cols)}) VALUES ({marks})",
                    [[r[c] for c in cols] for r in rows])  # fmt: skip
    con.commit()
    con.close()


def verify_fails(*expected: str, args: tuple[str, ...] = ()) -> str:
    line = cli("ledger", "verify", *args, code=CORRUPT).stderr
    assert len(line.strip().splitlines()) == 1, line
    for text in expected:
        assert text in line, line
    return line


ROW_EDITS = {
    "request status": (["UPDATE requests SET status = 'promoted' WHERE id = 3"],
                       "requests 3 status: 'promoted', but event"),
    "request due date": (["UPDATE requests SET due = '2099-01-01' WHERE id = 1"],
                         "requests 1 due: '2099-01-01'"),
    "request deleted": (["DELETE FROM requests WHERE id = 3"], "requests 3: row deleted"),
    "request inserted": (["INSERT INTO requests (id, ref, policy, regulation, scope, status, "
                          "received, due, subject_index, created_at, updated_at) VALUES (9, "
                          "'X', 'gdpr', 'gdpr', 'entity', 'received', 'd', 'd', 'x', 't', 't')"],
                         "requests 9: a row no event wrote"),
    "purge undone": (["UPDATE requests SET purged_at = NULL WHERE id = 2"],
                     "requests 2 purged_at: None"),
    "plan hash": (["UPDATE plans SET sha256 = 'ff' WHERE request_id = 1"], "plans 1 sha256"),
    "plan deleted": (["DELETE FROM plans"], "plans 1: row deleted"),
    "version status": (["UPDATE versions SET status = 'promoted' WHERE id = 1"],
                       "versions 1 status: 'promoted', but event"),
    "version deleted": (["DELETE FROM versions WHERE id = 1"], "versions 1: row deleted"),
    "alias moved": (["UPDATE aliases SET version_id = 1"], "aliases production version_id: 1"),
    "alias deleted": (["DELETE FROM aliases"], "aliases production: row deleted"),
    "alias history": (["UPDATE alias_history SET version_id = 1"], "alias_history 1 version_id"),
    "alias history deleted": (["DELETE FROM alias_history"], "alias_history 1: row deleted"),
    "verdict flipped": (["UPDATE verifications SET passed = 1, verdict = 'pass' WHERE id = 1"],
                        "verifications 1 passed: 1"),
    "verification deleted": (["DELETE FROM verifications WHERE id = 1"],
                             "verifications 1: row deleted"),
}  # fmt: skip


@pytest.mark.parametrize("case", ROW_EDITS)
def test_every_state_table_edit_is_named(home, case):
    statements, expected = ROW_EDITS[case]
    tamper(home, *statements)
    verify_fails(expected)


def test_a_moved_due_date_names_the_event_that_set_it(home):
    tamper(home, "UPDATE requests SET due = '2099-01-01' WHERE id = 1")
    extended = [e for e in events(home) if e["kind"] == "request.extended"][-1]
    verify_fails(f"but event {extended['seq']} wrote")


def test_editing_an_event_breaks_the_chain(home):
    purged = next(e for e in events(home) if e["kind"] == "request.purged")
    tamper(home, f"UPDATE events SET data = '{{}}' WHERE seq = {purged['seq']}")
    verify_fails(f"chain broken at event {purged['seq']}", "content edited")


def test_deleting_an_event_breaks_the_chain(home):
    purged = next(e for e in events(home) if e["kind"] == "request.purged")
    tamper(home, f"DELETE FROM events WHERE seq = {purged['seq']}")
    verify_fails(f"event {purged['seq'] + 1} found where event {purged['seq']} belongs")


def test_rewriting_the_chain_forward_is_caught_by_the_signed_head(home):
    rows = events(home)
    rows[3]["data"] = canonical({"forged": True})
    rewrite(home, rows)
    verify_fails("is not the signed head: the chain was rewritten")


def test_deleting_request_purged_and_rewriting_forward_is_caught(home):
    rows = [e for e in events(home) if e["kind"] != "request.purged"]
    rewrite(home, rows)
    verify_fails("but the signed head is event", "events removed")


def test_truncating_the_last_events_is_caught(home):
    last = events(home)[-1]["seq"]
    tamper(home, f"DELETE FROM events WHERE seq > {last - 2}")
    verify_fails(f"the chain ends at event {last - 2} but the signed head is event {last}")


def test_an_appended_forged_event_is_caught(home):
    rows = events(home)
    forged = {**rows[-1], "seq": rows[-1]["seq"] + 1, "kind": "request.status",
              "data": canonical({"from": "received", "to": "promoted"}), "writes": "{}",
              "prev_hash": rows[-1]["hash"]}  # fmt: skip
    forged["hash"] = event_hash(forged)
    cols = list(forged)
    tamper(home, f"INSERT INTO events ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
           params=[forged[c] for c in cols])  # fmt: skip
    verify_fails(f"events {forged['seq']}..{forged['seq']} follow the signed head")


def test_an_emptied_event_table_is_caught(home):
    tamper(home, "DELETE FROM events")
    verify_fails("the chain ends at event 0", "events removed")


def test_an_emptied_event_table_and_head_is_caught(home):
    tamper(home, "DELETE FROM events", "DELETE FROM head")
    verify_fails("the signed head is missing")


def test_a_head_moved_without_the_key_does_not_verify(home):
    last = events(home)[-1]
    tamper(home, f"DELETE FROM events WHERE seq = {last['seq']}",
           f"UPDATE head SET seq = {last['seq'] - 1}, hash = '{last['prev_hash']}'")  # fmt: skip
    verify_fails(f"the signed head (event {last['seq'] - 1}) does not verify")


def test_an_export_anchors_the_head_even_against_a_stolen_key(home, tmp_path):
    anchor = tmp_path / "anchor.json"
    cli("ledger", "export", "--out", str(anchor))
    doc = json.loads(anchor.read_text())
    assert len(doc["public_key"]) == 64 and doc["head"]["signature"]
    cli("request", "add", "--subject", "Dov Marchetti", "--regulation", "gdpr")
    assert "in the chain" in cli("ledger", "verify", "--against", str(anchor)).stdout
    # Whoever holds keys/ too can rewrite and re-sign: only the anchor still tells.
    rows = events(home)
    rows[3]["data"] = canonical({"forged": True})
    rewrite(home, rows)
    head = rows[-1]
    signature = Keyring(home / "keys").head_signer().sign(head["seq"], head["hash"])
    tamper(home, "UPDATE head SET hash = ?, signature = ?", params=[head["hash"], signature])
    cli("ledger", "verify")
    verify_fails(f"event {doc['head']['seq']} differs from the exported head",
                 args=("--against", str(anchor)))  # fmt: skip
    rewrite(home, rows[:5])
    short = rows[4]
    signature = Keyring(home / "keys").head_signer().sign(5, short["hash"])
    tamper(home, "UPDATE head SET seq = 5, hash = ?, signature = ?",
           params=[short["hash"], signature])  # fmt: skip
    # The rows the dropped events wrote are named first; the anchor says what happened.
    result = cli("ledger", "verify", "--against", str(anchor), "--json", code=CORRUPT)
    problems = json.loads(result.stdout)["problems"]
    assert (
        problems[-1] == f"the exported head (event {doc['head']['seq']}) is past the "
        "chain's end: events removed"
    )


def test_an_export_from_another_key_is_named(home, tmp_path):
    anchor = tmp_path / "anchor.json"
    cli("ledger", "export", "--out", str(anchor))
    doc = json.loads(anchor.read_text())
    anchor.write_text(json.dumps({**doc, "public_key": "00" * 32}))
    verify_fails("signed with another key", args=("--against", str(anchor)))
    anchor.write_text("{}")
    cli("ledger", "verify", "--against", str(anchor), code=2)


# -- refuse, never rebuild ------------------------------------------------------------


def _refused(home, expected: str, command=("request", "list")) -> None:
    result = cli(*command, code=CORRUPT)
    assert result.stderr.startswith("error:") and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [("request", "list"), ("ledger", "verify"), ("init",)])
def test_an_empty_ledger_is_refused_not_recreated(home, command):
    for extra in home.glob("ledger.db-*"):
        extra.unlink()
    (home / "ledger.db").write_bytes(b"")
    _refused(home, "is empty", command)
    assert (home / "ledger.db").stat().st_size == 0


def test_a_missing_ledger_on_an_initialised_home_is_refused(home):
    for path in home.glob("ledger.db*"):
        path.unlink()
    _refused(home, "missing from an initialised home", ("ledger", "log"))
    assert not (home / "ledger.db").exists()


def test_a_junk_ledger_is_refused(home):
    for extra in home.glob("ledger.db-*"):
        extra.unlink()
    (home / "ledger.db").write_bytes(b"not a database at all" * 100)
    _refused(home, "is not an SQLite database")


@pytest.mark.parametrize("key", ["blind-index.key", "ledger-head.key"])
@pytest.mark.parametrize("damage", ["empty", "missing"])
def test_a_missing_or_empty_key_is_refused_not_replaced(home, key, damage):
    path = home / "keys" / key
    if damage == "empty":
        path.write_bytes(b"")
        _refused(home, f"{key} is damaged (0 bytes")
        assert path.read_bytes() == b""
    else:
        path.unlink()
        _refused(home, f"{key} is missing")
        assert not path.exists()
    cli("request", "add", "--subject", "Ada Quillfeather", "--regulation", "gdpr", code=CORRUPT)


def test_a_dropped_table_is_refused(home):
    tamper(home, "DROP TABLE plans")
    _refused(home, "table plans is missing")
    tamper(home, "DROP TABLE events")
    _refused(home, "table events is missing", ("ledger", "verify"))


def test_a_deleted_migration_row_is_refused(home):
    tamper(home, "DELETE FROM migrations WHERE name = '0002_plans_and_steps'")
    _refused(home, "migrations row '0002_plans_and_steps' is missing")
    tamper(home, "DELETE FROM migrations")
    _refused(home, "migrations row '0001_core' is missing")
