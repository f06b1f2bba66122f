"""The forgetctl command line: one Typer app, one module per command group."""

from __future__ import annotations

import typer
from rich.markup import escape
from typer.core import TyperGroup

from forgetctl.cli import (
    apply_cmd,
    common,
    demo_cmd,
    gate_cmd,
    ledger_cmd,
    model_cmd,
    plan_cmd,
    policy_cmd,
    report_cmd,
    request_cmd,
    run_cmd,
    setup_cmd,
)
from forgetctl.core.errors import ForgetctlError


class _Group(TyperGroup):
    """Turns every ForgetctlError into one line on stderr and its documented exit code."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except ForgetctlError as exc:
            message = f"[bold red]error:[/] {escape(str(exc))}"
            common.err.print(message, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_Group,
    help="Make a deployed language model forget a data subject, and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    home: str = typer.Option(
        None,
        "--home",
        envvar="FORGETCTL_HOME",
        help="The forgetctl home (default ./.forgetctl).",
        show_envvar=True,
    ),
) -> None:
    common.HOME_ARG.set(home)


setup_cmd.register(app)
plan_cmd.register(app)
apply_cmd.register(app)
gate_cmd.register(app)
run_cmd.register(app)
report_cmd.register(app)
app.add_typer(request_cmd.app, name="request")
app.add_typer(ledger_cmd.app, name="ledger")
app.add_typer(policy_cmd.app, name="policy")
app.add_typer(model_cmd.app, name="model")
app.add_typer(demo_cmd.app, name="demo")


def main() -> None:
    app()
