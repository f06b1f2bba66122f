"""`forgetctl plan [make] [REQUEST...]` and `forgetctl plan show REQUEST`."""

from __future__ import annotations

import click
import typer
from rich.table import Table
from typer.core import TyperGroup

from forgetctl.cli import common
from forgetctl.cli.progress import live
from forgetctl.core.errors import InvalidState


class _MakeByDefault(TyperGroup):
    """`forgetctl plan 2` is `forgetctl plan make 2`: the group's first word, unless it
    names a sub-command or asks for help, starts the default one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["make", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_MakeByDefault,
    help="Filter and expand requests into prompt sets (`plan` alone: `plan make`).\n\n"
    "Example: forgetctl plan 2 && forgetctl plan show 2",
)


def _probe_table(probe: dict) -> Table:
    """The memorisation probe's evidence (``plan.planner._probe_figures``) in words."""
    table = Table(title="Memorisation probe", show_header=False)
    table.add_column("what")
    table.add_column("figure")
    rows = [("records known", f"{probe.get('known', 0)} of {probe.get('items', 0)} "
             f"(specificity at least {probe.get('min_specificity', '?')} nats per token "
             "above the control subjects' records)")]  # fmt: skip
    if "mean_specificity" in probe:
        rows.append(("mean specificity", f"{probe['mean_specificity']}"))
    if probe.get("records"):
        rows.append(("per record", ", ".join(f"{v:.3f}" for v in probe["records"])))
    if "attributes" in probe:
        revealing = f"{probe.get('attributes_revealing', 0)} of {len(probe['attributes'])}"
        rows.append(("attribute answers revealing", revealing))
    if control := probe.get("control"):
        rows.append(("control records", f"{control.get('records')} (95th percentile log-prob "
                     f"per token {control.get('p95_logprob')})"))  # fmt: skip
    if probe.get("note"):
        rows.append(("note", str(probe["note"])))
    for what, figure in rows:
        table.add_row(what, common.safe(figure))
    return table


@app.command("make")
def make(
    targets: list[str] = typer.Argument(
        None, metavar="REQUEST", help="Ids or refs (default: every received request)."
    ),
    json_: bool = common.JsonOpt,
) -> None:
    """Plan requests (the default): keep what the model knows, expand it, add neighbours.

    Example: forgetctl plan make 2 3"""
    from forgetctl.app.plan_step import plan_request_step
    from forgetctl.app.requests import resolve

    ws = common.workspace()
    ids = [resolve(ws, t) for t in targets or []] or ws.ledger.requests.ids_in_status("received")
    results = []
    for request_id in ids:
        with live(quiet=json_) as progress:
            progress(f"planning request {request_id}")
            outcome = plan_request_step(ws, request_id, progress=progress)
        results.append({"request": request_id, **outcome})
        if not json_:
            common.out.print(
                f"request {request_id}: [bold]{outcome['status']}[/] "
                f"{outcome.get('counts') or ''} "
                f"{common.safe('; '.join(outcome.get('reasons', [])))}",
                highlight=False,
            )
    if json_:
        common.emit_json(results)
    elif not ids:
        common.out.print("nothing to plan")


@app.command("show")
def show(target: str = common.RequestArg, json_: bool = common.JsonOpt) -> None:
    """A request's prompt set: items per kind, the probe, what was dropped and why.

    Example: forgetctl plan show DSR-2026-0042"""
    from forgetctl.app.plan_step import load_plan
    from forgetctl.app.requests import resolve

    ws = common.workspace()
    request_id = resolve(ws, target)
    plan = ws.ledger.plans.get(request_id)
    if plan is None:
        raise InvalidState(f"request {request_id} has no plan (run `forgetctl plan {request_id}`)")
    counts = plan["counts"]
    try:
        prompt_set = load_plan(ws, request_id)
        dropped, probe = prompt_set.dropped, prompt_set.probe
    except InvalidState:
        dropped, probe = None, None  # purged: only the counts remain
    if json_:
        common.emit_json({"request": request_id, "counts": counts, "probe": probe,
                          "dropped": dropped})  # fmt: skip
        return
    table = Table(title=f"Prompt set of request {request_id}")
    table.add_column("kind")
    table.add_column("items", justify="right")
    for kind, n in sorted(counts.items()):
        table.add_row(kind, str(n))
    common.out.print(table)
    if probe:
        common.out.print(_probe_table(probe))
    if dropped:
        why = Table(title="Dropped")
        for col in ("kind", "reason", "figure", "prompt"):
            why.add_column(col)
        for d in dropped:
            why.add_row(*(common.safe(str(d.get(k, "")))[:70]
                          for k in ("kind", "reason", "figure", "prompt")))  # fmt: skip
        common.out.print(why)
