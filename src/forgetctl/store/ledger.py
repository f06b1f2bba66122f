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

Everything in the ledger is evidence (from migration 0004 on):

* every repository write is recorded in the ``writes`` of the event appended in the same
  transaction (``{"requests/3": {"status": "planned", ...}}``, blobs as their sha256), so
  :meth:`Ledger.audit` compares every row of every state table with the last event that
  wrote it and names the row and field the events do not explain. Rows that existed when
  a ledger was upgraded to 0004 are taken as they were, in the migration's event;
* the chain head (seq, hash) is signed with ``keys/ledger-head.key`` in the same
  transaction as every append, so rewriting the chain forward, truncating it, appending to
  it or emptying it is caught without an external copy; an exported head
  (``ledger export``) anchors it elsewhere as well.

:func:`open_ledger` refuses, never rebuilds: an empty, damaged or foreign file, a dropped
table, a missing migration row or a missing key is one clear error, and only
``open_ledger(create=True)`` on a path with no file creates a ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from forgetctl.core.errors import LedgerCorrupt, NotFound
from forgetctl.store import schema
from forgetctl.store.crypto import HEAD_KEY, RESTORE, HeadSigner, Keyring, verify_head
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

# The migration from which writes are recorded in events and the head is signed.
SIGNED = "0004_row_evidence_and_signed_head"

# The migration from which a request's blind indexes are recorded salted (`row_evidence`).
SALTED = "0005_salted_index_evidence"

# The columns that identify a subject (keyed hashes of the name and identifiers).
BLIND_INDEXES = ("subject_index", "identifier_indexes")

# The state tables and their keys: every row must be explained by the events.
STATE_TABLES = {
    "requests": "id",
    "plans": "request_id",
    "versions": "id",
    "aliases": "name",
    "alias_history": "id",
    "verifications": "id",
}


def event_hash(row: dict) -> str:
    content = {k: row[k] for k in ("seq", "ts", "kind", "request_id", "version_id", "data")}
    # An event that wrote no row hashes as it did before migration 0004.
    if row.get("writes", "{}") != "{}":
        content["writes"] = row["writes"]
    return hashlib.sha256((canonical(content) + row["prev_hash"]).encode()).hexdigest()


def evidence(value: Any) -> Any:
    """A column's value as an event records it: blobs (ciphertexts) by their sha256."""
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    return value


def row_evidence(table: str, row: dict, column: str) -> Any:
    """What an event records of ``row[column]``: :func:`evidence`, except a request's
    blind indexes, recorded as sha256(salt + value) under the row's own salt. The events
    are append-only; purge drops the indexes and the salt from the row, and what the
    events keep then matches no name, even with the home's index key."""
    value = row[column]
    salt = row.get("index_salt")
    if table == "requests" and column in BLIND_INDEXES and salt and value not in ("", "[]"):
        return "salted:" + hashlib.sha256(salt + str(value).encode()).hexdigest()
    return evidence(value)


def tables_created(upto: list[str]) -> list[str]:
    """The tables the named migrations create."""
    made = [
        m.group(1)
        for name, statements in schema.MIGRATIONS
        if name in upto
        for sql in statements
        if (m := re.match(r"\s*CREATE TABLE (\w+)", sql))
    ]
    return ["migrations", *made]


@dataclass
class ChainReport:
    ok: bool
    events: int
    head: str
    first_bad: int | None = None
    reason: str = ""


@dataclass
class Audit:
    """What `ledger verify` found: the chain, its signed head and every state row."""

    ok: bool
    events: int
    head: dict
    problems: list[str]


class Ledger:
    def __init__(self, path: Path, keys: Keyring | None = None):
        self.path = path
        # The home keeps keys/ beside ledger.db.
        self.keys = keys or Keyring(path.parent / "keys")
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so the
        # read of the chain head and the insert after it are serialised across processes.
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        self.conn = conn
        self.db = Database(conn)
        self._depth = 0
        # Rows written in the open transaction, recorded by the next event (see `wrote`).
        self._writes: dict[str, dict[str, Any]] = {}
        self._signer: HeadSigner | None = None
        self._signed = "head" in self.db.table_names()
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
            if self._writes:  # rows no event of their own recorded (a payload, a count)
                self.append_event("ledger.written")
        except BaseException:
            self._writes = {}
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._depth = 0

    def in_transaction(self) -> bool:
        return self._depth > 0

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
                    if name == SIGNED:
                        # The only moment home keys are created: the ledger starts signing.
                        self.keys.create_missing()
                        self._signed = True
                        self._baseline()
                    if name == SALTED and self._signed:
                        for row in self.rows("SELECT id FROM requests"):
                            self.wrote("requests", row["id"], "index_salt")
                    self.append_event("ledger.migrated", migration=name)
                applied.append(name)
            if name == upto:
                break
        return applied

    def _baseline(self) -> None:
        """Record the rows that exist when row evidence begins, as they are."""
        for table, key in STATE_TABLES.items():
            for row in self.rows(f"SELECT {key} FROM {table}"):
                self.wrote(table, row[key])

    def check_schema(self) -> None:
        """Refuse a ledger whose migrations or tables are not what its events say."""
        names = set(self.db.table_names())
        if "migrations" not in names:
            raise LedgerCorrupt(
                f"{self.path} holds no forgetctl ledger (no migrations table: empty, "
                f"truncated or foreign): {RESTORE}"
            )
        if "events" not in names:
            raise LedgerCorrupt(f"{self.path}: table events is missing (dropped): {RESTORE}")
        known = [name for name, _ in schema.MIGRATIONS]
        applied = self.applied_migrations()
        recorded = [
            r["migration"]
            for r in self.db.query(
                "SELECT json_extract(data, '$.migration') AS migration FROM events "
                "WHERE kind = 'ledger.migrated' ORDER BY seq"
            )
        ]
        for name in recorded:  # an edited event is the audit's to name, not a refusal
            if name in known and name not in applied:
                raise LedgerCorrupt(
                    f"{self.path}: migrations row {name!r} is missing (an event records it "
                    f"as applied): {RESTORE}"
                )
        unknown = [name for name in applied if name not in known]
        if unknown:
            raise LedgerCorrupt(
                f"{self.path} has migration {unknown[0]!r}, unknown to this forgetctl "
                "(written by a newer version?)"
            )
        if applied != known[: len(applied)]:
            raise LedgerCorrupt(f"{self.path}: migrations {applied} are not in order: {RESTORE}")
        for table in tables_created(applied):
            if table not in names:
                raise LedgerCorrupt(f"{self.path}: table {table} is missing (dropped): {RESTORE}")

    # -- events ------------------------------------------------------------------------
    def wrote(self, table: str, key: Any, *columns: str) -> None:
        """Record that ``table``'s row ``key`` was written (``columns``, or all of it): the
        next event of the open transaction carries the values as they now are."""
        if not self._signed:  # a ledger not yet upgraded records no row evidence
            return
        assert self._depth, "a row write must run inside a transaction"
        pk = STATE_TABLES[table]
        [row] = self.rows(f"SELECT * FROM {table} WHERE {pk} = ?", [key])
        values = {c: row_evidence(table, row, c) for c in (columns or row)}
        self._writes.setdefault(f"{table}/{key}", {}).update(values)

    def _sign(self, seq: int, head_hash: str) -> None:
        if self._signer is None:
            self._signer = self.keys.head_signer()
        self.conn.execute(
            "INSERT OR REPLACE INTO head VALUES (1, ?, ?, ?)",
            (seq, head_hash, self._signer.sign(seq, head_hash)),
        )

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
            if self._writes:
                row["writes"] = canonical(self._writes)
                self._writes = {}
            row["hash"] = event_hash(row)
            self.db["events"].insert(row)
            if self._signed:
                self._sign(row["seq"], row["hash"])
        return row

    def events(self, request_id: int | None = None) -> list[EventRow]:
        """Events in order, their data decoded."""
        sql = "SELECT * FROM events"
        args: list[Any] = []
        if request_id is not None:
            sql += " WHERE request_id = ?"
            args.append(request_id)
        rows = self.db.query(sql + " ORDER BY seq", args)
        return [decoded(r, "data", "writes") for r in rows]

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

    def signed_head(self) -> dict:
        """The head as signed, with its signature and the public key that checks it."""
        rows = self.rows("SELECT seq, hash, signature FROM head WHERE id = 1")
        public_key = self.keys.head_signer().public_key
        return {**rows[0], "public_key": public_key} if rows else {"public_key": public_key}

    def audit(self, against: dict | None = None) -> Audit:
        """The chain, its signed head, every state row and (``against``) an exported head."""
        chain = self.verify_chain()
        head = {"seq": chain.events if chain.ok else chain.first_bad, "hash": chain.head}
        if not chain.ok:
            problems = [f"ledger chain broken at event {chain.first_bad}: {chain.reason}"]
        else:
            problems = self._head_problems(chain) + self._row_problems()
            if against is not None:
                problems += self._anchor_problems(against)
        return Audit(not problems, chain.events, head, problems)

    def _head_problems(self, chain: ChainReport) -> list[str]:
        if not self._signed:
            return ["the chain head is not signed (ledger older than migration 0004)"]
        signed = self.signed_head()
        if "seq" not in signed:
            return ["the signed head is missing (head table emptied)"]
        seq, sig = signed["seq"], signed["signature"]
        if not verify_head(signed["public_key"], seq, signed["hash"], sig):
            return [f"the signed head (event {seq}) does not verify under keys/{HEAD_KEY}"]
        if seq > chain.events:
            return [
                f"the chain ends at event {chain.events} but the signed head is event {seq}: "
                "events removed (truncated or emptied)"
            ]
        if seq < chain.events:
            return [
                f"events {seq + 1}..{chain.events} follow the signed head (event {seq}): "
                "appended outside forgetctl"
            ]
        if signed["hash"] != chain.head:
            return [f"event {seq} is not the signed head: the chain was rewritten"]
        return []

    def _row_problems(self) -> list[str]:
        """Every state row against the last event that wrote it, one line per difference."""
        # Per row: the last event that wrote it, and per column the value and its event.
        expected: dict[str, tuple[int, dict[str, tuple[int, Any]]]] = {}
        for seq, writes in self.conn.execute("SELECT seq, writes FROM events ORDER BY seq"):
            for key, values in json.loads(writes).items():
                columns = expected.get(key, (0, {}))[1]
                expected[key] = (seq, {**columns, **{c: (seq, v) for c, v in values.items()}})
        problems = []
        for table, pk in STATE_TABLES.items():
            for row in self.rows(f"SELECT * FROM {table} ORDER BY {pk}"):
                key = f"{table}/{row[pk]}"
                if key not in expected:
                    problems.append(f"{table} {row[pk]}: a row no event wrote")
                    continue
                _, values = expected.pop(key)
                for column in row:
                    value = row_evidence(table, row, column)
                    if column not in values:
                        problems.append(f"{table} {row[pk]} {column}: no event wrote it")
                    elif values[column][1] != value:
                        seq, wrote = values[column]
                        problems.append(
                            f"{table} {row[pk]} {column}: {_short(value)}, but event {seq} "
                            f"wrote {_short(wrote)}"
                        )
        for key, (seq, _) in expected.items():
            table, row_key = key.split("/", 1)
            problems.append(f"{table} {row_key}: row deleted (event {seq} wrote it)")
        return problems

    def _anchor_problems(self, anchor: dict) -> list[str]:
        seq, anchor_hash = anchor["seq"], anchor["hash"]
        rows = self.rows("SELECT hash FROM events WHERE seq = ?", [seq])
        if seq and not rows:
            return [f"the exported head (event {seq}) is past the chain's end: events removed"]
        if rows and rows[0]["hash"] != anchor_hash:
            return [f"event {seq} differs from the exported head: the chain was rewritten"]
        key = anchor.get("public_key")
        if key and key != self.keys.head_signer().public_key:
            return ["the export was signed with another key: keys/ replaced, or another ledger"]
        return []

    # -- reading rows (for the repositories) -------------------------------------------
    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict]:
        return [dict(r) for r in self.db.query(sql, list(args))]

    def one(self, table: str, row_id: int, what: str) -> dict:
        rows = self.rows(f"SELECT * FROM {table} WHERE id = ?", [row_id])
        if not rows:
            raise NotFound(f"no {what} {row_id}")
        return rows[0]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def file_problem(path: Path) -> str | None:
    """Why an existing ledger file cannot be used, found before SQLite opens it (None: it
    can). The header is read from the file itself: SQLite would take a junk file's pages
    from a -wal file left beside it and serve the old ledger as if nothing had happened."""
    if not path.is_file():
        return "is not a regular file"
    if path.stat().st_size == 0:
        return "is empty (truncated?)"
    with path.open("rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            return "is not an SQLite database (overwritten?)"
    return None


def open_ledger(path: Path, *, create: bool = False, keys: Keyring | None = None) -> Ledger:
    """Open the ledger at ``path``; ``create``: create it if there is no file (only then).

    An existing file is checked before use and refused (:class:`LedgerCorrupt`) rather
    than rebuilt; an older forgetctl's ledger is brought up to date.
    """
    existed = path.exists() or path.is_symlink()
    if not existed and not create:
        raise NotFound(f"no ledger at {path} (run `forgetctl init`)")
    if existed and (problem := file_problem(path)):
        raise LedgerCorrupt(f"{path} {problem}: {RESTORE}")
    if not existed:
        # 0600 from the start (SQLite gives its -wal and -shm files the same mode): the
        # ledger is evidence, and holds the ciphertexts and blind indexes.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        ledger = Ledger(path, keys)
        if existed:
            ledger.check_schema()
            if SIGNED in ledger.applied_migrations():
                ledger.keys.check()
        ledger.migrate()
    except sqlite3.DatabaseError as exc:
        raise LedgerCorrupt(f"{path} is not a readable SQLite ledger ({exc}): {RESTORE}") from None
    return ledger
