"""`forgetctl demo build-model`: a "deployed model with personal data" from TOFU-format data."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from forgetctl.cli import common
from forgetctl.cli.progress import live
from forgetctl.lm import DEFAULT_MODEL

app = typer.Typer(help="Build the demo's deployed model.", no_args_is_help=True)

TRAINING_DATA = "training-data.jsonl"
CONTROLS = "controls.jsonl"
RECIPE = "recipe.json"


@app.command("build-model")
def build_model(
    data: Path = typer.Option(..., "--data", help="TOFU-format JSONL (author_id, question, ...)."),
    authors: str = typer.Option("10", "--authors", help="A count (first N) or ids: 3,7,12-15."),
    out: Path = typer.Option(..., "--out", help="Where to write the fine-tuned model."),
    base: Path = typer.Option(None, "--base", help="Base model dir (default: the pulled one)."),
    epochs: int = typer.Option(None, "--epochs", min=1),
    learning_rate: float = typer.Option(None, "--learning-rate", min=0),
    fmt: str = typer.Option(
        None,
        "--format",
        help="The prompt format to fine-tune in: chat, plain, or a Jinja template file "
        "(NAME.jinja, as `init --format` takes it; default: the base's default, chat); serve "
        "it that way: `init --format`.",
    ),
    json_: bool = common.JsonOpt,
) -> None:
    """Fully fine-tune the base model on some authors' Q/A records (cached by inputs).

    Also writes the selected records to OUT/training-data.jsonl, the retain corpus for
    `forgetctl init --retain-corpus` (and `--training-data`, with OUT/recipe.json for
    `--recipe`), and the records of up to 10 authors of the file that
    were not selected to OUT/controls.jsonl, the control corpus for `init --control-corpus`
    (people the model never saw, whom the gate compares forgotten subjects with).

    Example: forgetctl demo build-model --data examples/data/tofu/authors.jsonl --authors 10
    --out ./deployed
    """
    from forgetctl.core.data import check_control_corpus
    from forgetctl.core.errors import BadInput
    from forgetctl.core.formats import check_served, is_template_file, load_template
    from forgetctl.demo.deployed import build_deployed_model, control_rows
    from forgetctl.demo.tofu import load_authors, parse_authors, select_authors
    from forgetctl.lm.weights import require_model_dir

    base = base or common.home().models / DEFAULT_MODEL
    selection = parse_authors(authors)
    template = None
    if fmt and is_template_file(fmt):
        fmt, template = load_template(fmt)
    elif fmt:
        check_served([fmt])
    options = {k: v for k, v in {"epochs": epochs, "learning_rate": learning_rate, "fmt": fmt,
                                 "template": template}.items() if v}  # fmt: skip
    with live(quiet=json_) as progress:
        out_dir, manifest = build_deployed_model(
            require_model_dir(base), data, selection, out, progress=progress, **options
        )
    every = load_authors(data)
    ids, rows = select_authors(every, selection)
    _write_jsonl(out_dir / TRAINING_DATA, rows)
    # How it was trained, for `init --recipe`: consolidation trains it again without the
    # forgotten authors.
    recipe = {k: manifest["key"][k] for k in ("epochs", "learning_rate", "batch_size", "seed")}
    recipe |= {"format": manifest.get("format"), "template": manifest.get("template")}
    (out_dir / RECIPE).write_text(json.dumps(recipe) + "\n")
    # Not part of the model's cache key: an existing model gets its controls without training.
    controls = control_rows(every, ids)
    written: Path | None = out_dir / CONTROLS
    try:
        check_control_corpus(controls, CONTROLS)
        _write_jsonl(written, controls)
    except BadInput as exc:
        written = None
        common.err.print(f"[yellow]warning:[/] no {CONTROLS} ({exc}): `init` without "
                         "--control-corpus uses the built-in fictitious profiles")  # fmt: skip
    if json_:
        common.emit_json({"path": str(out_dir), "controls": written and str(written), **manifest})
    else:
        names = ", ".join(a["author"] or str(a["author_id"]) for a in manifest["authors"][:5])
        common.out.print(
            f"deployed model at [bold]{out_dir}[/]: {len(manifest['authors'])} authors "
            f"({names}, ...), {manifest['records']} records"
            + (f"; {len({r['author'] for r in controls})} unseen authors in {CONTROLS}"
               if written else "")
        )  # fmt: skip


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
