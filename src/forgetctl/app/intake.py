"""Intake: a deletion request's schema, the request files it can come in, and recording it.

Intake validates a request with pydantic, attaches the policy its regulation selects,
computes the deadline, stores the subject only as blind-index hashes and the payload
(names, aliases, identifiers, records, requester, notes) encrypted under the request's own
key, and marks it ``duplicate`` when the same subject is already open under the same policy.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import BadInput
from forgetctl.core.files import MAX_INPUT_BYTES, read_text
from forgetctl.core.inputs import check_name, json_type, loads_json
from forgetctl.core.policy import policy_for_regulation

MAX_FILE_BYTES = MAX_INPUT_BYTES


GENERATED_REF_PREFIX = "FCTL-"
"""Generated refs are FCTL-<date>-<id>; a user-given ref may not start so, so none collides."""


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
        if not value.strip():
            raise ValueError("subject name is empty")
        return check_name(value, "subject name")

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, values: list[str]) -> list[str]:
        cleaned = [check_name(v, "alias") for v in values]
        if any(len(v) > 300 for v in cleaned):
            raise ValueError("aliases must be names of at most 300 characters")
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
        if self.ref and self.ref.upper().startswith(GENERATED_REF_PREFIX):
            raise ValueError(
                f"refs starting with {GENERATED_REF_PREFIX} are reserved for generated ones"
            )
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
        raise BadInput(f"{where}: expected a request object, got {json_type(data)}")
    try:
        return RequestIn.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, where) from None


# -- files -------------------------------------------------------------------------------
def read_text_file(path: Path) -> str:
    """Read a user-supplied text file with the checks every input file gets."""
    return read_text(path, MAX_FILE_BYTES)


def _json_lines(text: str, where: str) -> list[Any]:
    # "\n" only: str.splitlines also breaks at U+2028, U+0085 and others, which are valid
    # inside a JSON string.
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            rows.append(loads_json(line, f"{where} line {number}"))
    return rows


def load_records(path: Path) -> list[dict]:
    """A JSONL file of records ({question, answer} or {text})."""
    rows = _json_lines(read_text_file(path), str(path))
    if not rows:
        raise BadInput(f"{path}: no records")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise BadInput(f"{path} line {number}: expected an object, got {json_type(row)}")
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
    # strict: an unterminated quote is an error, not a field that swallows the next rows.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows: list[dict] = []
    start = 1  # the line where the record being read begins
    try:
        if reader.fieldnames is not None:  # reads the header
            start = reader.reader.line_num + 1
        for row in reader:
            rows.append(row)
            start = reader.reader.line_num + 1  # where the next record begins
    except csv.Error as exc:
        raise BadInput(f"{where} line {start}: invalid CSV ({exc})") from None
    if not reader.fieldnames or "subject" not in reader.fieldnames:
        raise BadInput(f"{where}: CSV needs a header with at least 'subject' and 'regulation'")
    out = []
    for number, row in enumerate(rows, 2):
        if None in row:
            raise BadInput(f"{where} row {number}: more fields than the header")
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
        data = loads_json(text, where)
        rows = data.get("requests", [data]) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise BadInput(
                f"{where}: expected a request object or a list of them, got {json_type(rows)}"
            )
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
    policy = policy_for_regulation(ws.policies, req.regulation, ws.broken_policies)
    subject_index = keys.blind_index(req.subject.name)
    identifier_indexes = sorted(
        keys.blind_index(value, kind=f"id:{kind}")
        for kind, value in req.subject.identifiers.items()
    )
    due = policy.due(req.received).isoformat()
    with _no_orphan_keys(ws), ledger.transaction():
        # The ref is looked up inside the write transaction (BEGIN IMMEDIATE): a second
        # process adding the same ref waits, then finds it, instead of hitting UNIQUE.
        if req.ref and (existing := ledger.requests.id_of_ref(req.ref)) is not None:
            return existing, False
        ref = req.ref or _generated_ref(ws, req.received)
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


def _generated_ref(ws: Workspace, received: date) -> str:
    """FCTL-<date>-<the id the row will get>: unique, since user refs cannot start with
    FCTL- (a ledger from before that rule may hold one: then a suffix is added)."""
    base = f"{GENERATED_REF_PREFIX}{received:%Y%m%d}-{ws.ledger.requests.next_id():05d}"
    ref, n = base, 1
    while ws.ledger.requests.id_of_ref(ref) is not None:
        ref, n = f"{base}-{n}", n + 1
    return ref


@contextmanager
def _no_orphan_keys(ws: Workspace) -> Iterator[None]:
    """A refused or rolled-back intake leaves no payload key behind: the ids it used are
    given again to the next request, which must not inherit a key. Only the outermost
    intake transaction cleans up (an import rolls back every request it added)."""
    if ws.ledger.in_transaction():
        yield
        return
    before = set(ws.keys.request_key_ids())
    try:
        yield
    except BaseException:
        for request_id in set(ws.keys.request_key_ids()) - before:
            ws.keys.destroy_request_key(request_id)
        raise


def import_requests(ws: Workspace, reqs: list[RequestIn]) -> list[tuple[int, bool]]:
    """All or nothing: every request of a file is recorded in one transaction."""
    for req in reqs:  # fail on an unknown regulation before writing anything
        policy_for_regulation(ws.policies, req.regulation, ws.broken_policies)
    with _no_orphan_keys(ws), ws.ledger.transaction():
        return [add_request(ws, req) for req in reqs]
