"""The gate: `forgetctl verify`, `promote` and `rollback`."""

from __future__ import annotations

import typer
from rich.table import Table

from forgetctl.cli import common
from forgetctl.cli.progress import live
from forgetctl.core.errors import VerificationFailed


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def check_table(results: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("check", "verdict", "key figures", "seconds", "reasons"):
        table.add_column(col)
    for r in results:
        figures = r["figures"]
        keys = [k for k, v in figures.items() if isinstance(v, int | float) and k != "wall_s"]
        table.add_row(
            r["name"],
            {"pass": "[green]pass[/]", "no_signal": "[bold yellow]NO SIGNAL[/]"}.get(
                r["verdict"], "[bold red]FAIL[/]"
            ),
            " ".join(f"{k}={_fmt(figures[k])}" for k in keys[:4]),
            _fmt(figures.get("wall_s", "")),
            common.safe("; ".join(r["reasons"])[:200]),
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def verify(
        version: int = typer.Argument(
            None, help="Default: the newest candidate.", parser=common.id_parser("version")
        ),
        int4: bool = typer.Option(False, "--int4", help="Also check the int4-quantized model."),
        relearn: bool = typer.Option(False, "--relearn", help="Also run a relearning attack."),
        skip: list[str] = typer.Option(
            [], "--skip", help="Leave out int4 or relearn although mandatory (needs --reason)."
        ),
        reason: str = typer.Option(None, "--reason", help="Why a mandatory check is skipped."),
        json_: bool = common.JsonOpt,
    ) -> None:
        """Check a candidate against its parent: every check its policies make mandatory,
        plus those asked for; exit 7 if it is rejected.

        Example: forgetctl verify 2 --int4 --relearn"""
        from forgetctl.app import versions
        from forgetctl.app.verify_step import verify_version

        ws = common.workspace()
        vid = versions.newest_candidate(ws.ledger) if version is None else version
        add = [name for name, on in (("int4", int4), ("relearn", relearn)) if on]
        with live(quiet=json_) as progress:
            progress(f"verifying version {vid}")
            verdict, results = verify_version(
                ws, vid, add=add, skip=skip, reason=reason, progress=progress
            )
        rows = [r.to_dict() for r in results]
        if json_:
            common.emit_json({"version": vid, "status": verdict, "checks": rows})
        else:
            common.out.print(check_table(rows, f"Verification of version {vid}: {verdict}"))
        if verdict == "rejected":
            raise VerificationFailed(f"version {vid} rejected")

    @app.command()
    def promote(
        version: int = typer.Argument(
            None, help="Default: the newest candidate.", parser=common.id_parser("version")
        ),
        force: bool = typer.Option(
            False, "--force", help="Promote despite failed, missing or no-signal checks."
        ),
        reason: str = typer.Option(None, "--reason", help="Required with --force."),
        json_: bool = common.JsonOpt,
    ) -> None:
        """Move production to a version that passed every check its policies require.

        Example: forgetctl promote 2"""
        from forgetctl.app import versions
        from forgetctl.app.promote import promote as promote_version

        ws = common.workspace()
        vid = versions.newest_candidate(ws.ledger) if version is None else version
        unverified = promote_version(ws, vid, force=force, reason=reason)
        if json_:
            common.emit_json({"production": vid, "forced": force, "unverified": unverified})
            return
        loud = " [bold red](FORCED: recorded in the ledger)[/]" if force else ""
        common.out.print(f"production -> version [bold]{vid}[/]{loud}")
        if unverified:
            common.err.print(
                f"[bold yellow]warning:[/] production moved UNVERIFIED (the policy allows it): "
                f"not run: {', '.join(unverified)}",
                soft_wrap=True,  # one line, whatever the terminal's width
            )

    @app.command()
    def rollback(
        to: int = typer.Option(
            None, "--to", help="Default: production's parent.", parser=common.id_parser("--to")
        ),
        reason: str = typer.Option("rollback", "--reason", help="Recorded in the ledger."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        json_: bool = common.JsonOpt,
    ) -> None:
        """Move production back; its requests return to `received` for the run loop.
        Production then answers what those requests had removed, so it asks first.

        Example: forgetctl rollback --to 1 --reason 'regression in support answers' --yes"""
        from forgetctl.app.promote import rollback as rollback_to

        ledger = common.workspace().ledger
        if not yes:
            current = ledger.aliases.get("production")
            typer.confirm(
                f"Roll production back from version {current}? Its requests' data returns "
                "to production until they are applied again",
                abort=True,
                err=True,
            )
        target = rollback_to(ledger, to, reason)
        if json_:
            common.emit_json({"production": target})
        else:
            common.out.print(f"production -> version [bold]{target}[/]")
