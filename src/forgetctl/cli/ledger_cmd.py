"""`forgetctl ledger ...`: read, verify and export the signed, hash-chained event log."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from forgetctl.cli import common
from forgetctl.core.errors import BadInput, LedgerCorrupt
from forgetctl.core.files import read_text, write_atomic
from forgetctl.core.inputs import loads_json

app = typer.Typer(help="Read, verify and export the event log.", no_args_is_help=True)


@app.command("log")
def log(
    request: int = typer.Option(
        None, "--request", help="Only this request's events.", parser=common.id_parser("--request")
    ),
    json_: bool = common.JsonOpt,
) -> None:
    """The events, oldest first.

    Example: forgetctl ledger log --request 2"""
    events = common.workspace().ledger.events(request)
    if json_:
        common.emit_json(events)
        return
    columns = ("seq", "time (UTC)", "kind", "request", "version", "data")
    common.print_table("Ledger events", columns, (
        (str(e["seq"]), e["ts"][:19], common.safe(e["kind"]), str(e["request_id"] or ""),
         str(e["version_id"] or ""), common.safe(json.dumps(e["data"], sort_keys=True)))
        for e in events
    ))  # fmt: skip


@app.command("verify")
def verify(
    against: Path = typer.Option(
        None, "--against", help="An earlier `ledger export`: its head must still be in the chain."
    ),
    json_: bool = common.JsonOpt,
) -> None:
    """Check the hash chain, its signed head and every state row; exit 5 naming the first
    problem (the event, or the table, row and field the events do not explain).

    Example: forgetctl ledger verify --against anchors/2026-12-01.json"""
    anchor = _anchor(against) if against else None
    report = common.workspace().ledger.audit(anchor)
    if json_:
        common.emit_json(report.__dict__)
    elif report.ok:
        head = report.head
        anchored = f", export head {anchor['seq']} in the chain" if anchor else ""
        common.out.print(
            f"[green]ledger OK[/]: {report.events} events, every row explained, "
            f"head {head['seq']} {head['hash']} signed{anchored}"
        )
    if not report.ok:
        more = len(report.problems) - 1
        raise LedgerCorrupt(report.problems[0] + (f" (and {more} more)" if more else ""))


def _anchor(path: Path) -> dict:
    """The head of an export: {seq, hash} and the public key it was signed with."""
    doc = loads_json(read_text(path), f"--against {path}")
    try:
        head = doc["head"]
        seq, head_hash = head["seq"], head["hash"]
    except (KeyError, TypeError):
        raise BadInput(f"--against {path}: not a `ledger export` (no head seq and hash)") from None
    if type(seq) is not int or seq < 0 or not isinstance(head_hash, str):
        raise BadInput(f"--against {path}: head must have an integer seq and a hash")
    return {"seq": seq, "hash": head_hash, "public_key": doc.get("public_key")}


@app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="Where to write the JSON."),
    json_: bool = common.JsonOpt,
) -> None:
    """Write the signed chain head, its public key and the (PII-free) events, to anchor them
    elsewhere (`ledger verify --against` checks the chain still holds that head).

    Example: forgetctl ledger export --out anchors/2026-12-01.json"""
    ledger = common.workspace().ledger
    report = ledger.audit()
    if not report.ok:
        raise LedgerCorrupt(report.problems[0])
    signed = ledger.signed_head()
    doc = {
        "head": {**ledger.head(), "signature": signed.get("signature")},
        "public_key": signed["public_key"],
        "events": ledger.events(),
    }
    write_atomic(out, json.dumps(doc, indent=1, sort_keys=True))
    if json_:
        common.emit_json({"path": str(out), "events": len(doc["events"]), "head": doc["head"]})
        return
    common.out.print(
        f"exported {len(doc['events'])} events, head {doc['head']['hash']} to {common.safe(out)}"
    )
