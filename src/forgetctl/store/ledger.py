"""The ledger: one SQLite database with named migrations and a hash-chained event log.

This package is the only code that reads or writes SQL. :class:`Ledger` owns the
connection, the transactions, the migrations and the event chain; the tables are reached
through its repositories (``ledger.requests``, ``ledger.plans``, ``ledger.versions``,
``ledger.aliases``, ``ledger.verifications``), which return typed rows with their JSON
columns decoded, and which check every status change against :mod:`forgetctl.core.lifecycle`.

Every state change of a request, version or alias is an event. Events are append-only
(triggers reject UPDATE and DELETE) and chained: each row stores
``hash = sha256(canonical JSON of {seq, ts, kind, request_id, version_id, data, prev_hash})``
so editing, deleting or reordering rows breaks the chain at the first affected event,
which ``verify_chain`` names. Events never carry personal data: names live only as
blind-index hashes and inside the encrypted request payload.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from forgetctl.core.errors import NotFound
from forgetctl.store import schema
from forgetctl.store.tables import (
    Aliases,
    EventRow,
    Plans,
    Requests,
    Verifications,
    Versions,
    canonical,
    decoded,
    now,
)

GENESIS = "0" * 64


def event_hash(row: dict) -> str:
    content = {k: row[k] for k in ("seq", "ts", "kind", "request_id", "version_id", "data")}
    return hashlib.sha256((canonical(content) + row["prev_hash"]).encode()).hexdigest()


@dataclass
class ChainReport:
    ok: bool
    events: int
    head: str
    first_bad: int | None = None
    reason: str = ""


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so the
        # read of the chain head and the insert after it are serialised across processes.
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        self.conn = conn
        self.db = Database(conn)
        self._depth = 0
        self.requests = Requests(self)
        self.plans = Plans(self)
        self.versions = Versions(self)
        self.aliases = Aliases(self)
        self.verifications = Verifications(self)

    def close(self) -> None:
        self.conn.close()

    # -- transactions and migrations ---------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Ledger]:
        """A write transaction; nested calls join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._depth = 0

    def applied_migrations(self) -> list[str]:
        if "migrations" not in self.db.table_names():
            return []
        return [r["name"] for r in self.db.query("SELECT name FROM migrations ORDER BY name")]

    def migrate(self, upto: str | None = None) -> list[str]:
        """Apply pending migrations (all, or up to and including ``upto``)."""
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
        )
        done = set(self.applied_migrations())
        applied = []
        for name, statements in schema.MIGRATIONS:
            if name not in done:
                with self.transaction():
                    for sql in statements:
                        self.conn.execute(sql)
                    self.conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, now()))
                    self.append_event("ledger.migrated", migration=name)
                applied.append(name)
            if name == upto:
                break
        return applied

    # -- events ------------------------------------------------------------------------
    def append_event(
        self,
        kind: str,
        *,
        request_id: int | None = None,
        version_id: int | None = None,
        **data: Any,
    ) -> dict:
        with self.transaction():
            last = self.conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
            prev = last.fetchone()
            row = {
                "seq": (prev[0] + 1) if prev else 1,
                "ts": now(),
                "kind": kind,
                "request_id": request_id,
                "version_id": version_id,
                "data": canonical(data),
                "prev_hash": prev[1] if prev else GENESIS,
            }
            row["hash"] = event_hash(row)
            self.db["events"].insert(row)
        return row

    def events(self, request_id: int | None = None) -> list[EventRow]:
        """Events in order, their data decoded."""
        sql = "SELECT * FROM events"
        args: list[Any] = []
        if request_id is not None:
            sql += " WHERE request_id = ?"
            args.append(request_id)
        return [decoded(r, "data") for r in self.db.query(sql + " ORDER BY seq", args)]

    def verify_chain(self) -> ChainReport:
        """Recompute every hash and link; report the first event that does not fit."""
        prev_hash, expected_seq, count = GENESIS, 1, 0
        # rowid order is the physical insertion order, independent of the seq column.
        for row in self.db.query("SELECT * FROM events ORDER BY rowid"):
            count += 1
            if row["seq"] != expected_seq:
                return ChainReport(
                    False,
                    count,
                    prev_hash,
                    row["seq"],
                    f"event {row['seq']} found where event {expected_seq} belongs "
                    "(deleted or reordered)",
                )
            if row["prev_hash"] != prev_hash:
                return ChainReport(
                    False, count, prev_hash, row["seq"], f"event {row['seq']}: broken link"
                )
            if event_hash(row) != row["hash"]:
                return ChainReport(
                    False, count, prev_hash, row["seq"], f"event {row['seq']}: content edited"
                )
            prev_hash, expected_seq = row["hash"], expected_seq + 1
        return ChainReport(True, count, prev_hash)

    def head(self) -> dict:
        row = self.conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        last = row.fetchone()
        return {"seq": last[0] if last else 0, "hash": last[1] if last else GENESIS}

    # -- reading rows (for the repositories) -------------------------------------------
    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict]:
        return [dict(r) for r in self.db.query(sql, list(args))]

    def one(self, table: str, row_id: int, what: str) -> dict:
        rows = self.rows(f"SELECT * FROM {table} WHERE id = ?", [row_id])
        if not rows:
            raise NotFound(f"no {what} {row_id}")
        return rows[0]


def open_ledger(path: Path, *, create: bool = False) -> Ledger:
    if not create and not path.exists():
        raise NotFound(f"no ledger at {path} (run `forgetctl init`)")
    ledger = Ledger(path)
    if create:
        ledger.migrate()
    elif ledger.applied_migrations() != [name for name, _ in schema.MIGRATIONS]:
        # An older forgetctl created it: bring it up to date before use.
        ledger.migrate()
    return ledger
