"""`forgetctl consolidate`: train the model again without every forgotten subject."""

from __future__ import annotations

import typer

from forgetctl.cli import common
from forgetctl.cli.progress import live


def register(app: typer.Typer) -> None:
    @app.command()
    def consolidate(
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Say what would be trained on; train nothing."
        ),
        json_: bool = common.JsonOpt,
    ) -> None:
        """Train the deployed model again from its base without every subject production
        forgot: a candidate version that replaces the adapter stack once it passes the gate.

        Needs `init --base --training-data --recipe`. Example: forgetctl consolidate --dry-run
        && forgetctl consolidate && forgetctl verify && forgetctl promote"""
        from forgetctl.app.consolidate import consolidate as build
        from forgetctl.app.consolidate import plan_consolidation

        ws = common.workspace()
        plan = plan_consolidation(ws)
        if not dry_run:
            with live(quiet=json_) as progress:
                version = build(ws, plan, progress=progress)
        doc = {**plan.summary(), "dry_run": dry_run, "version": None if dry_run else version}
        if json_:
            common.emit_json(doc)
            return
        what = (f"would train the base again on {plan.rows - plan.dropped} of {plan.rows} rows"
                if dry_run else f"candidate version [bold]{version}[/]: trained on "
                f"{plan.rows - plan.dropped} of {plan.rows} rows")  # fmt: skip
        common.out.print(
            f"{what}, without the subjects of requests "
            f"{', '.join(map(str, plan.requests))} (production is version {plan.production})"
            + ("" if dry_run else "; verify and promote it like any other version"),
            highlight=False,
        )
