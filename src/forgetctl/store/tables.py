"""The ledger's tables, one repository each: typed rows in, typed rows out, one event per change.

A repository is the only code that writes its table. Each state change writes the row and
appends its event in one transaction (joining the caller's, if there is one), and tells the
ledger which row and columns it wrote (``ledger.wrote``), so that the event records them and
``ledger verify`` can explain every row; every status change is checked against
:mod:`forgetctl.core.lifecycle` first. JSON columns are
decoded here, once, so callers never see them as strings.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from forgetctl.core import lifecycle
from forgetctl.core.errors import NotFound

if TYPE_CHECKING:  # the ledger owns the repositories; this is only for type hints
    from forgetctl.store.ledger import Ledger


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def decoded(row: Any, *columns: str) -> Any:
    out = dict(row)
    for column in columns:
        if isinstance(out.get(column), str):
            out[column] = json.loads(out[column])
    return out


class EventRow(TypedDict):
    seq: int
    ts: str
    kind: str
    request_id: int | None
    version_id: int | None
    data: dict[str, Any]
    prev_hash: str
    hash: str
    writes: dict[str, dict[str, Any]]


class RequestRow(TypedDict):
    id: int
    ref: str
    policy: str
    regulation: str
    scope: str
    status: str
    received: str
    due: str
    extended_days: int
    subject_index: str
    identifier_indexes: list[str]
    duplicate_of: int | None
    payload: bytes | None
    purged_at: str | None
    created_at: str
    updated_at: str
    failed_step: str | None
    attempts: int
    approved_at: str | None


class PlanRow(TypedDict):
    request_id: int
    payload: bytes | None
    counts: dict[str, int]
    sha256: str
    created_at: str


class VersionRow(TypedDict):
    id: int
    parent: int | None
    kind: str
    base_path: str | None
    base_sha256: str | None
    adapter_path: str | None
    adapter_sha256: str | None
    requests: list[int]
    status: str
    metrics: dict[str, Any]
    created_at: str


class VerificationRow(TypedDict):
    id: int
    version_id: int
    check_name: str
    passed: bool
    verdict: str
    """pass, fail or no_signal."""
    figures: dict[str, Any]
    reasons: list[str]
    ts: str


class _Table:
    """A repository: it reaches the database through the ledger that owns it."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger


# --------------------------------------------------------------------------- requests


class Requests(_Table):
    def _row(self, raw: dict) -> RequestRow:
        return decoded(raw, "identifier_indexes")

    def get(self, request_id: int) -> RequestRow:
        return self._row(self.ledger.one("requests", request_id, "request"))

    def id_of_ref(self, ref: str) -> int | None:
        rows = self.ledger.rows("SELECT id FROM requests WHERE ref = ?", [ref])
        return rows[0]["id"] if rows else None

    def next_id(self) -> int:
        """The id the next insert gets (rowid: the largest plus one); call it inside the
        write transaction that inserts."""
        return self.ledger.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM requests").fetchone()[
            0
        ]

    def count(self) -> int:
        return self.ledger.conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def all(self, status: str | None = None) -> list[RequestRow]:
        """Every request (or those in ``status``), in deadline order."""
        sql, args = "SELECT * FROM requests", []
        if status:
            sql, args = sql + " WHERE status = ?", [status]
        return [self._row(r) for r in self.ledger.rows(sql + " ORDER BY due, id", args)]

    def ids_in_status(self, status: str) -> list[int]:
        sql = "SELECT id FROM requests WHERE status = ? ORDER BY due, id"
        return [r["id"] for r in self.ledger.rows(sql, [status])]

    def not_purged(self) -> list[RequestRow]:
        sql = "SELECT * FROM requests WHERE purged_at IS NULL ORDER BY id"
        return [self._row(r) for r in self.ledger.rows(sql)]

    def open_duplicate(
        self, policy: str, subject_index: str, identifier_indexes: list[str]
    ) -> int | None:
        """The oldest open request of the same subject (or a shared identifier) and policy."""
        marks = ",".join("?" * len(lifecycle.OPEN_STATUSES))
        sql = (
            f"SELECT id, subject_index, identifier_indexes FROM requests "
            f"WHERE policy = ? AND status IN ({marks}) ORDER BY id"
        )
        for row in self.ledger.rows(sql, [policy, *sorted(lifecycle.OPEN_STATUSES)]):
            if row["subject_index"] == subject_index or set(identifier_indexes) & set(
                json.loads(row["identifier_indexes"])
            ):
                return row["id"]
        return None

    def add(self, fields: dict[str, Any], **event: Any) -> int:
        """Insert a request in ``received``; ``event`` is the data of its first event."""
        ts = now()
        row = {**fields, "status": "received", "created_at": ts, "updated_at": ts}
        row["identifier_indexes"] = json.dumps(row.get("identifier_indexes", []))
        if "index_salt" in self.ledger.db["requests"].columns_dict:  # not before 0005
            row["index_salt"] = secrets.token_bytes(32)  # see ledger.row_evidence
        with self.ledger.transaction():
            request_id = self.ledger.db["requests"].insert(row).last_pk
            self.ledger.wrote("requests", request_id)
            self.ledger.append_event("request.received", request_id=request_id, **event)
        return request_id

    def set_payload(self, request_id: int, payload: bytes) -> None:
        """The encrypted payload, written once right after :meth:`add`."""
        with self.ledger.transaction():
            self.ledger.db["requests"].update(request_id, {"payload": payload})
            self.ledger.wrote("requests", request_id, "payload")

    def set_status(self, request_id: int, status: str, **data: Any) -> None:
        with self.ledger.transaction():
            old = self.get(request_id)["status"]
            lifecycle.check_request_move(request_id, old, status)
            self.ledger.db["requests"].update(request_id, {"status": status, "updated_at": now()})
            self.ledger.wrote("requests", request_id, "status", "updated_at")
            self.ledger.append_event(
                "request.status", request_id=request_id, **{"from": old, "to": status}, **data
            )

    def mark_duplicate(self, request_id: int, of: int, **data: Any) -> None:
        with self.ledger.transaction():
            self.ledger.db["requests"].update(request_id, {"duplicate_of": of})
            self.ledger.wrote("requests", request_id, "duplicate_of")
            self.set_status(request_id, "duplicate", duplicate_of=of, **data)

    def duplicates_of(self, request_id: int) -> list[int]:
        sql = "SELECT id FROM requests WHERE duplicate_of = ? AND status = 'duplicate' ORDER BY id"
        return [r["id"] for r in self.ledger.rows(sql, [request_id])]

    def hand_on(self, request_id: int, of: int | None, **data: Any) -> None:
        """A duplicate whose original was cancelled: the original itself (``of`` None, back
        to ``received``), or a duplicate of the one that now is."""
        with self.ledger.transaction():
            self.ledger.db["requests"].update(request_id, {"duplicate_of": of})
            self.ledger.wrote("requests", request_id, "duplicate_of")
            if of is None:
                self.set_status(request_id, "received", **data)
            else:
                self.ledger.append_event(
                    "request.duplicate_of", request_id=request_id, duplicate_of=of, **data
                )

    def extend(self, request_id: int, total_days: int, due: str, **event: Any) -> None:
        with self.ledger.transaction():
            self.ledger.db["requests"].update(
                request_id, {"extended_days": total_days, "due": due, "updated_at": now()}
            )
            self.ledger.wrote("requests", request_id, "extended_days", "due", "updated_at")
            self.ledger.append_event(
                "request.extended", request_id=request_id, total_days=total_days, due=due, **event
            )

    def approve(self, request_id: int, approver: str) -> None:
        with self.ledger.transaction():
            self.ledger.db["requests"].update(request_id, {"approved_at": now()})
            self.ledger.wrote("requests", request_id, "approved_at")
            self.ledger.append_event("request.approved", request_id=request_id, approver=approver)

    def record_failure(self, request_id: int, step: str, attempts: int) -> None:
        """Where a failed attempt stopped and how many attempts there were (no event: the
        status change or the retry event that follows it says so, and records the write)."""
        with self.ledger.transaction():
            self.ledger.db["requests"].update(
                request_id, {"attempts": attempts, "failed_step": step}
            )
            self.ledger.wrote("requests", request_id, "attempts", "failed_step")

    def reopen(self, request_id: int, status: str, **data: Any) -> None:
        """A failed request back to ``status`` with its attempts reset (`request retry`)."""
        with self.ledger.transaction():
            self.ledger.db["requests"].update(request_id, {"attempts": 0, "failed_step": None})
            self.ledger.wrote("requests", request_id, "attempts", "failed_step")
            self.set_status(request_id, status, **data)

    def purge(self, request_id: int, early: bool, reason: str, drop_indexes: bool = True) -> None:
        """Drop the request's and its plan's ciphertexts (the key is destroyed by the
        caller) and, with ``drop_indexes``, the subject's blind indexes ("" matches no
        keyed hash, so the purged subject is no longer found as a duplicate)."""
        with self.ledger.transaction():
            cleared: dict[str, Any] = {"payload": None, "purged_at": now()}
            if drop_indexes:
                cleared |= {"subject_index": "", "identifier_indexes": "[]", "index_salt": None}
            self.ledger.db["requests"].update(request_id, cleared)
            self.ledger.wrote("requests", request_id, *cleared)
            cleared = self.ledger.conn.execute(
                "UPDATE plans SET payload = NULL WHERE request_id = ?", [request_id]
            )
            if cleared.rowcount:
                self.ledger.wrote("plans", request_id, "payload")
            self.ledger.append_event(
                "request.purged", request_id=request_id, early=early, reason=reason,
                indexes_dropped=drop_indexes,
            )  # fmt: skip


# --------------------------------------------------------------------------- plans


class Plans(_Table):
    def get(self, request_id: int) -> PlanRow | None:
        rows = self.ledger.rows("SELECT * FROM plans WHERE request_id = ?", [request_id])
        return decoded(rows[0], "counts") if rows else None

    def put(self, request_id: int, payload: bytes, counts: dict[str, int], sha256: str) -> None:
        with self.ledger.transaction():
            self.ledger.db["plans"].upsert(
                {
                    "request_id": request_id,
                    "payload": payload,
                    "counts": json.dumps(counts, sort_keys=True),
                    "sha256": sha256,
                    "created_at": now(),
                },
                pk="request_id",
            )
            self.ledger.wrote("plans", request_id)
            self.ledger.append_event(
                "plan.stored", request_id=request_id, counts=counts, sha256=sha256
            )


# --------------------------------------------------------------------------- versions


class Versions(_Table):
    def _row(self, raw: dict) -> VersionRow:
        return decoded(raw, "requests", "metrics")

    def get(self, version_id: int) -> VersionRow:
        return self._row(self.ledger.one("versions", version_id, "version"))

    def find(self, version_id: int) -> VersionRow | None:
        rows = self.ledger.rows("SELECT * FROM versions WHERE id = ?", [version_id])
        return self._row(rows[0]) if rows else None

    def all(self) -> list[VersionRow]:
        return [self._row(r) for r in self.ledger.rows("SELECT * FROM versions ORDER BY id")]

    def of_request(
        self, request_id: int, statuses: tuple[str, ...] | None = None
    ) -> list[VersionRow]:
        """The versions built for a request (whose status is in ``statuses``), newest first."""
        found = [v for v in reversed(self.all()) if request_id in v["requests"]]
        return [v for v in found if statuses is None or v["status"] in statuses]

    def newest_judged(self) -> int | None:
        """The newest version that awaits the gate's verdict or promotion."""
        rows = self.ledger.rows(
            "SELECT id FROM versions WHERE status IN ('candidate', 'verified') "
            "ORDER BY id DESC LIMIT 1"
        )
        return rows[0]["id"] if rows else None

    def adapter_paths(self) -> set[str]:
        return {r["adapter_path"] for r in self.ledger.rows("SELECT adapter_path FROM versions")}

    def base_paths(self) -> set[str]:
        return {r["base_path"] for r in self.ledger.rows("SELECT base_path FROM versions")}

    def lineage(self, version_id: int) -> list[VersionRow]:
        """The chain of versions from the base model (first) to ``version_id`` (last)."""
        chain = []
        current: int | None = version_id
        while current is not None:
            row = self.get(current)
            chain.append(row)
            current = row["parent"]
        return chain[::-1]

    def weights_chain(self, version_id: int) -> list[VersionRow]:
        """The versions whose weights make up ``version_id``'s: its lineage from the newest
        root (the base, or a consolidated model trained without the subjects before it)."""
        chain = self.lineage(version_id)
        start = max(i for i, v in enumerate(chain) if v["kind"] in lifecycle.ROOT_KINDS)
        return chain[start:]

    def forgotten_requests(self, version_id: int) -> list[int]:
        """Every request covered in a version's lineage (by an adapter, or by a
        consolidated model trained without it), oldest first, each once."""
        found = [r for v in self.lineage(version_id) for r in v["requests"]]
        return list(dict.fromkeys(found))

    def add(self, **row: Any) -> int:
        row.setdefault("created_at", now())
        for key in ("requests", "metrics"):
            if key in row and not isinstance(row[key], str):
                row[key] = canonical(row[key])
        with self.ledger.transaction():
            version_id = self.ledger.db["versions"].insert(row).last_pk
            self.ledger.wrote("versions", version_id)
            self.ledger.append_event(
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

    def set_status(self, version_id: int, status: str, **data: Any) -> None:
        with self.ledger.transaction():
            old = self.get(version_id)["status"]
            lifecycle.check_version_move(version_id, old, status)
            self.ledger.db["versions"].update(version_id, {"status": status})
            self.ledger.wrote("versions", version_id, "status")
            self.ledger.append_event(
                "version.status", version_id=version_id, **{"from": old, "to": status}, **data
            )


class Aliases(_Table):
    def get(self, name: str = "production") -> int:
        rows = self.ledger.rows("SELECT version_id FROM aliases WHERE name = ?", [name])
        if not rows:
            raise NotFound(
                f"no alias {name!r}: register a base model with `forgetctl init --model`"
            )
        return rows[0]["version_id"]

    def move(self, name: str, version_id: int, reason: str, **data: Any) -> None:
        with self.ledger.transaction():
            rows = self.ledger.rows("SELECT version_id FROM aliases WHERE name = ?", [name])
            previous = rows[0]["version_id"] if rows else None
            ts = now()
            self.ledger.db["aliases"].upsert(
                {"name": name, "version_id": version_id, "updated_at": ts}, pk="name"
            )
            entry = self.ledger.db["alias_history"].insert(
                {
                    "alias": name,
                    "version_id": version_id,
                    "previous_version_id": previous,
                    "reason": reason,
                    "ts": ts,
                }
            )
            self.ledger.wrote("aliases", name)
            self.ledger.wrote("alias_history", entry.last_pk)
            self.ledger.append_event("alias.moved", version_id=version_id, alias=name,
                                     previous=previous, reason=reason, **data)  # fmt: skip

    def history(self, name: str = "production") -> list[dict]:
        sql = "SELECT * FROM alias_history WHERE alias = ? ORDER BY id"
        return self.ledger.rows(sql, [name])


class Verifications(_Table):
    def add(
        self, version_id: int, check: str, verdict: str, figures: dict, reasons: list[str]
    ) -> None:
        passed = verdict == "pass"
        with self.ledger.transaction():
            entry = self.ledger.db["verifications"].insert(
                {
                    "version_id": version_id,
                    "check_name": check,
                    "passed": int(passed),
                    "verdict": verdict,
                    "figures": canonical(figures),
                    "reasons": canonical(reasons),
                    "ts": now(),
                }
            )
            self.ledger.wrote("verifications", entry.last_pk)
            self.ledger.append_event("verification.recorded", version_id=version_id,
                                     check=check, verdict=verdict, reasons=reasons)  # fmt: skip

    def of(self, version_id: int) -> list[VerificationRow]:
        sql = "SELECT * FROM verifications WHERE version_id = ? ORDER BY id"
        out = []
        for r in self.ledger.rows(sql, [version_id]):
            r = decoded(r, "figures", "reasons")
            r["passed"] = bool(r["passed"])
            out.append(r)
        return out

    def verdicts(self, version_id: int) -> dict[str, bool]:
        """The latest verdict of each check recorded for a version."""
        return {row["check_name"]: row["passed"] for row in self.of(version_id)}
