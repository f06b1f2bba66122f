"""`forgetctl policy ...`: list, show and check policy files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from forgetctl.cli import common
from forgetctl.core.errors import NotFound
from forgetctl.core.policy import Policy, load_policies, load_policy, packaged_policy_dir

app = typer.Typer(help="The policies that set deadlines, methods and thresholds.")


def _policies():
    home = common.home()
    return home.policies() if home.exists() else load_policies(packaged_policy_dir())


@app.command("list")
def list_(json_: bool = common.JsonOpt) -> None:
    """The policies in the home (or the packaged ones before `init`).

    Example: forgetctl policy list"""
    policies = _policies()
    if json_:
        common.emit_json([p.model_dump() for p in policies.values()])
        return
    table = Table(title="Policies")
    for col in ("name", "regulation", "deadline", "extension", "retention", "approval", "title"):
        table.add_column(col)
    for p in policies.values():
        table.add_row(
            common.safe(p.name),
            common.safe(p.regulation),
            p.describe_deadline(),
            _extension(p),
            f"{p.retention_days} d",
            "yes" if p.require_approval else "no",
            common.safe(p.title),
        )
    common.out.print(table)


def _extension(p: Policy) -> str:
    parts = [f"{n} {unit}" for n, unit in
             ((p.extension_max_months, "mo"), (p.extension_max_days, "d")) if n]  # fmt: skip
    return " + ".join(parts) or "none"


@app.command("show")
def show(name: str, json_: bool = common.JsonOpt) -> None:
    """One policy in full.

    Example: forgetctl policy show gdpr"""
    policies = _policies()
    if name not in policies:
        raise NotFound(f"no policy {name!r} (have: {', '.join(policies)})")
    data = policies[name].model_dump()
    if json_:
        common.emit_json(data)
    else:
        common.out.print_json(data=data)


@app.command("check")
def check(file: Path, json_: bool = common.JsonOpt) -> None:
    """Validate a policy file; exit 2 naming the first problem.

    Example: forgetctl policy check policies/gdpr.toml"""
    policy = load_policy(file)
    if json_:
        common.emit_json({"path": str(file), "valid": True, "regulation": policy.regulation})
        return
    common.out.print(
        f"[green]{common.safe(file)} is a valid policy[/] ({common.safe(policy.regulation)})"
    )
