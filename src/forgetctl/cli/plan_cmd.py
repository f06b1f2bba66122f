"""`forgetctl plan [REQUEST...]` and `forgetctl plan show ID`."""

from __future__ import annotations

import typer
from rich.table import Table

from forgetctl.cli import common
from forgetctl.cli.progress import status
from forgetctl.core.errors import BadInput, InvalidState
from forgetctl.core.inputs import parse_id


def _show(request_id: int, json_: bool) -> None:
    from forgetctl.app.plan_step import load_plan

    ws = common.workspace()
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
        common.out.print(f"memorisation probe: {probe}", markup=False, highlight=False)
    if dropped:
        why = Table(title="Dropped")
        for col in ("kind", "reason", "figure", "prompt"):
            why.add_column(col)
        for d in dropped:
            why.add_row(*(common.safe(str(d.get(k, "")))[:70]
                          for k in ("kind", "reason", "figure", "prompt")))  # fmt: skip
        common.out.print(why)


def register(app: typer.Typer) -> None:
    @app.command(
        "plan",
        help="Filter and expand requests into prompt sets: `plan [REQUEST...]` (default: "
        "every received request), or `plan show ID` for counts and what was dropped.\n\n"
        "Example: forgetctl plan 2 && forgetctl plan show 2",
    )
    def plan(
        targets: list[str] = typer.Argument(None, metavar="[REQUEST...] | show ID"),
        json_: bool = common.JsonOpt,
    ) -> None:
        targets = targets or []
        if targets[:1] == ["show"]:
            if len(targets) != 2:
                raise BadInput("usage: forgetctl plan show ID")
            _show(parse_id(targets[1], "request id"), json_)
            return
        parsed = [parse_id(t, "request id (or: forgetctl plan show ID)") for t in targets]
        from forgetctl.app.plan_step import plan_request_step

        ws = common.workspace()
        ids = parsed or ws.ledger.requests.ids_in_status("received")
        results = []
        for request_id in ids:
            with status(f"planning request {request_id}", quiet=json_) as say:
                outcome = plan_request_step(ws, request_id, progress=say)
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
