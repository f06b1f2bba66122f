"""What every command module shares: the home, the ledger, output and input helpers."""

from __future__ import annotations

import json
import sys
from datetime import date
from typing import Any

import typer
from rich.console import Console

from forgetctl.app.home import Home, resolve_home
from forgetctl.core.errors import BadInput
from forgetctl.store.crypto import Keyring
from forgetctl.store.ledger import Ledger, open_ledger

out = Console()
err = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")


class State:
    """Per-invocation state: the home chosen by --home / $FORGETCTL_HOME / ./.forgetctl."""

    home_arg: str | None = None


def home() -> Home:
    return resolve_home(State.home_arg)


def ledger() -> Ledger:
    return open_ledger(home().require().ledger_path)


def keyring() -> Keyring:
    return Keyring(home().keys)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def parse_date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{option}: invalid date {value!r} (expected YYYY-MM-DD)") from None
