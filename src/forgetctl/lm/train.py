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

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from forgetctl.core.errors import BadInput

Pair = tuple[str, str]


Progress = Callable[[dict[str, Any]], None]
"""Called after every optimiser step with {epoch, step, total_steps, loss}."""


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
    from forgetctl.lm.prompts import encode_pairs

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
    from forgetctl.lm.prompts import encode_pairs

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
