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
        base: str = typer.Option(
            None,
            "--base",
            help="The public model the deployed one was fine-tuned from: smollm2-135m (pulled) "
            "or a local HF model directory. It never saw the fine-tune data, so unlearning "
            "can train towards it (objective distill) and reset weights to it.",
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

        Safe to run again. Example: forgetctl init --model ./deployed --base smollm2-135m
        --format chat"""
        from forgetctl.app.workspace import Workspace
        from forgetctl.core.data import MAX_DATA_BYTES, check_control_corpus, load_jsonl
        from forgetctl.core.files import read_bounded, write_atomic

        h = common.home(home)
        if formats and not model:
            raise BadInput("--format needs --model: it is part of the model's registration")
        if base and not model:
            raise BadInput("--base needs --model: it is part of the model's registration")

        def model_path(name: str) -> Path:
            return h.models / name if name == DEFAULT_MODEL else Path(name)

        if model:
            from forgetctl.app import versions  # torch: only when a model is registered
        pretrained = model_path(base) if base else None
        if pretrained is not None:
            versions.check_pretrained(model_path(model), pretrained)  # refused before writing
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
            versions.register_base(ledger, model_path(model), formats or None, pretrained)
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
            "pretrained_base": str(pretrained) if model and base else None,
        }
        if json_:
            common.emit_json(info)
        else:
            verb = "created" if created else "already initialised"
            common.out.print(f"forgetctl home {verb}: [bold]{h.root}[/]")
