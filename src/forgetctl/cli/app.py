"""The forgetctl command line: one Typer app, one module per command group."""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from rich.markup import escape
from typer import _click as click
from typer.core import TyperGroup, TyperOption
from typer.exceptions import Abort

from forgetctl import __version__
from forgetctl.cli import (
    apply_cmd,
    common,
    consolidate_cmd,
    demo_cmd,
    doctor_cmd,
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
from forgetctl.core.errors import BadInput, ForgetctlError
from forgetctl.core.inputs import MAX_ID


def _error_line(text: str) -> None:
    common.err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _usage_message(exc: click.exceptions.ClickException) -> str:
    """One line for a usage error: the command, what is wrong, where the help is."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "forgetctl"
    if isinstance(exc, click.exceptions.NoSuchOption) and re.fullmatch(r"-[0-9]+", exc.option_name):
        # click reads "-1" as an option; for us it is a number where an id belongs.
        what = f"{exc.option_name} is not an id: ids are whole numbers from 0 to {MAX_ID}"
    else:
        what = " ".join(exc.format_message().split())
    return f"{command}: {what} (see {command} --help)"


_display_type = TyperOption.display_type_rich


def _no_type_on_flags(self: TyperOption, ctx: click.Context) -> str | None:
    # Typer 0.29 labels a flag "<bool>" in the help, as if it took a value.
    return None if self.is_flag else _display_type(self, ctx)


TyperOption.display_type_rich = _no_type_on_flags  # type: ignore[method-assign]


class _Group(TyperGroup):
    """Turns every ForgetctlError into one line on stderr and its documented exit code,
    and every usage error into one line too, with the bad-input exit code (not Typer's
    multi-line box)."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except ForgetctlError as exc:
            _error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            if not standalone_mode:
                raise
            exc.show()  # a group called bare: its help, as asked for
            sys.exit(exc.exit_code)
        except click.exceptions.ClickException as exc:
            if not standalone_mode:
                raise
            _error_line(_usage_message(exc))
            sys.exit(BadInput.exit_code)
        except Abort:
            if not standalone_mode:
                raise
            _error_line("aborted")
            sys.exit(1)
        if not standalone_mode:
            return code
        # Without standalone mode typer returns an Exit's code instead of exiting.
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_Group,
    help="Make a deployed language model forget a data subject, and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        common.out.print(f"forgetctl {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),  # fmt: skip
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
apply_cmd.register(app)
gate_cmd.register(app)
run_cmd.register(app)
consolidate_cmd.register(app)
doctor_cmd.register(app)
report_cmd.register(app)
app.add_typer(plan_cmd.app, name="plan")
app.add_typer(request_cmd.app, name="request")
app.add_typer(ledger_cmd.app, name="ledger")
app.add_typer(policy_cmd.app, name="policy")
app.add_typer(model_cmd.app, name="model")
app.add_typer(demo_cmd.app, name="demo")


def main() -> None:
    app()
