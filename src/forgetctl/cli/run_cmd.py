"""`forgetctl run`: the cron entry point."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime

import typer
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler
from rich.table import Table

from forgetctl.cli import common
from forgetctl.cli.progress import live


def _logging(home, quiet: bool) -> logging.Logger:
    """Logs go to stderr (unless --quiet) and to HOME/logs/run-<timestamp>.log."""
    home.logs.mkdir(parents=True, exist_ok=True, mode=0o700)  # logs may name subjects
    logger = logging.getLogger("forgetctl.run")
    logger.setLevel(logging.DEBUG)
    logger.handlers.clear()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    to_file = logging.FileHandler(home.logs / f"run-{stamp}.log")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(to_file)
    if not quiet:  # above the live display's bars, on the same console
        to_err = RichHandler(console=common.err, show_path=False, markup=False,
                             rich_tracebacks=False, highlighter=NullHighlighter())  # fmt: skip
        to_err.setLevel(logging.INFO)
        logger.addHandler(to_err)
    return logger


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        max_requests: int = typer.Option(
            None, "--max-requests", min=1, help="Take at most this many due requests."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Show what each due request would go through next; do nothing."
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No logs on stderr."),
        json_: bool = common.JsonOpt,
    ) -> None:
        """Take every due request through plan, apply, verify and promote (for cron).

        Exit codes: 0 done; 8 another run holds the lock; 10 done but requests are
        overdue; 11 done but some requests failed.

        Example: forgetctl run --max-requests 5 --quiet
        """
        from forgetctl.app import runner as pipeline

        ws = common.workspace()
        logger = _logging(ws.home, quiet or json_)
        with live(quiet=quiet or json_, say=logger.info) as progress:
            summary = pipeline.run(ws, max_requests=max_requests, dry_run=dry_run,
                                   progress=progress)  # fmt: skip
        doc = asdict(summary)
        doc["exit_code"] = summary.exit_code
        logger.debug("summary %s", json.dumps(doc, default=str))
        if json_:
            common.emit_json(doc)
        elif not quiet:
            _print_summary(summary)
        raise typer.Exit(summary.exit_code)


def _days(o) -> str:
    style = "bold red" if o.days_left < 0 else ""
    return f"[{style}]{o.days_left}[/]" if style else str(o.days_left)


def _print_summary(summary) -> None:
    if not summary.outcomes:
        common.out.print("nothing due")
    elif summary.dry_run:
        table = Table(title="Run (dry run): what each due request would go through next")
        for col in ("request", "ref", "status", "next", "due", "days left"):
            table.add_column(col)
        for o in summary.outcomes:
            table.add_row(str(o.request_id), common.safe(o.ref), o.start,
                          common.safe("\n".join(o.steps)), o.due, _days(o))  # fmt: skip
        common.out.print(table)
    else:
        table = Table(title="Run")
        for col in ("request", "ref", "from", "to", "steps", "version", "seconds", "due",
                    "why not promoted"):  # fmt: skip
            table.add_column(col)
        for o in summary.outcomes:
            style = {"promoted": "green", "failed": "bold red"}.get(o.end, "")
            why = o.why or ([o.error] if o.error else [])
            table.add_row(
                str(o.request_id), common.safe(o.ref), o.start,
                f"[{style}]{o.end}[/]" if style else o.end, ",".join(o.steps),
                str(o.version or ""), str(o.seconds), f"{o.due} ({_days(o)} d)",
                common.safe("\n".join(w[:120] for w in why)),
            )  # fmt: skip
        common.out.print(table)
    for label, rows, style in (
        ("due soon", summary.due_soon, "yellow"),
        ("OVERDUE", summary.overdue, "bold red"),
    ):
        for r in rows:
            common.out.print(f"[{style}]{label}[/]: request {r['id']} ({r['ref']}) due {r['due']}")
    for r in summary.skipped:
        common.out.print(f"waiting: request {r['id']} ({r['ref']}): {common.safe(r['reason'])}")
    if c := summary.consolidation:
        why = f": {'; '.join(c['why'])}" if c["status"] != "promoted" and c["why"] else ""
        common.out.print(f"consolidation: version {c['version']} {c['status']}"
                         f"{common.safe(why)}", highlight=False)  # fmt: skip
    if summary.lock_takeover:
        common.out.print(f"took over the lock of dead run pid {summary.lock_takeover}")
