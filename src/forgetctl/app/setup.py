"""`forgetctl init`: create a home (ledger, keys, policies), copy its corpora in and
register the base model production serves.

Every input is checked before anything is written: a bad corpus, an unknown format or a
pretrained base of another architecture leave no home behind. Running it again on a home
keeps what is there (the ledger migrates, the base is registered once).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from forgetctl.app.home import Home
from forgetctl.app.workspace import Workspace
from forgetctl.core.data import MAX_DATA_BYTES, check_control_corpus, load_jsonl
from forgetctl.core.errors import BadInput
from forgetctl.core.files import read_bounded, write_atomic
from forgetctl.core.formats import check_served
from forgetctl.lm import DEFAULT_MODEL


def init_home(
    home: Home,
    *,
    model: str | None = None,
    base: str | None = None,
    retain_corpus: Path | None = None,
    control_corpus: Path | None = None,
    formats: Sequence[str] = (),
) -> dict:
    """Create (or re-open) ``home``; ``model`` and ``base`` are ``smollm2-135m`` (pulled
    into the home) or a model directory. Returns what was done: the home, whether it was
    created, the migrations, the chain head, production's version, the pretrained base and
    whether the serving formats were assumed (none given: every one the model renders)."""
    if formats and not model:
        raise BadInput("--format needs --model: it is part of the model's registration")
    if base and not model:
        raise BadInput("--base needs --model: it is part of the model's registration")

    def model_path(name: str) -> Path:
        return home.models / name if name == DEFAULT_MODEL else Path(name)

    if model:
        from forgetctl.app import versions  # torch: only when a model is registered
    pretrained = model_path(base) if base else None
    if pretrained is not None:
        versions.check_pretrained(model_path(model), pretrained)  # refused before writing
    if formats:
        check_served(formats)
    if retain_corpus:
        load_jsonl(retain_corpus)
    if control_corpus:
        check_control_corpus(load_jsonl(control_corpus), control_corpus)
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
        versions.register_base(ledger, model_path(model), list(formats) or None, pretrained)
    return {
        "home": str(home.root),
        "created": created,
        "migrations": ledger.applied_migrations(),
        "head": ledger.head(),
        "production": ledger.aliases.get("production") if model else None,
        "pretrained_base": str(pretrained) if pretrained else None,
        "formats_assumed": bool(model) and not formats,
    }
