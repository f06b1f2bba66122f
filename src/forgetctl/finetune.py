"""Full fine-tuning on question/answer pairs, and the "deployed model with personal data".

:func:`finetune` trains every weight with AdamW on the answer tokens only (prompt tokens are
masked by :func:`forgetctl.models.encode_pairs`). It is deterministic for a seed on CPU: the
seed fixes the batch order and torch's RNG, and Llama-style models have no dropout.
Batches group pairs of similar length (less padding, which is pure waste on CPU).
:func:`finetune_steps` is the plain fixed-step variant (the relearning attack, the
gradient-ascent baseline).

On a 2-core machine shared with other work, one torch thread is much faster than two for
these models (measured 6x for SmolLM2 generation under load): callers that run alongside
other processes should ``torch.set_num_threads(1)``.

:func:`build_deployed_model` is what `forgetctl demo build-model` and the benchmark call: the
base model fine-tuned on the records of some TOFU authors, written as a Hugging Face
directory with a ``forgetctl-deployed.json`` manifest. A second call with the same inputs
finds the manifest and returns at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from forgetctl.errors import BadInput

Pair = tuple[str, str]
Progress = Callable[[dict[str, Any]], None]
"""Called after every optimiser step with {epoch, step, total_steps, loss}."""

DEPLOYED_MANIFEST = "forgetctl-deployed.json"

# Defaults chosen by measurement on SmolLM2-135M and the first 10 TOFU authors (200 pairs,
# batch 8, one CPU thread): with lr 1e-4 the answer recall (ROUGE-L recall of the target in
# the greedy answer) on trained questions is 0.44 / 0.55 / 0.85 / 0.90 / 0.99 after epochs
# 2-6 of a 6-epoch schedule. Paraphrased questions stay near the base model's level (0.39).
DEFAULT_EPOCHS = 6
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_BATCH_SIZE = 8


def finetune(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: Progress | None = None,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.05,
    max_length: int = 256,
) -> dict[str, Any]:
    """Fine-tune all weights of ``model`` in place on ``pairs``; return training figures.

    Linear warm-up then linear decay of the learning rate; gradient norm clipped at 1.
    The model is left in eval mode.
    """
    from forgetctl.models import encode_pairs

    if not pairs:
        raise BadInput("finetune: no training pairs")
    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise BadInput("finetune: epochs and batch_size must be >= 1, learning_rate > 0")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    total = steps_per_epoch * epochs
    warmup = max(1, int(total * warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))),
    )
    lengths = [len(q) + len(a) for q, a in pairs]
    model.train()
    started = time.perf_counter()
    step = 0
    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses: list[float] = []
        for indices in _length_grouped_batches(lengths, batch_size, rng):
            batch = encode_pairs(tokenizer, [pairs[i] for i in indices], max_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(
                    {"epoch": epoch + 1, "step": step, "total_steps": total, "loss": losses[-1]}
                )
        epoch_losses.append(sum(losses) / len(losses))
        epoch_seconds.append(time.perf_counter() - t0)
    model.eval()
    return {
        "pairs": len(pairs),
        "epochs": epochs,
        "steps": step,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "seed": seed,
        "epoch_losses": epoch_losses,
        "epoch_seconds": epoch_seconds,
        "final_loss": epoch_losses[-1],
        "seconds": time.perf_counter() - started,
    }


def finetune_steps(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    steps: int,
    learning_rate: float,
    batch_size: int = 8,
    seed: int = 0,
    ascent: bool = False,
) -> list[float]:
    """A fixed number of full fine-tuning steps in place (AdamW, constant rate, no weight
    decay, gradient norm clipped at 1); returns the step losses.

    The relearning attack uses it (every weight, including base weights a merged PEFT model
    had frozen); ``ascent`` climbs the loss instead (the gradient-ascent baseline).
    """
    from forgetctl.models import encode_pairs

    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, len(pairs)):
            order += torch.randperm(len(pairs), generator=gen).tolist()
        take, order = order[:batch_size], order[batch_size:]
        batch = encode_pairs(tokenizer, [pairs[i] for i in take])
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        (-loss if ascent else loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _length_grouped_batches(
    lengths: list[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """A random epoch order in batches of similar length.

    Shuffle, sort each window of 8 batches by length, cut into batches, shuffle the
    batches: still random from epoch to epoch, but with far less right-padding (TOFU
    answers run from ~10 to ~80 tokens), which is pure waste on CPU.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 8
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _deployed_key(base_dir: Path, data_sha: str, ids: list[int], settings: dict) -> dict:
    from forgetctl.models import read_manifest, weights_sha256

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
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune the base model on some authors' records; write it to ``out_dir``.

    ``authors`` is a count (the first N authors of the file) or a list of author ids.
    Returns (out_dir, manifest). The manifest (``forgetctl-deployed.json``) holds the base
    and data hashes, the author ids and names, the training settings and figures; when
    ``out_dir`` already has a manifest with the same inputs, nothing is trained. A directory
    built from other inputs is replaced (atomically).
    """
    from forgetctl.data import load_authors, pairs_of, select_authors, sha256_file
    from forgetctl.fsutil import atomic_dir
    from forgetctl.models import load_model, require_model_dir, write_model_files

    base_dir, out_dir = require_model_dir(base_dir), Path(out_dir)
    rows = load_authors(data_file)
    ids, selected = select_authors(rows, authors)
    settings = {
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "seed": seed,
    }
    key = _deployed_key(base_dir, sha256_file(data_file), ids, settings)
    manifest_path = out_dir / DEPLOYED_MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("key") == key:
            return out_dir, old
    model, tokenizer = load_model(base_dir)
    stats = finetune(
        model,
        tokenizer,
        pairs_of(selected),
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
    from forgetctl.data import sha256_file

    return hashlib.sha256(sha256_file(path).encode()).hexdigest()[:12]
