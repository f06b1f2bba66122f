"""Deletion requests: the schema, intake into the ledger, and the request life cycle.

Intake validates a request with pydantic, attaches the policy its regulation selects,
computes the deadline, stores the subject only as blind-index hashes and the payload
(names, aliases, identifiers, records, requester, notes) encrypted under the request's own
key, and marks it ``duplicate`` when the same subject is already open under the same policy.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forgetctl.core.errors import BadInput, InvalidState
from forgetctl.core.policy import Policy, policy_for_regulation
from forgetctl.store.crypto import Keyring
from forgetctl.store.ledger import Ledger, now, require_status

STATUSES = (
    "received",
    "planned",
    "applied",
    "verified",
    "promoted",
    "not_present",
    "duplicate",
    "rejected",
    "failed",
    "cancelled",
)


OPEN_STATUSES = {"received", "planned", "applied", "verified"}


MAX_FILE_BYTES = 20 * 1024 * 1024


MAX_RECORDS = 5000


class Record(BaseModel):
    """A training record known to be about the subject: a Q/A pair or a free text."""

    model_config = ConfigDict(extra="forbid")
    question: str | None = Field(None, max_length=4000)
    answer: str | None = Field(None, max_length=8000)
    text: str | None = Field(None, max_length=16000)

    @model_validator(mode="after")
    def _one_shape(self) -> Record:
        qa = bool(self.question and self.question.strip()) and bool(
            self.answer and self.answer.strip()
        )
        if not qa and not (self.text and self.text.strip()):
            raise ValueError("a record needs non-empty question and answer, or text")
        return self


class Subject(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=300)
    aliases: list[str] = []
    identifiers: dict[str, str] = {}
    """e.g. {"email": "..."}: matched exactly (after normalisation) for duplicates."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("subject name is empty")
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, values: list[str]) -> list[str]:
        cleaned = [" ".join(v.split()) for v in values]
        if any(not v or len(v) > 300 for v in cleaned):
            raise ValueError("aliases must be non-empty names of at most 300 characters")
        return list(dict.fromkeys(cleaned))


class RequestIn(BaseModel):
    """A deletion request as it arrives (CLI flags or one row of a request file)."""

    model_config = ConfigDict(extra="forbid")
    ref: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:/-]+$")
    regulation: str = Field(min_length=1, max_length=50)
    subject: Subject
    scope: Literal["entity", "records"] = "entity"
    records: list[Record] = Field([], max_length=MAX_RECORDS)
    received: date = Field(default_factory=date.today)
    requester: str | None = Field(None, max_length=300)
    notes: str | None = Field(None, max_length=4000)

    @model_validator(mode="after")
    def _check(self) -> RequestIn:
        if self.received > date.today():
            raise ValueError(f"received date {self.received} is in the future")
        if self.scope == "records" and not self.records:
            raise ValueError("scope 'records' needs at least one record")
        return self

    def payload(self) -> dict:
        """The personal data, stored only encrypted."""
        return self.model_dump(mode="json", include={"subject", "records", "requester", "notes"})


def _first_error(exc: ValidationError, where: str) -> BadInput:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return BadInput(f"{where}{': ' + loc if loc else ''}: {msg}")


def parse_request(data: Any, where: str = "request") -> RequestIn:
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected an object, got {type(data).__name__}")
    try:
        return RequestIn.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, where) from None


# -- files -------------------------------------------------------------------------------
def read_text_file(path: Path) -> str:
    """Read a user-supplied text file with the checks every input file gets."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BadInput(f"{path}: file too large ({size} bytes, limit {MAX_FILE_BYTES})")
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise BadInput(f"{path}: binary file, expected text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text") from None


def _json_lines(text: str, where: str) -> list[Any]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BadInput(f"{where} line {number}: invalid JSON ({exc.msg})") from None
    return rows


def load_records(path: Path) -> list[dict]:
    """A JSONL file of records ({question, answer} or {text})."""
    rows = _json_lines(read_text_file(path), str(path))
    if not rows:
        raise BadInput(f"{path}: no records")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise BadInput(f"{path} line {number}: expected an object")
        keep = {k: row[k] for k in ("question", "answer", "text") if k in row}
        try:
            Record.model_validate(keep)
        except ValidationError as exc:
            raise _first_error(exc, f"{path} line {number}") from None
        rows[number - 1] = keep
    return rows


def _csv_rows(text: str, where: str) -> list[dict]:
    """CSV columns: ref, regulation, subject, aliases (';'-separated), email, scope,
    received, requester, notes. Records are not given in CSV (use JSON or JSONL)."""
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as exc:
        raise BadInput(f"{where}: invalid CSV ({exc})") from None
    if not reader.fieldnames or "subject" not in reader.fieldnames:
        raise BadInput(f"{where}: CSV needs a header with at least 'subject' and 'regulation'")
    out = []
    for row in rows:
        if None in row:
            raise BadInput(f"{where}: a row has more fields than the header")
        item: dict[str, Any] = {
            k: v for k, v in row.items() if k not in ("subject", "aliases", "email") and v
        }
        item["subject"] = {
            "name": row.get("subject") or "",
            "aliases": [a for a in (row.get("aliases") or "").split(";") if a.strip()],
            "identifiers": {"email": row["email"]} if row.get("email") else {},
        }
        out.append(item)
    return out


def load_request_file(path: Path) -> list[RequestIn]:
    """JSON (an object, a list, or {"requests": [...]}), JSONL or CSV; all rows or none."""
    text = read_text_file(path)
    where = str(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(text, where)
    elif suffix == ".jsonl":
        rows = _json_lines(text, where)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        rows = data.get("requests", [data]) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise BadInput(f"{where}: expected a request object or a list of them")
    if not rows:
        raise BadInput(f"{where}: no requests")
    parsed = [parse_request(row, f"{where} request {i}") for i, row in enumerate(rows, 1)]
    refs = [r.ref for r in parsed if r.ref]
    if len(refs) != len(set(refs)):
        raise BadInput(f"{where}: the same ref appears twice")
    return parsed


# -- intake ------------------------------------------------------------------------------
def deadline(received: date, policy: Policy, extended_days: int = 0) -> date:
    return received + timedelta(days=policy.deadline_days + extended_days)


def _generated_ref(ledger: Ledger, received: date) -> str:
    count = ledger.conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    return f"FCTL-{received:%Y%m%d}-{count + 1:05d}"


def find_open_duplicate(
    ledger: Ledger, policy: str, subject_index: str, identifier_indexes: list[str]
) -> int | None:
    marks = ",".join("?" * len(OPEN_STATUSES))
    sql = (
        f"SELECT id, subject_index, identifier_indexes FROM requests "
        f"WHERE policy = ? AND status IN ({marks}) ORDER BY id"
    )
    for row in ledger.db.query(sql, [policy, *sorted(OPEN_STATUSES)]):
        if row["subject_index"] == subject_index or set(identifier_indexes) & set(
            json.loads(row["identifier_indexes"])
        ):
            return row["id"]
    return None


def add_request(
    ledger: Ledger, keys: Keyring, policies: dict[str, Policy], req: RequestIn
) -> tuple[int, bool]:
    """Record a request; returns (id, created). An existing ref returns (its id, False)."""
    policy = policy_for_regulation(policies, req.regulation)
    if req.ref:
        existing = list(ledger.db.query("SELECT id FROM requests WHERE ref = ?", [req.ref]))
        if existing:
            return existing[0]["id"], False
    subject_index = keys.blind_index(req.subject.name)
    identifier_indexes = sorted(
        keys.blind_index(value, kind=f"id:{kind}")
        for kind, value in req.subject.identifiers.items()
    )
    with ledger.transaction():
        ref = req.ref or _generated_ref(ledger, req.received)
        original = find_open_duplicate(ledger, policy.name, subject_index, identifier_indexes)
        ts = now()
        request_id = (
            ledger.db["requests"]
            .insert(
                {
                    "ref": ref,
                    "policy": policy.name,
                    "regulation": req.regulation.lower(),
                    "scope": req.scope,
                    "status": "received",
                    "received": req.received.isoformat(),
                    "due": deadline(req.received, policy).isoformat(),
                    "subject_index": subject_index,
                    "identifier_indexes": json.dumps(identifier_indexes),
                    "created_at": ts,
                    "updated_at": ts,
                }
            )
            .last_pk
        )
        ledger.db["requests"].update(
            request_id, {"payload": keys.encrypt(request_id, req.payload())}
        )
        ledger.append_event(
            "request.received",
            request_id=request_id,
            ref=ref,
            policy=policy.name,
            scope=req.scope,
            records=len(req.records),
            aliases=len(req.subject.aliases),
            due=deadline(req.received, policy).isoformat(),
        )
        if original is not None:
            ledger.db["requests"].update(request_id, {"duplicate_of": original})
            ledger.set_request_status(request_id, "duplicate", duplicate_of=original)
    return request_id, True


def import_requests(
    ledger: Ledger, keys: Keyring, policies: dict[str, Policy], reqs: list[RequestIn]
) -> list[tuple[int, bool]]:
    """All or nothing: every request of a file is recorded in one transaction."""
    for req in reqs:  # fail on an unknown regulation before writing anything
        policy_for_regulation(policies, req.regulation)
    with ledger.transaction():
        return [add_request(ledger, keys, policies, req) for req in reqs]


# -- reading -----------------------------------------------------------------------------
def payload(ledger: Ledger, keys: Keyring, request_id: int) -> dict:
    """The decrypted payload; InvalidState once the request was purged."""
    row = ledger.request(request_id)
    if row["payload"] is None or not keys.has_request_key(request_id):
        raise InvalidState(f"request {request_id}: personal data purged on {row['purged_at']}")
    return keys.decrypt(request_id, row["payload"])


def days_left(row: dict, today: date | None = None) -> int:
    return (date.fromisoformat(row["due"]) - (today or date.today())).days


def summary(row: dict, policy: Policy | None = None) -> dict:
    """The PII-free view of a request row (for tables, JSON and exports)."""
    left = days_left(row)
    out = {
        k: row[k]
        for k in (
            "id",
            "ref",
            "policy",
            "regulation",
            "scope",
            "status",
            "received",
            "due",
            "extended_days",
            "duplicate_of",
            "failed_step",
            "attempts",
            "approved_at",
            "purged_at",
        )
        if k in row
    }
    out["days_left"] = left
    out["overdue"] = left < 0 and row["status"] in OPEN_STATUSES
    if policy is not None:
        out["due_soon"] = 0 <= left <= policy.warning_days and row["status"] in OPEN_STATUSES
    return out


def list_requests(ledger: Ledger, status: str | None = None, overdue: bool = False) -> list[dict]:
    if status is not None and status not in STATUSES:
        raise BadInput(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    sql, args = "SELECT * FROM requests", []
    if status:
        sql, args = sql + " WHERE status = ?", [status]
    rows = [dict(r) for r in ledger.db.query(sql + " ORDER BY due, id", args)]
    if overdue:
        rows = [r for r in rows if r["status"] in OPEN_STATUSES and days_left(r) < 0]
    return rows


def ids_in_status(ledger: Ledger, status: str) -> list[int]:
    """Requests in one status, in deadline order (the order the run loop works in)."""
    sql = "SELECT id FROM requests WHERE status = ? ORDER BY due, id"
    return [r["id"] for r in ledger.db.query(sql, [status])]


# -- life cycle --------------------------------------------------------------------------
def cancel(ledger: Ledger, request_id: int, reason: str) -> None:
    if not reason.strip():
        raise BadInput("a reason is required")
    with ledger.transaction():
        require_status(ledger.request(request_id), OPEN_STATUSES, "cancel")
        ledger.set_request_status(request_id, "cancelled", reason=reason)


def extend(
    ledger: Ledger,
    policy: Policy,
    request_id: int,
    days: int,
    reason: str,
    notified: date,
) -> date:
    """GDPR Art. 12(3): extend by at most the policy's extension, telling the subject."""
    if not reason.strip():
        raise BadInput("a reason is required")
    if days < 1:
        raise BadInput("--days must be at least 1")
    if notified > date.today():
        raise BadInput(f"notified date {notified} is in the future")
    with ledger.transaction():
        row = ledger.request(request_id)
        require_status(row, OPEN_STATUSES, "extend")
        total = row["extended_days"] + days
        if total > policy.extension_max_days:
            raise InvalidState(
                f"request {request_id}: extension to {total} days exceeds the "
                f"{policy.name} maximum of {policy.extension_max_days}"
            )
        if notified > date.fromisoformat(row["due"]):
            raise BadInput("the subject must be notified before the original deadline")
        due = deadline(date.fromisoformat(row["received"]), policy, total)
        ledger.db["requests"].update(
            request_id, {"extended_days": total, "due": due.isoformat(), "updated_at": now()}
        )
        ledger.append_event(
            "request.extended",
            request_id=request_id,
            days=days,
            total_days=total,
            due=due.isoformat(),
            notified=notified.isoformat(),
            reason=reason,
        )
    return due


def approve(ledger: Ledger, request_id: int, approver: str) -> None:
    with ledger.transaction():
        row = ledger.request(request_id)
        require_status(row, OPEN_STATUSES, "approve")
        if row["approved_at"]:
            raise InvalidState(f"request {request_id} is already approved")
        ledger.db["requests"].update(request_id, {"approved_at": now()})
        ledger.append_event("request.approved", request_id=request_id, approver=approver)


def retention_ends(row: dict, policy: Policy) -> date:
    """Personal data may be kept until this date: the request's close plus retention."""
    closed = date.fromisoformat(row["updated_at"][:10])
    return closed + timedelta(days=policy.retention_days)


def purge(
    ledger: Ledger,
    keys: Keyring,
    policy: Policy,
    request_id: int,
    *,
    now_: bool = False,
    reason: str | None = None,
) -> None:
    """Crypto-shred a request: destroy its key and drop the ciphertexts.

    Refused before retention ends unless ``now_`` with a reason. The evidence (status,
    hashes, counts, events) stays; the ledger chain still verifies.
    """
    row = ledger.request(request_id)
    if row["purged_at"]:
        raise InvalidState(f"request {request_id} was already purged on {row['purged_at']}")
    if now_:
        if not (reason and reason.strip()):
            raise BadInput("--now needs --reason")
    else:
        if row["status"] in OPEN_STATUSES:
            raise InvalidState(
                f"request {request_id} is still {row['status']}; its data is needed to finish it"
            )
        ends = retention_ends(row, policy)
        if date.today() < ends:
            raise InvalidState(
                f"request {request_id}: retention runs until {ends} under policy "
                f"{policy.name} (use --now --reason to purge earlier)"
            )
    with ledger.transaction():
        ledger.db["requests"].update(request_id, {"payload": None, "purged_at": now()})
        ledger.conn.execute("UPDATE plans SET payload = NULL WHERE request_id = ?", [request_id])
        ledger.append_event(
            "request.purged", request_id=request_id, early=now_, reason=reason or "retention ended"
        )
    # The key goes only after the commit: if we crashed in between, the ciphertexts are
    # already gone, which is the safe side.
    keys.destroy_request_key(request_id)
