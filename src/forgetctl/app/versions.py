"""Model versions: the base model, the lineage of unlearning adapters on top of it, and
the consolidated models that replace a stack of them.

A version's effective weights are its root (the registered base, or the newest
consolidated model of its lineage: a model trained again without the forgotten subjects)
plus every adapter after it merged in order. Production's merged weights are cached
under ``HOME/cache/merged/<lineage hash>`` so commands do not re-merge them; a candidate
(whose parent is production) is production's cached weights plus its own adapter, merged
in memory. Adapters are re-hashed before they are merged, so a tampered adapter file is
refused rather than served.

Which status may follow which is :mod:`forgetctl.core.lifecycle`'s; promotion and rollback
are :mod:`forgetctl.app.promote`'s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import BadInput, InvalidState, NotFound
from forgetctl.core.formats import SERVED, check_served
from forgetctl.core.hashing import lineage_key, sha256_tree
from forgetctl.lm.prompts import formats_of, use_templates
from forgetctl.lm.weights import (
    cached_merged,
    load_model,
    load_tokenizer,
    merged_model,
    require_model_dir,
)
from forgetctl.store.ledger import Ledger

BASE_VERSION = 0


def register_base(
    ledger: Ledger,
    model_dir: Path,
    formats: list[str] | None = None,
    pretrained: Path | None = None,
    training: dict | None = None,
    templates: dict[str, str] | None = None,
) -> int:
    """Record a base model as version 0 under ``production``, with the prompt formats it is
    served in (``formats``, which may name the user's ``templates``; None: every built-in
    one it can render), the public model it was
    fine-tuned from (``pretrained``: what unlearning may reset and distil towards, since it
    never saw the fine-tune data) and how (``training``: the fine-tune's data file, its
    sha256 and recipe, for consolidation); idempotent for the same model and settings."""
    model_dir = require_model_dir(model_dir).resolve()
    sha = sha256_tree(model_dir)
    served = check_served(formats, templates) if formats is not None else None
    templates = {n: t for n, t in (templates or {}).items() if n in (served or [])}
    pre = None
    if pretrained is not None:
        pretrained = check_pretrained(model_dir, pretrained)
        pre = {"path": str(pretrained), "sha256": sha256_tree(pretrained)}
    base = ledger.versions.find(BASE_VERSION)
    if base:
        if base["base_sha256"] != sha:
            raise InvalidState(
                f"this home already serves base model {base['base_path']}; "
                "use a new home for another model"
            )
        if formats is not None and (
            base["metrics"].get("serving_formats") != served
            or base["metrics"].get("prompt_templates", {}) != templates
        ):
            raise InvalidState("this home's base model is registered with serving formats "
                               f"{base['metrics'].get('serving_formats') or 'all'}")  # fmt: skip
        if pre is not None and base["metrics"].get("pretrained") != pre:
            raise InvalidState("this home's base model is registered with pretrained base "
                               f"{(base['metrics'].get('pretrained') or {}).get('path', 'none')}; "
                               "use a new home for another")  # fmt: skip
        if training is not None and base["metrics"].get("training") != training:
            raise InvalidState("this home's base model is registered with other training "
                               "data or recipe; use a new home for another")  # fmt: skip
        return BASE_VERSION
    metrics: dict[str, Any] = {"serving_formats": served} if served else {}
    if templates:
        metrics["prompt_templates"] = templates
    if pre is not None:
        metrics["pretrained"] = pre
    if training is not None:
        metrics["training"] = training
    with ledger.transaction():
        ledger.versions.add(
            id=BASE_VERSION,
            kind="base",
            status="promoted",
            base_path=str(model_dir),
            base_sha256=sha,
            metrics=metrics,
        )
        ledger.aliases.move("production", BASE_VERSION, "base model registered")
    return BASE_VERSION


_SAME_SHAPE = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
               "intermediate_size", "num_attention_heads", "num_key_value_heads")  # fmt: skip
"""The config fields a pretrained base must share with the model: unlearning compares their
predictions token by token and moves weights of one towards the other's."""


def check_pretrained(model_dir: Path, pretrained: Path) -> Path:
    """``pretrained`` resolved, when it can be the base ``model_dir`` was fine-tuned from;
    :class:`BadInput` when it cannot (not a model, itself, another shape or tokenizer)."""
    model_dir = require_model_dir(model_dir).resolve()
    pretrained = require_model_dir(pretrained).resolve()
    if pretrained == model_dir:
        raise BadInput("--base is the model the deployed one was fine-tuned from, not itself")
    configs = [json.loads((d / "config.json").read_text()) for d in (model_dir, pretrained)]
    differ = [k for k in _SAME_SHAPE if configs[0].get(k) != configs[1].get(k)]
    if differ or load_tokenizer(model_dir).get_vocab() != load_tokenizer(pretrained).get_vocab():
        raise BadInput(f"{pretrained} is not the base of {model_dir}: "
                       f"{', '.join(differ) or 'the tokenizer'} differ")  # fmt: skip
    return pretrained


def load_pretrained(ws: Workspace) -> Any | None:
    """The registered pretrained base (its files checked against the registration), or None."""
    base = ws.ledger.versions.find(BASE_VERSION)
    entry = base["metrics"].get("pretrained") if base else None
    if entry is None:
        return None
    path = require_model_dir(entry["path"])
    if sha256_tree(path) != entry["sha256"]:
        raise InvalidState(f"the pretrained base at {path} changed since it was registered")
    return load_model(path)[0]


def serving_formats(ledger: Ledger, tokenizer: Any) -> list[str]:
    """The formats production is served in: as registered, else every served format this
    tokenizer can render (the chat template's when it has one, and plain completion)."""
    base = ledger.versions.find(BASE_VERSION)
    registered = base["metrics"].get("serving_formats") if base else None
    return formats_of(tokenizer, registered or SERVED)


def prompt_templates(ledger: Ledger) -> dict[str, str]:
    """The user's prompt templates registered with the base model (format name -> text)."""
    base = ledger.versions.find(BASE_VERSION)
    return dict(base["metrics"].get("prompt_templates", {})) if base else {}


def _check_adapter(version: dict) -> Path:
    path = Path(version["adapter_path"])
    if not path.is_dir():
        raise NotFound(f"version {version['id']}: adapter missing at {path}")
    if sha256_tree(path) != version["adapter_sha256"]:
        raise InvalidState(f"version {version['id']}: adapter hash mismatch (tampered?)")
    return path


def version_key(ledger: Ledger, version_id: int) -> str:
    """An identifier of a version's effective weights: the root's hash then each adapter's,
    as recorded in the ledger (files are checked against them when loaded)."""
    chain = ledger.versions.weights_chain(version_id)
    return lineage_key([chain[0]["base_sha256"]] + [v["adapter_sha256"] for v in chain[1:]])


def production_dir(ws: Workspace) -> Path:
    """A directory with production's merged weights (the base itself for version 0)."""
    ledger = ws.ledger
    production = ledger.aliases.get("production")
    chain = ledger.versions.weights_chain(production)
    adapters = [_check_adapter(v) for v in chain[1:]]
    cache_root = ws.home.cache / "merged"
    dest = cached_merged(
        chain[0]["base_path"], adapters, cache_root, version_key(ledger, production)
    )
    if adapters:
        # Only production is cached: older merges are dropped to bound disk use.
        for old in cache_root.iterdir():
            if old != dest and not old.name.startswith(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)
    return dest


def load_version(ws: Workspace, version_id: int) -> tuple[Any, Any]:
    """(model, tokenizer) with the effective weights of ``version_id``; the tokenizer renders
    the registered prompt templates too."""
    model, tokenizer = _load_weights(ws, version_id)
    use_templates(tokenizer, prompt_templates(ws.ledger))
    return model, tokenizer


def _load_weights(ws: Workspace, version_id: int) -> tuple[Any, Any]:
    ledger = ws.ledger
    chain = ledger.versions.weights_chain(version_id)
    ids = [v["id"] for v in chain]
    production = ledger.aliases.get("production")
    if production in ids:
        start, rest = production_dir(ws), chain[ids.index(production) + 1 :]
    else:
        start, rest = Path(chain[0]["base_path"]), chain[1:]
    if not rest:
        return load_model(start)
    model = merged_model(start, [_check_adapter(v) for v in rest])
    return model, load_tokenizer(start)


def newest_candidate(ledger: Ledger) -> int:
    found = ledger.versions.newest_judged()
    if found is None:
        raise NotFound("no candidate version (run `forgetctl apply`)")
    return found
