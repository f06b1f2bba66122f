"""`forgetctl init`: create the home, its ledger and keys, and register a base model."""

from __future__ import annotations

from pathlib import Path

import typer

from forgetctl.cli import common


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
            help="A prompt format production serves the model in: chat (its chat template), "
            "plain ('Question: ...\\nAnswer:'), or a Jinja template file (NAME.jinja, "
            "rendering {{ question }}) for a server's own format; repeat for several. Default: "
            "chat and plain (chat only when the model has a chat template). Unlearning trains "
            "in these; the gate judges them and held-out wrappers.",
        ),
        training_data: Path = typer.Option(
            None,
            "--training-data",
            help="The rows the model was fine-tuned on (JSONL; recorded as path and sha256, "
            "not copied): with --recipe and --base, `consolidate` trains it again without "
            "the forgotten subjects.",
        ),
        recipe: Path = typer.Option(
            None,
            "--recipe",
            help="How it was fine-tuned: a JSON file {epochs, learning_rate, batch_size, seed, "
            "format} (`demo build-model` writes recipe.json), or `distill` when it is not "
            "known: consolidation then trains the base to predict what production predicts.",
        ),
        json_: bool = common.JsonOpt,
    ) -> None:
        """Create the home (ledger.db, keys/, policies/) and register the base model.

        Safe to run again. Example: forgetctl init --model ./deployed --base smollm2-135m
        --format chat"""
        from forgetctl.app.setup import init_home

        info = init_home(common.home(home), model=model, base=base, retain_corpus=retain_corpus,
                         control_corpus=control_corpus, formats=formats or (),
                         training_data=training_data, recipe=recipe)  # fmt: skip
        if info["formats_assumed"]:
            common.err.print("[yellow]warning:[/] serving formats: every one the model "
                             "can render (chat, plain); forgetctl cannot know how you "
                             "serve it: say so with --format")  # fmt: skip
        if json_:
            common.emit_json(info)
        else:
            verb = "created" if info["created"] else "already initialised"
            common.out.print(f"forgetctl home {verb}: [bold]{common.safe(info['home'])}[/]")
