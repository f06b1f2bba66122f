"""`forgetctl run`: the cron entry point."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime

import typer
from rich.table import Table

from forgetctl.cli import common
from forgetctl.cli.progress import training_bar


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
    if not quiet:
        to_err = logging.StreamHandler(common.err.file)
        to_err.setLevel(logging.INFO)
        to_err.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(to_err)
    return logger


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        max_requests: int = typer.Option(None, "--max-requests", min=1),
        dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be done."),
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
        with training_bar("unlearning", quiet=quiet or json_) as bar:
            summary = pipeline.run(ws, max_requests=max_requests, dry_run=dry_run,
                                   say=logger.info, progress=bar)  # fmt: skip
        doc = asdict(summary)
        doc["exit_code"] = summary.exit_code
        logger.debug("summary %s", json.dumps(doc, default=str))
        if json_:
            common.emit_json(doc)
        elif not quiet:
            _print_summary(summary)
        raise typer.Exit(summary.exit_code)


def _print_summary(summary) -> None:
    if not summary.outcomes:
        common.out.print("nothing due")
    else:
        title = "Run (dry run)" if summary.dry_run else "Run"
        table = Table(title=title)
        for col in ("request", "ref", "from", "to", "steps", "version", "seconds", "error"):
            table.add_column(col)
        for o in summary.outcomes:
            style = {"promoted": "green", "failed": "bold red"}.get(o.end, "")
            table.add_row(
                str(o.request_id), o.ref, o.start, f"[{style}]{o.end}[/]" if style else o.end,
                ",".join(o.steps), str(o.version or ""), str(o.seconds),
                common.safe((o.error or "")[:80]),
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
    if summary.lock_takeover:
        common.out.print(f"took over the lock of dead run pid {summary.lock_takeover}")
