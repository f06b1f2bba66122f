"""`forgetctl apply`: unlearn planned requests, one LoRA adapter each."""

from __future__ import annotations

import typer

from forgetctl.cli import common
from forgetctl.cli.progress import live


def register(app: typer.Typer) -> None:
    @app.command()
    def apply(
        requests: list[int] = typer.Argument(
            None, help="Default: every planned request.", parser=common.id_parser("request id")
        ),
        json_: bool = common.JsonOpt,
    ) -> None:
        """Unlearn each request on top of production, as a new candidate version.

        Example: forgetctl apply 2"""
        from forgetctl.app.apply_step import apply_request

        ws = common.workspace()
        ids = requests or ws.ledger.requests.ids_in_status("planned")
        summary = []
        for request_id in ids:
            with live(quiet=json_) as progress:
                progress(f"request {request_id}: unlearning")
                version_id = apply_request(ws, request_id, progress=progress)
            metrics = ws.ledger.versions.get(version_id)["metrics"]
            summary.append({"request": request_id, "version": version_id, **metrics})
            if not json_:
                common.out.print(
                    f"request {request_id} -> candidate version [bold]{version_id}[/] "
                    f"({metrics.get('steps')} steps, {metrics.get('wall_s')} s, "
                    f"layers {metrics.get('layers')})"
                )
        if json_:
            common.emit_json(summary)
        elif not ids:
            common.out.print("nothing planned to apply")
