"""What every command module shares: the workspace, output and input helpers."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from contextvars import ContextVar
from datetime import date
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgetctl.app.home import Home, resolve_home
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import BadInput
from forgetctl.core.inputs import parse_id

# C0 and C1 controls (but newline and tab), DEL, and the bidi overrides and isolates that
# reorder what a terminal shows.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every control character shown as its escape (ESC as \\x1b)."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def safe(value: Any) -> str:
    """A value from the user or the ledger, ready for a markup string: Rich markup
    escaped (a name "[/]" prints as written). Controls are handled by the consoles."""
    return escape(str(value))


PIPED_WIDTH = 400


class _SafeConsole(Console):
    """Every string it renders, markup or not, in tables too, has its control characters
    escaped first: nothing from a name, a reason or a file reaches the terminal raw (Rich
    itself passes ESC through). Its own styling is added after, so it is kept."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.is_terminal and "COLUMNS" not in os.environ:
            # Piped or redirected: Rich would cut tables to 80 columns ("DSR-2026-00…").
            self.width = PIPED_WIDTH

    def render_str(self, text: str, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        return super().render_str(terminal_safe(text), *args, **kwargs)


out = _SafeConsole()
err = _SafeConsole(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")
ReasonOpt = typer.Option(..., "--reason", help="Why (recorded in the ledger).")
RequestArg = typer.Argument(..., metavar="REQUEST", help="The request's id or its ref.")


def id_parser(what: str):  # type: ignore[no-untyped-def]
    """The typer ``parser`` of an id argument or option: a bounded whole number, or one
    usage line naming ``what`` (no OverflowError from SQLite)."""

    def parse(value: str | int) -> int:
        try:
            return parse_id(str(value), what)
        except BadInput as exc:
            # typer names the parameter itself: "Invalid value for 'request_id': must be ..."
            raise typer.BadParameter(str(exc).removeprefix(f"{what} ")) from None

    return parse


HOME_ARG: ContextVar[str | None] = ContextVar("home_arg", default=None)
"""The root ``--home`` of this invocation (set by the app's callback, read by :func:`home`)."""


def home(explicit: str | None = None) -> Home:
    """``explicit``, else the root ``--home`` of this invocation (or $FORGETCTL_HOME),
    else ./.forgetctl."""
    return resolve_home(explicit or HOME_ARG.get())


def workspace() -> Workspace:
    """The workspace of this invocation's home (which must be initialised)."""
    return Workspace.open(home())


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], right: Collection[str] = ()
) -> None:
    """One table on stdout; ``right``: the columns to right-align (numbers)."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def parse_date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{option}: invalid date {value!r} (expected YYYY-MM-DD)") from None
