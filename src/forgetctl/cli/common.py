"""What every command module shares: the workspace, output and input helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Sequence
from contextvars import ContextVar
from datetime import date
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from forgetctl.app.home import Home, resolve_home
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import BadInput

out = Console()
err = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")


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
