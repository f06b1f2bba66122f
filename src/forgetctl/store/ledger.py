"""The ledger: one SQLite database with named migrations and a hash-chained event log.

Every state change of a request, version or alias is an event. Events are append-only
(triggers reject UPDATE and DELETE) and chained: each row stores
``hash = sha256(canonical JSON of {seq, ts, kind, request_id, version_id, data, prev_hash})``
so editing, deleting or reordering rows breaks the chain at the first affected event,
which ``verify_chain`` names. Events never carry personal data: names live only as
blind-index hashes and inside the encrypted request payload.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from forgetctl.core.errors import InvalidState, NotFound

GENESIS = "0" * 64


# Named migrations, applied in order; each runs in the same transaction as the row that
# records it, so a crash can never leave a half-applied schema.
MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_core",
        [
            """CREATE TABLE requests (
                id INTEGER PRIMARY KEY,
                ref TEXT NOT NULL UNIQUE,
                policy TEXT NOT NULL,
                regulation TEXT NOT NULL,
                scope TEXT NOT NULL,
                status TEXT NOT NULL,
                received TEXT NOT NULL,
                due TEXT NOT NULL,
                extended_days INTEGER NOT NULL DEFAULT 0,
                subject_index TEXT NOT NULL,
                identifier_indexes TEXT NOT NULL DEFAULT '[]',
                duplicate_of INTEGER REFERENCES requests(id),
                payload BLOB,
                purged_at TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX requests_subject ON requests(subject_index, policy)",
            """CREATE TABLE events (
                seq INTEGER PRIMARY KEY,
                ts TEXT NOT NULL,
                kind TEXT NOT NULL,
                request_id INTEGER,
                version_id INTEGER,
                data TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            "CREATE INDEX events_request ON events(request_id)",
            """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
               BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
            """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
               BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
            """CREATE TABLE versions (
                id INTEGER PRIMARY KEY,
                parent INTEGER REFERENCES versions(id),
                kind TEXT NOT NULL,
                base_path TEXT,
                base_sha256 TEXT,
                adapter_path TEXT,
                adapter_sha256 TEXT,
                requests TEXT NOT NULL DEFAULT '[]',
                status TEXT NOT NULL,
                metrics TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE aliases (
                name TEXT PRIMARY KEY,
                version_id INTEGER NOT NULL REFERENCES versions(id),
                updated_at TEXT NOT NULL
            )""",
            """CREATE TABLE alias_history (
                id INTEGER PRIMARY KEY,
                alias TEXT NOT NULL,
                version_id INTEGER NOT NULL,
                previous_version_id INTEGER,
                reason TEXT NOT NULL,
                ts TEXT NOT NULL
            )""",
            """CREATE TABLE verifications (
                id INTEGER PRIMARY KEY,
                version_id INTEGER NOT NULL REFERENCES versions(id),
                check_name TEXT NOT NULL,
                passed INTEGER NOT NULL,
                figures TEXT NOT NULL,
                reasons TEXT NOT NULL,
                ts TEXT NOT NULL
            )""",
        ],
    ),
    (
        "0002_plans_and_steps",
        [
            # The planned prompt set, encrypted with the request's payload key; counts and
            # hash in clear so evidence survives crypto-shredding.
            """CREATE TABLE plans (
                request_id INTEGER PRIMARY KEY REFERENCES requests(id),
                payload BLOB,
                counts TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            # Where a failed request stopped, how often it was tried, and approvals.
            "ALTER TABLE requests ADD COLUMN failed_step TEXT",
            "ALTER TABLE requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE requests ADD COLUMN approved_at TEXT",
        ],
    ),
]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


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
        for name, statements in MIGRATIONS:
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

    def events(self, request_id: int | None = None) -> list[dict]:
        sql = "SELECT * FROM events"
        args: list[Any] = []
        if request_id is not None:
            sql += " WHERE request_id = ?"
            args.append(request_id)
        return [dict(r) for r in self.db.query(sql + " ORDER BY seq", args)]

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

    # -- rows --------------------------------------------------------------------------
    def get(self, table: str, row_id: int, what: str) -> dict:
        rows = list(self.db.query(f"SELECT * FROM {table} WHERE id = ?", [row_id]))
        if not rows:
            raise NotFound(f"no {what} {row_id}")
        return dict(rows[0])

    def request(self, request_id: int) -> dict:
        return self.get("requests", request_id, "request")

    def version(self, version_id: int) -> dict:
        row = self.get("versions", version_id, "version")
        row["requests"] = json.loads(row["requests"])
        row["metrics"] = json.loads(row["metrics"])
        return row

    def alias(self, name: str = "production") -> int:
        rows = list(self.db.query("SELECT version_id FROM aliases WHERE name = ?", [name]))
        if not rows:
            raise NotFound(
                f"no alias {name!r}: register a base model with `forgetctl init --model`"
            )
        return rows[0]["version_id"]

    def lineage(self, version_id: int) -> list[dict]:
        """The chain of versions from the base model (first) to ``version_id`` (last)."""
        chain = []
        current: int | None = version_id
        while current is not None:
            row = self.version(current)
            chain.append(row)
            current = row["parent"]
        return chain[::-1]

    # -- state changes (each one an event) ---------------------------------------------
    def set_request_status(self, request_id: int, status: str, **data: Any) -> None:
        with self.transaction():
            old = self.request(request_id)["status"]
            self.db["requests"].update(request_id, {"status": status, "updated_at": now()})
            self.append_event(
                "request.status", request_id=request_id, **{"from": old, "to": status}, **data
            )

    def insert_version(self, **row: Any) -> int:
        row.setdefault("created_at", now())
        for key in ("requests", "metrics"):
            if key in row and not isinstance(row[key], str):
                row[key] = canonical(row[key])
        with self.transaction():
            version_id = self.db["versions"].insert(row).last_pk
            self.append_event(
                "version.created",
                version_id=version_id,
                parent=row.get("parent"),
                version_kind=row["kind"],
                status=row["status"],
                adapter_sha256=row.get("adapter_sha256"),
                base_sha256=row.get("base_sha256"),
                requests=json.loads(row.get("requests", "[]")),
            )
        return version_id

    def set_version_status(self, version_id: int, status: str, **data: Any) -> None:
        with self.transaction():
            old = self.version(version_id)["status"]
            self.db["versions"].update(version_id, {"status": status})
            self.append_event(
                "version.status", version_id=version_id, **{"from": old, "to": status}, **data
            )

    def move_alias(self, name: str, version_id: int, reason: str, **data: Any) -> None:
        with self.transaction():
            rows = list(self.db.query("SELECT version_id FROM aliases WHERE name = ?", [name]))
            previous = rows[0]["version_id"] if rows else None
            ts = now()
            self.db["aliases"].upsert(
                {"name": name, "version_id": version_id, "updated_at": ts}, pk="name"
            )
            self.db["alias_history"].insert(
                {
                    "alias": name,
                    "version_id": version_id,
                    "previous_version_id": previous,
                    "reason": reason,
                    "ts": ts,
                }
            )
            self.append_event(
                "alias.moved",
                version_id=version_id,
                alias=name,
                previous=previous,
                reason=reason,
                **data,
            )

    def alias_history(self, name: str = "production") -> list[dict]:
        sql = "SELECT * FROM alias_history WHERE alias = ? ORDER BY id"
        return [dict(r) for r in self.db.query(sql, [name])]

    def add_verification(
        self, version_id: int, check: str, passed: bool, figures: dict, reasons: list[str]
    ) -> None:
        with self.transaction():
            self.db["verifications"].insert(
                {
                    "version_id": version_id,
                    "check_name": check,
                    "passed": int(passed),
                    "figures": canonical(figures),
                    "reasons": canonical(reasons),
                    "ts": now(),
                }
            )
            self.append_event(
                "verification.recorded",
                version_id=version_id,
                check=check,
                passed=passed,
                reasons=reasons,
            )

    def verifications(self, version_id: int) -> list[dict]:
        sql = "SELECT * FROM verifications WHERE version_id = ? ORDER BY id"
        out = []
        for r in self.db.query(sql, [version_id]):
            r = dict(r)
            r["figures"], r["reasons"] = json.loads(r["figures"]), json.loads(r["reasons"])
            r["passed"] = bool(r["passed"])
            out.append(r)
        return out


def open_ledger(path: Path, *, create: bool = False) -> Ledger:
    if not create and not path.exists():
        raise NotFound(f"no ledger at {path} (run `forgetctl init`)")
    ledger = Ledger(path)
    if create:
        ledger.migrate()
    elif ledger.applied_migrations() != [name for name, _ in MIGRATIONS]:
        # An older forgetctl created it: bring it up to date before use.
        ledger.migrate()
    return ledger


def require_status(row: dict, allowed: set[str], action: str) -> None:
    if row["status"] not in allowed:
        raise InvalidState(
            f"request {row['id']} is {row['status']}; cannot {action} "
            f"(allowed from: {', '.join(sorted(allowed))})"
        )
