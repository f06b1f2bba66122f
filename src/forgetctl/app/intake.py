"""Intake: a deletion request's schema, the request files it can come in, and recording it.

Intake validates a request with pydantic, attaches the policy its regulation selects,
computes the deadline, stores the subject only as blind-index hashes and the payload
(names, aliases, identifiers, records, requester, notes) encrypted under the request's own
key, and marks it ``duplicate`` when the same subject is already open under the same policy.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forgetctl.app.requests import deadline
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import BadInput
from forgetctl.core.policy import policy_for_regulation

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


class SubjectIn(BaseModel):
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
    subject: SubjectIn
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


# -- recording ---------------------------------------------------------------------------
def add_request(ws: Workspace, req: RequestIn) -> tuple[int, bool]:
    """Record a request; returns (id, created). An existing ref returns (its id, False)."""
    ledger, keys = ws.ledger, ws.keys
    policy = policy_for_regulation(ws.policies, req.regulation)
    if req.ref and (existing := ledger.requests.id_of_ref(req.ref)) is not None:
        return existing, False
    subject_index = keys.blind_index(req.subject.name)
    identifier_indexes = sorted(
        keys.blind_index(value, kind=f"id:{kind}")
        for kind, value in req.subject.identifiers.items()
    )
    due = deadline(req.received, policy).isoformat()
    with ledger.transaction():
        ref = req.ref or f"FCTL-{req.received:%Y%m%d}-{ledger.requests.count() + 1:05d}"
        original = ledger.requests.open_duplicate(policy.name, subject_index, identifier_indexes)
        fields = {
            "ref": ref,
            "policy": policy.name,
            "regulation": req.regulation.lower(),
            "scope": req.scope,
            "received": req.received.isoformat(),
            "due": due,
            "subject_index": subject_index,
            "identifier_indexes": identifier_indexes,
        }
        request_id = ledger.requests.add(
            fields, ref=ref, policy=policy.name, scope=req.scope, records=len(req.records),
            aliases=len(req.subject.aliases), due=due,
        )  # fmt: skip
        ledger.requests.set_payload(request_id, keys.encrypt(request_id, req.payload()))
        if original is not None:
            ledger.requests.mark_duplicate(request_id, original)
    return request_id, True


def import_requests(ws: Workspace, reqs: list[RequestIn]) -> list[tuple[int, bool]]:
    """All or nothing: every request of a file is recorded in one transaction."""
    for req in reqs:  # fail on an unknown regulation before writing anything
        policy_for_regulation(ws.policies, req.regulation)
    with ws.ledger.transaction():
        return [add_request(ws, req) for req in reqs]
