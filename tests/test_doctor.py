"""`forgetctl doctor` (issue 22, "refuse, never rebuild"): it names what is wrong with a
home and how to restore it, and changes nothing."""

from __future__ import annotations

import json

from clirun import cli


def findings(code: int) -> dict[str, dict]:
    result = cli("doctor", "--json", code=code)
    return {f["check"]: f for f in json.loads(result.stdout)}


def test_a_healthy_home(forgetctl_home):
    cli("init")
    cli("request", "add", "--subject", "Ann Lee", "--regulation", "gdpr")
    assert all(f["ok"] for f in findings(0).values())


def test_no_home_is_not_found(forgetctl_home):
    assert not findings(3)["home"]["ok"]
    assert not forgetctl_home.exists()  # nothing created


def test_each_damage_is_named_with_its_fix(forgetctl_home):
    cli("init")
    cli("request", "add", "--subject", "Ann Lee", "--regulation", "gdpr")
    key = forgetctl_home / "keys" / "blind-index.key"
    saved = key.read_bytes()
    key.write_bytes(b"")
    bad = findings(5)["keys"]
    assert "damaged" in bad["detail"] and "backup" in bad["fix"]
    key.write_bytes(saved)
    (forgetctl_home / "keys" / "requests" / "9.key").write_bytes(b"k" * 32)
    assert "[9]" in findings(5)["payload keys"]["detail"]
    (forgetctl_home / "keys" / "requests" / "9.key").unlink()
    (forgetctl_home / "ledger.db").chmod(0o644)
    assert "readable by others" in findings(5)["ledger file"]["detail"]
    (forgetctl_home / "ledger.db").chmod(0o600)
    before = (forgetctl_home / "ledger.db").read_bytes()
    (forgetctl_home / "ledger.db").write_bytes(b"junk" * 10)
    assert "backup" in findings(5)["ledger"]["fix"]
    assert (forgetctl_home / "ledger.db").read_bytes() == b"junk" * 10  # not rebuilt
    (forgetctl_home / "ledger.db").write_bytes(before)


def test_a_junk_ledger_is_refused_even_with_its_wal_beside_it(forgetctl_home):
    """SQLite reads pages from a -wal file left beside the database: overwritten while a
    connection still held the WAL, the junk file would serve the old ledger unnoticed."""
    import sqlite3

    cli("init")
    path = forgetctl_home / "ledger.db"
    holder = sqlite3.connect(path)  # keeps the -wal file (and its pages) alive
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE IF NOT EXISTS scratch (x)")  # a frame in the WAL
    holder.commit()
    try:
        assert (forgetctl_home / "ledger.db-wal").exists()
        path.write_bytes(b"junk" * 10)
        assert "not an SQLite database" in cli("ledger", "verify", code=5).stderr
        assert "backup" in findings(5)["ledger"]["fix"]
    finally:
        holder.close()
