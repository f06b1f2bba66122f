"""`forgetctl ledger ...`: read, verify and export the hash-chained event log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from forgetctl.cli import common
from forgetctl.core.errors import LedgerCorrupt

app = typer.Typer(help="Read, verify and export the event log.", no_args_is_help=True)


@app.command("log")
def log(
    request: int = typer.Option(None, "--request", help="Only this request's events."),
    json_: bool = common.JsonOpt,
) -> None:
    """The events, oldest first."""
    events = common.workspace().ledger.events(request)
    if json_:
        common.emit_json(events)
        return
    columns = ("seq", "time (UTC)", "kind", "request", "version", "data")
    common.print_table("Ledger events", columns, (
        (str(e["seq"]), e["ts"][:19], e["kind"], str(e["request_id"] or ""),
         str(e["version_id"] or ""), json.dumps(e["data"], sort_keys=True))
        for e in events
    ))  # fmt: skip


@app.command("verify")
def verify(json_: bool = common.JsonOpt) -> None:
    """Recompute the hash chain; exit 5 naming the first bad event."""
    report = common.workspace().ledger.verify_chain()
    if json_:
        common.emit_json(report.__dict__)
    elif report.ok:
        common.out.print(f"[green]ledger OK[/]: {report.events} events, head {report.head}")
    if not report.ok:
        raise LedgerCorrupt(f"ledger chain broken at event {report.first_bad}: {report.reason}")


@app.command("export")
def export(out: Path = typer.Option(..., "--out", help="Where to write the JSON.")) -> None:
    """Write the chain head and the (PII-free) events, to anchor them elsewhere."""
    ledger = common.workspace().ledger
    report = ledger.verify_chain()
    if not report.ok:
        raise LedgerCorrupt(f"ledger chain broken at event {report.first_bad}: {report.reason}")
    doc = {"head": ledger.head(), "events": ledger.events()}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, out)
    common.out.print(f"exported {len(doc['events'])} events, head {doc['head']['hash']} to {out}")
