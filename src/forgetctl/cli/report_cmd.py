"""`forgetctl report`: audit evidence for a request or a version."""

from __future__ import annotations

from pathlib import Path

import typer

from forgetctl.cli import common


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        target: str = typer.Argument(..., help="A request id or ref, or v<N> for a version."),
        fmt: str = typer.Option("md", "--format", help="md, html or json."),
        out: Path = typer.Option(None, "--out", help="Write to a file instead of stdout."),
    ) -> None:
        """What was done for a request, with figures, verdicts, hashes and the chain head.

        Example: forgetctl report DSR-2026-0042 --format html --out report.html"""
        from forgetctl.app.report import build_report, write_report
        from forgetctl.cli.report_render import render

        doc = build_report(common.workspace(), target)
        text = render(doc, fmt)
        if out is None:
            common.out.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        written = write_report(common.workspace(), doc, out, text)
        common.err.print(f"report written to {common.safe(written)}")
