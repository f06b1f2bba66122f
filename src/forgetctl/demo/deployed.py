"""The "deployed model with personal data": the base model fine-tuned on some TOFU authors.

:func:`build_deployed_model` is what `forgetctl demo build-model` and the benchmark call: the
base model fine-tuned (:func:`forgetctl.lm.train.finetune`) on the records of some TOFU
authors, written as a Hugging Face directory with a ``forgetctl-deployed.json`` manifest. A
second call with the same inputs finds the manifest and returns at once.

:func:`control_rows` is the demo's control corpus: authors of the same file that the model
never saw, for the gate to compare forgotten authors with.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgetctl.core.files import atomic_dir
from forgetctl.core.hashing import sha256_file, weights_sha256
from forgetctl.core.progress import Progress, silent
from forgetctl.demo.tofu import author_ids, load_authors, pairs_of, select_authors
from forgetctl.lm import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE
from forgetctl.lm.prompts import use_templates
from forgetctl.lm.train import finetune
from forgetctl.lm.weights import load_model, read_manifest, require_model_dir, write_model_files

DEPLOYED_MANIFEST = "forgetctl-deployed.json"
CONTROL_AUTHORS = 10
"""At most this many unseen authors in the demo's control corpus (a request draws two)."""


def _deployed_key(base_dir: Path, data_sha: str, ids: list[int], settings: dict) -> dict:
    base = read_manifest(base_dir) or {}
    return {
        "base_sha256": base.get("weights_sha256") or weights_sha256(base_dir),
        "data_sha256": data_sha,
        "author_ids": ids,
        **settings,
    }


def build_deployed_model(
    base_dir: str | Path,
    data_file: str | Path,
    authors: int | Sequence[int],
    out_dir: str | Path,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: Progress = silent,
    fmt: str | None = None,
    template: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune the base model on some authors' records; write it to ``out_dir``.

    ``authors`` is a count (the first N authors of the file) or a list of author ids;
    ``fmt`` the prompt format of the fine-tune (None: the model's default), whose Jinja
    ``template`` is given when it is a user's own (:func:`forgetctl.core.formats.load_template`).
    Returns (out_dir, manifest). The manifest (``forgetctl-deployed.json``) holds the base
    and data hashes, the author ids and names, the training settings and figures; when
    ``out_dir`` already has a manifest with the same inputs, nothing is trained. A directory
    built from other inputs is replaced (atomically).
    """
    base_dir, out_dir = require_model_dir(base_dir), Path(out_dir)
    rows = load_authors(data_file)
    ids, selected = select_authors(rows, authors)
    settings = {
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "seed": seed,
        **({"format": fmt} if fmt else {}),  # the default keeps the cache key it had
        **({"template": template} if template else {}),
    }
    key = _deployed_key(base_dir, sha256_file(data_file), ids, settings)
    manifest_path = out_dir / DEPLOYED_MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("key") == key:
            return out_dir, old
    model, tokenizer = load_model(base_dir)
    if template:
        use_templates(tokenizer, {fmt: template})
    stats = finetune(
        model,
        tokenizer,
        [(q, a, fmt) for q, a in pairs_of(selected)],
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    names = {int(r["author_id"]): r.get("author") for r in selected}
    manifest = {
        "key": key,
        "base_dir": str(base_dir),
        "data_file": str(data_file),
        "authors": [{"author_id": i, "author": names[i]} for i in ids],
        "records": len(selected),
        "format": fmt,
        "template": template,
        "training": stats,
    }
    # A directory built from other inputs is removed first; the new one is written to a
    # temporary sibling and renamed, so a complete manifest always means a complete model.
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tokenizer, tmp, {"deployed_from": str(base_dir)})
        (tmp / DEPLOYED_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out_dir, manifest


def deployed_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``forgetctl-deployed.json`` of a model directory, if it has one."""
    path = Path(model_dir) / DEPLOYED_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def data_fingerprint(path: str | Path) -> str:
    """Short hash of a data file, for naming cached deployed models."""
    return hashlib.sha256(sha256_file(path).encode()).hexdigest()[:12]


def control_rows(
    rows: Sequence[dict[str, Any]], deployed: Sequence[int], max_authors: int = CONTROL_AUTHORS
) -> list[dict[str, Any]]:
    """The rows ({author, question, answer}) of the first ``max_authors`` authors of a TOFU
    file that are not among the ``deployed`` ids: people the deployed model never saw, with
    records shaped like those of the people it did."""
    unseen = set([a for a in author_ids(rows) if a not in set(deployed)][:max_authors])
    return [{k: r[k] for k in ("author", "question", "answer")}
            for r in rows if r["author_id"] in unseen and r.get("author")]  # fmt: skip
