"""`forgetctl init`: create the home, its ledger and keys, and register a base model."""

from __future__ import annotations

from pathlib import Path

import typer

from forgetctl.cli import common
from forgetctl.core.errors import BadInput
from forgetctl.core.formats import check_served
from forgetctl.lm import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    @app.command()
    def init(
        home: str = typer.Option(None, "--home", help="Where to create the home."),
        model: str = typer.Option(
            None,
            "--model",
            help="Register the base model: smollm2-135m (pulled) or a local HF model directory.",
        ),
        retain_corpus: Path = typer.Option(
            None,
            "--retain-corpus",
            help="JSONL of the model's training records to keep (neighbors are drawn from it).",
        ),
        control_corpus: Path = typer.Option(
            None,
            "--control-corpus",
            help="JSONL ({author, question, answer}) of people the model never saw, shaped like "
            "the records of requests: the gate compares forgotten subjects with them. "
            "Default: the built-in fictitious profiles.",
        ),
        formats: list[str] = typer.Option(
            None,
            "--format",
            help="A prompt format production serves the model in: chat (its chat template) or "
            "plain ('Question: ...\\nAnswer:'); repeat for several. Default: both (chat only "
            "when the model has a chat template). Unlearning trains in these; the gate "
            "judges them and held-out wrappers.",
        ),
        json_: bool = common.JsonOpt,
    ) -> None:
        """Create the home (ledger.db, keys/, policies/) and register the base model.

        Safe to run again. Example: forgetctl init --model smollm2-135m --format plain"""
        from forgetctl.app.workspace import Workspace
        from forgetctl.core.data import MAX_DATA_BYTES, check_control_corpus, load_jsonl
        from forgetctl.core.files import read_bounded, write_atomic

        h = common.home(home)
        if formats and not model:
            raise BadInput("--format needs --model: it is part of the model's registration")
        if formats:
            check_served(formats)
        # A bad corpus fails before anything is written.
        if retain_corpus:
            load_jsonl(retain_corpus)
        if control_corpus:
            check_control_corpus(load_jsonl(control_corpus), control_corpus)
        created = not h.exists()
        # Opening loads the policies too: a broken policy in the home fails now, not later.
        ledger = Workspace.open(h, create=True).ledger
        # Checked above with the bounded reader; copied private (records of real people).
        if retain_corpus:
            write_atomic(
                h.root / "retain-corpus.jsonl", read_bounded(retain_corpus, MAX_DATA_BYTES)
            )
        if control_corpus:
            write_atomic(
                h.root / "control-corpus.jsonl", read_bounded(control_corpus, MAX_DATA_BYTES)
            )
        if model:
            from forgetctl.app import versions

            path = h.models / model if model == DEFAULT_MODEL else Path(model)
            versions.register_base(ledger, path, formats or None)
            if not formats:
                common.err.print("[yellow]warning:[/] serving formats: every one the model "
                                 "can render (chat, plain); forgetctl cannot know how you "
                                 "serve it: say so with --format")  # fmt: skip
        info = {
            "home": str(h.root),
            "created": created,
            "migrations": ledger.applied_migrations(),
            "head": ledger.head(),
            "production": ledger.aliases.get("production") if model else None,
        }
        if json_:
            common.emit_json(info)
        else:
            verb = "created" if created else "already initialised"
            common.out.print(f"forgetctl home {verb}: [bold]{h.root}[/]")
