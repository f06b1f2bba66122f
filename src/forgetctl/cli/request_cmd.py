"""`forgetctl request ...`: intake and the life cycle of deletion requests."""

from __future__ import annotations

from pathlib import Path

import typer

from forgetctl.app import intake
from forgetctl.app import requests as rq
from forgetctl.app.workspace import Workspace
from forgetctl.cli import common
from forgetctl.core.errors import BadInput, InvalidState
from forgetctl.core.lifecycle import OWED_STATUSES

app = typer.Typer(help="Add, import, list and manage deletion requests.", no_args_is_help=True)


@app.command("add")
def add(
    subject: str = typer.Option(..., "--subject", help="The data subject's name."),
    regulation: str = typer.Option(..., "--regulation", help="gdpr, ccpa, default, ..."),
    alias: list[str] = typer.Option([], "--alias", help="Another name of the subject."),
    email: str = typer.Option(None, "--email", help="An identifier of the subject."),
    records: str = typer.Option(None, "--records", help="JSONL of {question, answer}|{text}."),
    scope: str = typer.Option("entity", "--scope", help="entity (all about them) | records."),
    ref: str = typer.Option(None, "--ref", help="External reference, e.g. DSR-2026-0042."),
    received: str = typer.Option(None, "--received", help="Date received (YYYY-MM-DD)."),
    requester: str = typer.Option(None, "--requester"),
    notes: str = typer.Option(None, "--notes"),
    json_: bool = common.JsonOpt,
) -> None:
    """Record one deletion request; its deadline comes from the regulation's policy.

    Example: forgetctl request add --subject 'Jaime Vasquez' --regulation gdpr
    --ref DSR-2026-0042 --records records.jsonl"""
    data = {
        "ref": ref,
        "regulation": regulation,
        "scope": scope,
        "subject": {
            "name": subject,
            "aliases": alias,
            "identifiers": {"email": email} if email else {},
        },
        "records": _records(records),
        "requester": requester,
        "notes": notes,
    }
    if received is not None:
        data["received"] = common.parse_date(received, "--received")
    req = intake.parse_request({k: v for k, v in data.items() if v is not None})
    ws = common.workspace()
    request_id, created = intake.add_request(ws, req)
    row = ws.ledger.requests.get(request_id)
    if json_:
        common.emit_json({**rq.summary(row), "created": created})
    elif not created:
        common.out.print(
            f"request {request_id} ({common.safe(row['ref'])}) already exists; nothing added"
        )
    else:
        extra = f", duplicate of {row['duplicate_of']}" if row["duplicate_of"] else ""
        common.out.print(
            f"request [bold]{request_id}[/] ({common.safe(row['ref'])}) {row['status']}{extra}; "
            f"policy {row['policy']}, due {row['due']}"
        )


def _records(path: str | None) -> list[dict]:
    if path is None:
        return []
    if not path.strip():  # Path("") is ".", which would be read as a directory
        raise BadInput("--records: the path is empty")
    return intake.load_records(Path(path))


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="JSON, JSONL or CSV file of requests."),
    json_: bool = common.JsonOpt,
) -> None:
    """Import many requests: all or nothing; refs already in the ledger are skipped.

    Example: forgetctl request import examples/batch/requests.jsonl"""
    reqs = intake.load_request_file(file)
    results = intake.import_requests(common.workspace(), reqs)
    created = [rid for rid, new in results if new]
    skipped = [rid for rid, new in results if not new]
    if json_:
        common.emit_json({"created": created, "existing": skipped})
    else:
        common.out.print(f"{len(created)} imported, {len(skipped)} already present")


def _days_style(row: dict) -> str:
    left = row["days_left"]
    if row["status"] not in OWED_STATUSES:
        return "dim"
    if left < 0:
        return "bold red"
    return "yellow" if row.get("due_soon") else "green"


@app.command("list")
def list_(
    status: str = typer.Option(None, "--status", help="Only this status."),
    overdue: bool = typer.Option(
        False, "--overdue", help="Only requests past due whose deletion is owed (open or failed)."
    ),
    json_: bool = common.JsonOpt,
) -> None:
    """Requests by deadline, with days left.

    Example: forgetctl request list --overdue"""
    ws = common.workspace()
    rows = [
        rq.summary(r, ws.policies.get(r["policy"])) for r in rq.list_requests(ws, status, overdue)
    ]
    if json_:
        common.emit_json(rows)
        return
    columns = ("id", "ref", "policy", "status", "received", "due", "days left")
    common.print_table("Deletion requests", columns, (
        (str(r["id"]), common.safe(r["ref"]), common.safe(r["policy"]), r["status"],
         r["received"], r["due"],
         f"[{_days_style(r)}]{r['days_left'] if r['status'] in OWED_STATUSES else '-'}[/]")
        for r in rows
    ), right=("id", "days left"))  # fmt: skip


@app.command("show")
def show(
    target: str = common.RequestArg,
    json_: bool = common.JsonOpt,
) -> None:
    """One request: its status, deadline, personal data (until purged) and events.

    Example: forgetctl request show DSR-2026-0042 --json"""
    ws = common.workspace()
    request_id = rq.resolve(ws, target)
    row = ws.ledger.requests.get(request_id)
    info = rq.summary(row, ws.policy_of(row))
    try:
        info["payload"] = rq.payload(ws, request_id)
    except InvalidState as exc:
        info["payload"] = None
        info["payload_note"] = str(exc)
    info["events"] = [
        {"seq": e["seq"], "ts": e["ts"], "kind": e["kind"], "data": e["data"]}
        for e in ws.ledger.events(request_id)
    ]
    if json_:
        common.emit_json(info)
        return
    p = info["payload"]
    common.out.print(
        f"[bold]request {row['id']}[/] {common.safe(row['ref'])}  status [bold]{row['status']}[/]"
    )
    common.out.print(
        f"policy {common.safe(row['policy'])}  received {row['received']}  due {row['due']} "
        f"({info['days_left']} days left)  scope {row['scope']}"
    )
    if p:
        aliases = ", ".join(p["subject"]["aliases"]) or "-"
        common.out.print(
            f"subject {common.safe(p['subject']['name'])}  aliases {common.safe(aliases)}"
        )
        for kind, value in sorted(p["subject"].get("identifiers", {}).items()):
            common.out.print(f"{common.safe(kind)} {common.safe(value)}")
        common.out.print(f"records {len(p['records'])}")
    else:
        common.out.print(common.safe(info["payload_note"]))
    for e in info["events"]:
        line = f"  #{e['seq']} {e['ts'][:19]} {e['kind']} {e['data']}"
        common.out.print(line, markup=False, highlight=False)


@app.command("cancel")
def cancel(
    target: str = common.RequestArg,
    reason: str = common.ReasonOpt,
    json_: bool = common.JsonOpt,
) -> None:
    """Cancel an open or failed request.

    Example: forgetctl request cancel 3 --reason 'withdrawn by the subject'"""
    ws = common.workspace()
    request_id = rq.resolve(ws, target)
    rq.cancel(ws, request_id, reason)
    _changed(ws, request_id, json_, f"request {request_id} cancelled")


@app.command("retry")
def retry(
    target: str = common.RequestArg,
    reason: str = common.ReasonOpt,
    json_: bool = common.JsonOpt,
) -> None:
    """Reopen a failed request at the step that failed, with its retries restored; the
    next `run` takes it on.

    Example: forgetctl request retry 3 --reason 'model registered, was missing'"""
    ws = common.workspace()
    request_id = rq.resolve(ws, target)
    status = rq.retry(ws, request_id, reason)
    _changed(ws, request_id, json_, f"request {request_id} reopened: {status}")


@app.command("extend")
def extend(
    target: str = common.RequestArg,
    days: int = typer.Option(..., "--days", help="Days added to the deadline."),
    reason: str = common.ReasonOpt,
    notified: str = typer.Option(..., "--notified", help="When the subject was told."),
    json_: bool = common.JsonOpt,
) -> None:
    """Extend the deadline (GDPR Art. 12(3): at most two more months).

    Example: forgetctl request extend 3 --days 30 --reason 'complex' --notified 2026-12-01"""
    notified_on = common.parse_date(notified, "--notified")
    ws = common.workspace()
    request_id = rq.resolve(ws, target)
    due = rq.extend(ws, request_id, days, reason, notified_on)
    _changed(ws, request_id, json_, f"request {request_id} now due {due}")


@app.command("approve")
def approve(
    target: str = common.RequestArg,
    by: str = typer.Option("operator", "--by", help="Who approves (recorded)."),
    json_: bool = common.JsonOpt,
) -> None:
    """Approve a request whose policy requires approval before the run loop acts.

    Example: forgetctl request approve 3 --by 'DPO J. Smith'"""
    ws = common.workspace()
    request_id = rq.resolve(ws, target)
    rq.approve(ws, request_id, by)
    _changed(ws, request_id, json_, f"request {request_id} approved")


@app.command("purge")
def purge(
    target: str = common.RequestArg,
    now: bool = typer.Option(False, "--now", help="Before retention ends (needs --reason)."),
    reason: str = typer.Option(None, "--reason", help="Why now (recorded in the ledger)."),
    json_: bool = common.JsonOpt,
) -> None:
    """Crypto-shred a request's personal data, drop its blind indexes (unless the policy
    keeps a suppression list) and remove the reports written for it under the home; the
    evidence stays.

    Example: forgetctl request purge 3 --now --reason 'subject asked for immediate erasure'"""
    ws = common.workspace()
    request_id = rq.resolve(ws, target)
    done = rq.purge(ws, request_id, now_=now, reason=reason)
    if json_:
        common.emit_json({**rq.summary(ws.ledger.requests.get(request_id)), **done})
        return
    removed = len(done["reports_removed"])
    common.out.print(
        f"request {request_id}: personal data destroyed"
        + (f", {removed} report file(s) removed" if removed else "")
    )
    for path in done["reports_left"]:
        common.err.print(
            f"[bold yellow]warning:[/] report not removed, remove it by hand: {common.safe(path)}",
            soft_wrap=True,
        )


def _changed(ws: Workspace, request_id: int, json_: bool, line: str) -> None:
    """After a change by hand: the request as it is now (``--json``), else ``line``."""
    if json_:
        row = ws.ledger.requests.get(request_id)
        common.emit_json(rq.summary(row, ws.policy_of(row)))
    else:
        common.out.print(line)
