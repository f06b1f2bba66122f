"""Requests after intake: reading them, their deadlines, and the changes made by hand
(cancel, extend, approve, purge), each checked against the request's policy."""

from __future__ import annotations

import hashlib
import stat
from datetime import date, timedelta
from pathlib import Path

from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import BadInput, InvalidState, NotFound
from forgetctl.core.inputs import parse_id
from forgetctl.core.lifecycle import OPEN_STATUSES, OWED_STATUSES, REQUEST_STATUSES, require_status
from forgetctl.core.policy import Policy

REPORT_WRITTEN = "report.written"
"""The event of a report file written by `forgetctl report --out` (its sha256, the
requests it covers, its path sealed under the key of each request it names): purge finds
the copies that hold a subject's name by it."""


# -- reading -----------------------------------------------------------------------------
def resolve(ws: Workspace, target: str) -> int:
    """The id of the request ``target`` names: its id (digits) or its ref."""
    target = target.strip()
    if target.isascii() and target.isdigit():
        request_id = parse_id(target, "request id")
    else:
        found = ws.ledger.requests.id_of_ref(target)
        if found is None:
            raise NotFound(f"no request with id or ref {target!r}")
        request_id = found
    ws.ledger.requests.get(request_id)  # NotFound for an unknown id
    return request_id


def payload(ws: Workspace, request_id: int) -> dict:
    """The decrypted payload; InvalidState once the request was purged."""
    keys = ws.keys
    row = ws.ledger.requests.get(request_id)
    if row["payload"] is None or not keys.has_request_key(request_id):
        raise InvalidState(f"request {request_id}: personal data purged on {row['purged_at']}")
    return keys.decrypt(request_id, row["payload"])


def days_left(row: dict, today: date | None = None) -> int:
    return (date.fromisoformat(row["due"]) - (today or date.today())).days


def is_overdue(row: dict) -> bool:
    """Past due and the deletion still owed (a failed request too, until it is closed)."""
    return row["status"] in OWED_STATUSES and days_left(row) < 0


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
    out["overdue"] = is_overdue(row)
    if policy is not None:
        out["due_soon"] = 0 <= left <= policy.warning_days and row["status"] in OWED_STATUSES
    return out


def list_requests(ws: Workspace, status: str | None = None, overdue: bool = False) -> list[dict]:
    if status is not None and status not in REQUEST_STATUSES:
        raise BadInput(f"unknown status {status!r} (one of: {', '.join(REQUEST_STATUSES)})")
    rows = ws.ledger.requests.all(status)
    if overdue:
        rows = [r for r in rows if is_overdue(r)]
    return rows


# -- life cycle --------------------------------------------------------------------------
def cancel(ws: Workspace, request_id: int, reason: str) -> None:
    """Cancel an open or failed request; the first of its duplicates becomes the original."""
    if not reason.strip():
        raise BadInput("a reason is required")
    ledger = ws.ledger
    with ledger.transaction():
        require_status(ledger.requests.get(request_id), OWED_STATUSES, "cancel")
        ledger.requests.set_status(request_id, "cancelled", reason=reason)
        # Its duplicates would otherwise wait for an original that will never be done.
        first, *rest = ledger.requests.duplicates_of(request_id) or [None]
        if first is not None:
            why = f"original {request_id} cancelled"
            ledger.requests.hand_on(first, None, reason=why)
            for other in rest:
                ledger.requests.hand_on(other, first, reason=why)


def extend(
    ws: Workspace,
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
    ledger = ws.ledger
    with ledger.transaction():
        row = ledger.requests.get(request_id)
        policy = ws.policy_of(row)
        require_status(row, OPEN_STATUSES, "extend")
        total = row["extended_days"] + days
        received = date.fromisoformat(row["received"])
        due, latest = policy.due(received, total), policy.latest_due(received)
        if due > latest:
            raise InvalidState(
                f"request {request_id}: extending to {due} passes the {policy.name} latest "
                f"deadline of {latest} (at most {(latest - policy.due(received)).days} days "
                "in total)"
            )
        if notified > date.fromisoformat(row["due"]):
            raise BadInput("the subject must be notified before the original deadline")
        ledger.requests.extend(request_id, total, due.isoformat(), days=days,
                               notified=notified.isoformat(), reason=reason)  # fmt: skip
    return due


def approve(ws: Workspace, request_id: int, approver: str) -> None:
    ledger = ws.ledger
    with ledger.transaction():
        row = ledger.requests.get(request_id)
        require_status(row, OPEN_STATUSES, "approve")
        if row["approved_at"]:
            raise InvalidState(f"request {request_id} is already approved")
        if not ws.policy_of(row).require_approval:
            raise InvalidState(
                f"request {request_id}: policy {row['policy']} needs no approval (nothing done)"
            )
        ledger.requests.approve(request_id, approver)


def retry(ws: Workspace, request_id: int, reason: str) -> str:
    """Reopen a ``failed`` request at the step that failed, with its attempts reset: the
    plan step again when planning failed, else from its plan (a new adapter). Returns the
    status it is back in."""
    if not reason.strip():
        raise BadInput("--reason is empty")
    ledger = ws.ledger
    with ledger.transaction():
        row = ledger.requests.get(request_id)
        require_status(row, {"failed"}, "retry")
        planned = row["failed_step"] != "plan" and ledger.plans.get(request_id) is not None
        status = "planned" if planned else "received"
        ledger.requests.reopen(request_id, status, reason=reason, retried_step=row["failed_step"])
    return status


def retention_ends(row: dict, policy: Policy) -> date:
    """Personal data may be kept until this date: the request's close plus retention."""
    closed = date.fromisoformat(row["updated_at"][:10])
    return closed + timedelta(days=policy.retention_days)


def purge(
    ws: Workspace,
    request_id: int,
    *,
    now_: bool = False,
    reason: str | None = None,
) -> dict[str, list[str]]:
    """Crypto-shred a request: destroy its key, drop the ciphertexts and, unless the
    policy keeps a suppression list, its blind indexes; remove the report files forgetctl
    wrote with its personal data under the home.

    Refused before retention ends unless ``now_`` with a reason. The evidence (status,
    counts, events) stays; the ledger chain still verifies. Returns the report files
    removed and those left (outside the home, or changed since written), for the caller
    to say.
    """
    ledger, keys = ws.ledger, ws.keys
    row = ledger.requests.get(request_id)
    policy = ws.policy_of(row)
    if row["purged_at"]:
        raise InvalidState(f"request {request_id} was already purged on {row['purged_at']}")
    if now_:
        if not (reason and reason.strip()):
            raise BadInput("--now needs --reason")
    else:
        if row["status"] in OWED_STATUSES:
            raise InvalidState(
                f"request {request_id} is still {row['status']}; its data is needed to finish it"
            )
        ends = retention_ends(row, policy)
        if date.today() < ends:
            raise InvalidState(
                f"request {request_id}: retention runs until {ends} under policy "
                f"{policy.name} (use --now --reason to purge earlier)"
            )
    reports = reports_of(ws, request_id)  # read while the key that seals their paths exists
    keep = policy.keep_suppression_index
    ledger.requests.purge(
        request_id, early=now_, reason=reason or "retention ended", drop_indexes=not keep
    )
    # The key goes only after the commit: if we crashed in between, the ciphertexts are
    # already gone, which is the safe side.
    keys.destroy_request_key(request_id)
    removed, left = _remove_reports(ws, reports)
    if removed or left:  # counts only: a path may name the person
        ledger.append_event(
            "request.reports_removed", request_id=request_id, removed=len(removed),
            left=len(left),
        )  # fmt: skip
    return {"reports_removed": removed, "reports_left": left}


def reports_of(ws: Workspace, request_id: int) -> list[dict]:
    """The report files forgetctl wrote with this request's personal data in them
    ({path, sha256}; none once its key is destroyed)."""
    if not ws.keys.has_request_key(request_id):
        return []
    found = []
    for event in ws.ledger.events(request_id=None):
        sealed = event["data"].get("sealed_path", {}) if event["kind"] == REPORT_WRITTEN else {}
        if str(request_id) in sealed:
            where = ws.keys.decrypt(request_id, bytes.fromhex(sealed[str(request_id)]))
            found.append({"path": where["path"], "sha256": event["data"]["sha256"]})
    return found


def _remove_reports(ws: Workspace, reports: list[dict]) -> tuple[list[str], list[str]]:
    """Unlink the request's report files under the home that are still what forgetctl
    wrote (same sha256); a file outside the home, or changed since, is left and named."""
    removed, left = [], []
    root = ws.home.root.resolve()
    for report in reports:
        path = Path(report["path"])
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # already gone
        if not path.is_relative_to(root):
            left.append(f"{path} (outside the home)")
        elif not stat.S_ISREG(st.st_mode):
            left.append(f"{path} (no longer a regular file)")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != report.get("sha256"):
            left.append(f"{path} (changed since forgetctl wrote it)")
        else:
            path.unlink()
            removed.append(str(path))
    return sorted(set(removed)), sorted(set(left))
