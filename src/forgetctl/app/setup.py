"""`forgetctl init`: create a home (ledger, keys, policies), copy its corpora in and
register the base model production serves.

Every input is checked before anything is written: a bad corpus, an unknown format or a
pretrained base of another architecture leave no home behind. Running it again on a home
keeps what is there (the ledger migrates, the base is registered once).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgetctl.app.home import Home
from forgetctl.app.workspace import Workspace
from forgetctl.core.data import MAX_DATA_BYTES, check_control_corpus, load_jsonl
from forgetctl.core.errors import BadInput
from forgetctl.core.files import read_bounded, read_text, write_atomic
from forgetctl.core.formats import (
    SERVED,
    check_served,
    check_template,
    is_template_file,
    load_template,
)
from forgetctl.core.hashing import sha256_file
from forgetctl.core.inputs import loads_json
from forgetctl.lm import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_MODEL


class Recipe(BaseModel):
    """How the deployed model was fine-tuned from its pretrained base, to train it again
    without the forgotten subjects (``forgetctl consolidate``); what `demo build-model`
    writes to ``recipe.json``. When the recipe is unknown, ``method = "distill"`` (or
    ``--recipe distill``) trains the base to predict what production predicts on the kept
    rows' answers; its epochs, learning rate and batch size default to the demo's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["finetune", "distill"] = "finetune"
    epochs: int = Field(ge=1, le=1000)
    learning_rate: float = Field(gt=0, le=1)
    batch_size: int = Field(ge=1, le=4096)
    seed: int = 0
    format: str | None = None
    """The prompt format of the fine-tune (None: the model's default)."""
    template: str | None = None
    """The Jinja template of ``format`` when it is a user's own (:mod:`forgetctl.core.formats`)."""

    @model_validator(mode="before")
    @classmethod
    def _distill_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("method") == "distill":
            defaults = {"epochs": DEFAULT_EPOCHS, "learning_rate": DEFAULT_LEARNING_RATE,
                        "batch_size": DEFAULT_BATCH_SIZE}  # fmt: skip
            return {**defaults, **data}
        return data


DISTILL = "distill"
"""``--recipe distill``: the recipe is unknown; consolidation distils production."""


def load_recipe(path: Path) -> Recipe:
    if str(path) == DISTILL:
        return Recipe(method="distill")  # type: ignore[call-arg]  # the validator fills in
    try:
        recipe = Recipe.model_validate(loads_json(read_text(path), path.name))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "recipe"
        raise BadInput(f"{path.name}: {where}: {first['msg']}") from None
    if recipe.template is not None:
        check_template(recipe.format or "", recipe.template, f"{path.name}: template")
    elif recipe.format is not None and recipe.format not in SERVED:
        raise BadInput(f"{path.name}: format {recipe.format!r} (one of: {', '.join(SERVED)}, "
                       "or a template's name with its template)")  # fmt: skip
    return recipe


def init_home(
    home: Home,
    *,
    model: str | None = None,
    base: str | None = None,
    retain_corpus: Path | None = None,
    control_corpus: Path | None = None,
    formats: Sequence[str] = (),
    training_data: Path | None = None,
    recipe: Path | None = None,
) -> dict:
    """Create (or re-open) ``home``; ``model`` and ``base`` are ``smollm2-135m`` (pulled
    into the home) or a model directory. Returns what was done: the home, whether it was
    created, the migrations, the chain head, production's version, the pretrained base and
    whether the serving formats were assumed (none given: every one the model renders).

    ``training_data`` (the deployed model's fine-tune rows, recorded as a path and sha256,
    not copied) and ``recipe`` (:class:`Recipe`, a JSON file) with ``base`` are what
    consolidation needs to train the model again without the forgotten subjects."""
    if formats and not model:
        raise BadInput("--format needs --model: it is part of the model's registration")
    if base and not model:
        raise BadInput("--base needs --model: it is part of the model's registration")
    if (training_data or recipe) and not (training_data and recipe and base):
        raise BadInput("--training-data and --recipe go together, with --model and --base: "
                       "they say how the model was fine-tuned from its base")  # fmt: skip

    def model_path(name: str) -> Path:
        return home.models / name if name == DEFAULT_MODEL else Path(name)

    if model:
        from forgetctl.app import versions  # torch: only when a model is registered
    pretrained = model_path(base) if base else None
    if pretrained is not None:
        versions.check_pretrained(model_path(model), pretrained)  # refused before writing
    # A format entry is a built-in name or a template file, registered under its name.
    templates: dict[str, str] = {}
    names = []
    for entry in formats:
        if is_template_file(entry):
            entry, text = load_template(entry)
            templates[entry] = text
        names.append(entry)
    if names:
        check_served(names, templates)
    if retain_corpus:
        load_jsonl(retain_corpus)
    if control_corpus:
        check_control_corpus(load_jsonl(control_corpus), control_corpus)
    training = None
    if training_data and recipe:
        load_jsonl(training_data)
        training = {"path": str(training_data.resolve()), "sha256": sha256_file(training_data),
                    "recipe": load_recipe(recipe).model_dump()}  # fmt: skip
    created = not home.exists()
    # Opening loads the policies too: a broken policy in the home fails now, not later.
    ledger = Workspace.open(home, create=True).ledger
    # Checked above with the bounded reader; copied private (records of real people).
    for source, copy in (
        (retain_corpus, home.retain_corpus),
        (control_corpus, home.control_corpus),
    ):
        if source:
            write_atomic(copy, read_bounded(source, MAX_DATA_BYTES))
    if model:
        versions.register_base(ledger, model_path(model), names or None, pretrained, training,
                               templates)  # fmt: skip
    return {
        "home": str(home.root),
        "created": created,
        "migrations": ledger.applied_migrations(),
        "head": ledger.head(),
        "production": ledger.aliases.get("production") if model else None,
        "pretrained_base": str(pretrained) if pretrained else None,
        "formats_assumed": bool(model) and not formats,
    }
