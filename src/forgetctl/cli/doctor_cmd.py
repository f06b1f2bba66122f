"""`forgetctl doctor`: what is wrong with the home and how to restore it."""

from __future__ import annotations

import typer

from forgetctl.cli import common
from forgetctl.core.errors import LedgerCorrupt, NotFound


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(json_: bool = common.JsonOpt) -> None:
        """Check the home (directory, ledger, keys, evidence chain, policies, file modes)
        without changing it; say what is wrong and how to restore it; exit 5 if anything is.

        Example: forgetctl --home /srv/forgetctl doctor --json"""
        from forgetctl.app.doctor import diagnose

        findings = diagnose(common.home())
        if json_:
            common.emit_json([f.to_dict() for f in findings])
        else:
            for f in findings:
                mark = "[green]ok[/]  " if f.ok else "[bold red]FAIL[/]"
                fix = f" -> {common.safe(f.fix)}" if f.fix else ""
                line = f"{mark} {f.check}: {common.safe(f.detail)}{fix}"
                common.out.print(line, highlight=False, soft_wrap=True)
        bad = [f for f in findings if not f.ok]
        if bad and bad[0].check == "home":
            raise NotFound(f"no forgetctl home: {bad[0].detail}")
        if bad:
            raise LedgerCorrupt(f"{len(bad)} problem(s): {bad[0].check}: {bad[0].detail}")
