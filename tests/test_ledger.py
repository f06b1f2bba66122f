"""The ledger: migrations, append-only events, and a hash chain that catches tampering."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from forgetctl.core import lifecycle
from forgetctl.store.ledger import Ledger, open_ledger
from forgetctl.store.schema import MIGRATIONS


@pytest.fixture
def ledger(tmp_path):
    led = open_ledger(tmp_path / "ledger.db", create=True)
    for i in range(5):
        led.append_event("test.event", request_id=i, n=i)
    yield led
    led.close()


def _tables(led: Ledger) -> set[str]:
    return set(led.db.table_names())


def test_migrations_from_blank(tmp_path):
    led = open_ledger(tmp_path / "l.db", create=True)
    assert led.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert {"requests", "events", "versions", "aliases", "alias_history", "verifications"} <= (
        _tables(led)
    )
    assert "plans" in _tables(led)
    assert led.verify_chain().ok
    assert led.migrate() == []  # idempotent


@pytest.mark.parametrize("upto", [name for name, _ in MIGRATIONS])
def test_migrations_from_every_earlier_schema(tmp_path, upto):
    led = Ledger(tmp_path / "l.db")
    led.migrate(upto=upto)
    led.append_event("old.event", n=1)
    led.close()
    upgraded = open_ledger(tmp_path / "l.db")
    assert upgraded.applied_migrations() == [name for name, _ in MIGRATIONS]
    cols = {c.name for c in upgraded.db["requests"].columns}
    assert {"failed_step", "attempts", "approved_at"} <= cols
    assert upgraded.verify_chain().ok


def test_failed_migration_leaves_no_trace(tmp_path, monkeypatch):
    broken = [*MIGRATIONS, ("9999_broken", ["CREATE TABLE ok_table (x)", "NOT SQL"])]
    monkeypatch.setattr("forgetctl.store.schema.MIGRATIONS", broken)
    led = Ledger(tmp_path / "l.db")
    with pytest.raises(sqlite3.OperationalError):
        led.migrate()
    assert "9999_broken" not in led.applied_migrations()
    assert "ok_table" not in _tables(led)  # the DDL rolled back with the record


def test_chain_verifies_and_triggers_forbid_changes(ledger):
    report = ledger.verify_chain()
    assert report.ok and report.events == 5 + len(MIGRATIONS)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.conn.execute("UPDATE events SET kind = 'x' WHERE seq = 3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.conn.execute("DELETE FROM events WHERE seq = 3")


def _tamper(led: Ledger, *statements: str) -> None:
    # An attacker with file access can drop the triggers; the chain must still tell.
    raw = sqlite3.connect(led.path)
    raw.execute("DROP TRIGGER events_no_update")
    raw.execute("DROP TRIGGER events_no_delete")
    for sql in statements:
        raw.execute(sql)
    raw.commit()
    raw.close()


def test_chain_catches_edited_row(ledger):
    _tamper(ledger, "UPDATE events SET data = '{\"n\":99}' WHERE seq = 5")
    report = ledger.verify_chain()
    assert not report.ok and report.first_bad == 5 and "edited" in report.reason


def test_chain_catches_deleted_row(ledger):
    _tamper(ledger, "DELETE FROM events WHERE seq = 4")
    report = ledger.verify_chain()
    assert not report.ok and report.first_bad == 5


def test_chain_catches_swapped_rows(ledger):
    # Swap the contents of rows 4 and 5 while keeping seq in place.
    _tamper(
        ledger,
        "UPDATE events SET seq = -4 WHERE seq = 4",
        "UPDATE events SET seq = 4 WHERE seq = 5",
        "UPDATE events SET seq = 5 WHERE seq = -4",
    )
    report = ledger.verify_chain()
    assert not report.ok and report.first_bad == 4


def test_alias_history_and_versions(ledger):
    v0 = ledger.versions.add(kind="base", status="promoted", base_sha256="ab")
    v1 = ledger.versions.add(kind="adapter", parent=v0, status="candidate", requests=[1])
    ledger.aliases.move("production", v0, "init")
    ledger.aliases.move("production", v1, "promote")
    assert ledger.aliases.get() == v1
    assert [h["version_id"] for h in ledger.aliases.history()] == [v0, v1]
    assert [v["id"] for v in ledger.versions.lineage(v1)] == [v0, v1]
    assert ledger.verify_chain().ok


def test_lifecycle_tables_cover_every_status():
    assert set(lifecycle.REQUEST_MOVES) == set(lifecycle.REQUEST_STATUSES)
    assert set(lifecycle.NEXT_STEP) == lifecycle.OPEN_STATUSES
    assert set(lifecycle.VERSION_MOVES) == set(lifecycle.VERSION_STATUSES)
    for moves, statuses in ((lifecycle.REQUEST_MOVES, lifecycle.REQUEST_STATUSES),
                            (lifecycle.VERSION_MOVES, lifecycle.VERSION_STATUSES)):  # fmt: skip
        assert all(to in statuses for targets in moves.values() for to in targets)


def test_an_illegal_status_change_is_refused_and_writes_nothing(tmp_path):
    led = open_ledger(tmp_path / "l.db", create=True)
    rid = led.requests.add({"ref": "R-1", "policy": "gdpr", "regulation": "gdpr",
                            "scope": "entity", "received": "2026-11-01", "due": "2026-12-01",
                            "subject_index": "x"})  # fmt: skip
    before = len(led.events())
    with pytest.raises(lifecycle.IllegalTransition, match="received -> promoted"):
        led.requests.set_status(rid, "promoted")
    assert led.requests.get(rid)["status"] == "received" and len(led.events()) == before
    led.requests.set_status(rid, "planned")
    assert led.events()[-1]["data"] == {"from": "received", "to": "planned"}  # decoded once
    base = led.versions.add(kind="base", status="promoted", base_path="/m", base_sha256="0")
    with pytest.raises(lifecycle.IllegalTransition, match="promoted -> candidate"):
        led.versions.set_status(base, "candidate")
    assert led.versions.get(base)["status"] == "promoted"
    assert led.verify_chain().ok


def test_every_write_is_recorded_by_its_event_and_the_head_signed(tmp_path):
    led = open_ledger(tmp_path / "l.db", create=True)
    rid = led.requests.add({"ref": "R-1", "policy": "gdpr", "regulation": "gdpr",
                            "scope": "entity", "received": "2026-11-01", "due": "2026-12-01",
                            "subject_index": "x"})  # fmt: skip
    with led.transaction():
        led.requests.set_payload(rid, b"ciphertext")  # no event of its own: flushed at commit
    last = led.events()[-1]
    assert last["kind"] == "ledger.written"
    digest = "sha256:" + hashlib.sha256(b"ciphertext").hexdigest()
    assert last["writes"] == {"requests/1": {"payload": digest}}
    assert led.audit().ok and led.signed_head()["seq"] == last["seq"]
    led.conn.execute("UPDATE requests SET payload = X'00' WHERE id = 1")
    assert led.audit().problems[0].startswith("requests 1 payload: 'sha256:")


def test_an_upgraded_ledger_takes_its_rows_as_they_were_then_checks_them(tmp_path):
    old = Ledger(tmp_path / "l.db")
    old.migrate(upto="0003_verification_verdicts")
    old.requests.add({"ref": "R-1", "policy": "gdpr", "regulation": "gdpr",
                      "scope": "entity", "received": "2026-11-01", "due": "2026-12-01",
                      "subject_index": "x"})  # fmt: skip
    old.close()
    assert not (tmp_path / "keys").exists()
    upgraded = open_ledger(tmp_path / "l.db")
    assert (tmp_path / "keys" / "ledger-head.key").exists()  # created by the migration
    assert upgraded.audit().ok
    upgraded.conn.execute("UPDATE requests SET status = 'promoted'")
    assert upgraded.audit().problems == [
        "requests 1 status: 'promoted', but event 5 wrote 'received'"
    ]
