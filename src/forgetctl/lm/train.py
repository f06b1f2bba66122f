"""The one training loop, and full fine-tuning on question/answer pairs.

:func:`train_loop` is the loop every trainer runs: the caller brings the parameters, the
optimiser, a batch source, the step's loss and the callbacks (what a trainer does between
steps); the loop owns the order zero_grad -> loss and backward -> clip -> step -> schedule.

:func:`finetune` trains every weight with AdamW on the answer tokens only (prompt tokens are
masked by :func:`forgetctl.lm.prompts.encode_pairs`). It is deterministic for a seed on CPU:
the seed fixes the batch order and torch's RNG, and Llama-style models have no dropout.
Batches group pairs of similar length (less padding, which is pure waste on CPU).
:func:`finetune_steps` is the plain fixed-step variant (the relearning attack, the
gradient-ascent baseline).

On a 2-core machine shared with other work, one torch thread is much faster than two for
these models (measured 6x for SmolLM2 generation under load): callers that run alongside
other processes should ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from forgetctl.core.errors import BadInput
from forgetctl.core.files import write_atomic
from forgetctl.core.progress import Progress, silent
from forgetctl.lm import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE
from forgetctl.lm.infer import model_device
from forgetctl.lm.prompts import Pair, encode_pairs

Batch = TypeVar("Batch")

Figures = dict[str, float]

StepLoss = Callable[[Batch], Figures]
"""Computes one step's loss from a batch and back-propagates it (it may call backward more
than once: a SAM second pass, a separate retain term); returns the step's figures."""

Callback = Callable[[int, Figures], bool | None]
"""Called after every optimiser step with (step, figures); a true answer stops training."""

GRAD_CLIP = 1.0
"""Every trainer clips the gradient norm at this."""


def train_loop(
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    step_loss: StepLoss[Batch],
    callbacks: Sequence[Callback] = (),
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip: float = GRAD_CLIP,
) -> int:
    """One optimiser step per batch until the batches run out or a callback stops it;
    returns the number of steps taken.

    Every callback runs after every step, even once an earlier one has asked to stop (the
    last step is still recorded and reported).
    """
    step = 0
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        figures = step_loss(batch)
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        step += 1
        stops = [callback(step, figures) for callback in callbacks]
        if any(stops):
            break
    return step


def answer_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at the supervised answer positions, flattened to (tokens, vocab); the row of
    the batch each comes from). Only these rows are normalised later, which saves the
    time and memory of a log-softmax over the prompt and padding positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"][:, 1:] != -100
    return logits[:, :-1][mask], mask.nonzero()[:, 0]


def answer_token_logp(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-softmax over the vocabulary at every supervised answer position of ``batch``,
    flattened to (answer tokens, vocab) in a fixed order."""
    logits, _ = answer_logits(model, batch)
    return torch.log_softmax(logits.float(), dim=-1)


def token_kl(policy_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of KL(ref || policy) over the vocabulary (the kl retain term
    towards the parent, the distill forget term towards the pretrained base)."""
    return (ref_logp.exp() * (ref_logp - policy_logp)).sum(-1).mean()


def _lm_loss(model: Any, ascent: bool = False) -> StepLoss[dict[str, torch.Tensor]]:
    """The step loss of plain causal-LM training on an encoded batch; ``ascent`` climbs it.
    The figure reported is the loss itself (not its negation)."""

    def step(batch: dict[str, torch.Tensor]) -> Figures:
        loss = model(**batch).loss
        (-loss if ascent else loss).backward()
        return {"loss": float(loss.detach())}

    return step


def _distill_loss(model: Any, teacher: Any) -> StepLoss[dict[str, torch.Tensor]]:
    """The step loss of distillation: KL from ``teacher``'s predictions to ``model``'s at
    every answer token of the batch (:func:`token_kl`)."""

    def step(batch: dict[str, torch.Tensor]) -> Figures:
        with torch.no_grad():
            target = answer_token_logp(teacher, batch)
        loss = token_kl(answer_token_logp(model, batch), target)
        loss.backward()
        return {"loss": float(loss.detach())}

    return step


def _encoded(
    tokenizer: Any,
    pairs: Sequence[Pair],
    index_batches: Iterable[list[int]],
    device: torch.device,
    max_length: int = 256,
) -> Iterator[dict[str, torch.Tensor]]:
    """Each batch of indices, encoded and on ``device``, drawn only when the loop asks."""
    for indices in index_batches:
        yield encode_pairs(tokenizer, [pairs[i] for i in indices], max_length, device)


def finetune(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: Progress = silent,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.05,
    max_length: int = 256,
    checkpoint: Path | None = None,
    teacher: Any = None,
) -> dict[str, Any]:
    """Fine-tune all weights of ``model`` in place on ``pairs``; return training figures.

    Linear warm-up then linear decay of the learning rate; gradient norm clipped at 1.
    The model is left in eval mode. With a ``teacher`` model, the loss is the KL from its
    predictions at the answer tokens instead of the answers themselves (distillation: the
    pairs' answers are then only where it is asked to predict).

    ``checkpoint``: a file where the whole state of training (weights, optimiser, schedule,
    the batch order's random state, the figures so far) is written atomically at the end of
    every epoch but the last. A later call with the same inputs carries on from it and ends
    with the weights an uninterrupted run gives (``resumed_epochs`` says how many it
    skipped); a checkpoint of other inputs is ignored and overwritten. The caller removes
    the file when the result is safe.
    """
    if not pairs:
        raise BadInput("finetune: no training pairs")
    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise BadInput("finetune: epochs and batch_size must be >= 1, learning_rate > 0")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    total = steps_per_epoch * epochs
    warmup = max(1, int(total * warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))),
    )
    lengths = [len(p[0]) + len(p[1]) for p in pairs]
    losses: list[float] = []
    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    key = None  # what a checkpoint was written for: every input that shapes the weights
    if checkpoint is not None:
        inputs = [list(map(list, pairs)), epochs, learning_rate, batch_size, seed,
                  weight_decay, warmup_fraction, max_length,
                  None if teacher is None else _weights_digest(teacher)]  # fmt: skip
        key = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()
    state = _load_checkpoint(checkpoint, key)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        losses, epoch_losses = state["losses"], state["epoch_losses"]
        epoch_seconds = state["epoch_seconds"]
    resumed = len(epoch_losses)
    # Each epoch's order is drawn when the loop reaches it, as it always was: the state
    # saved after an epoch's last step is the state that draws the next epoch's order.
    order = (
        indices
        for _ in range(epochs - resumed)
        for indices in _length_grouped_batches(lengths, batch_size, rng)
    )
    started = epoch_start = time.perf_counter()

    def after_step(local_step: int, figures: Figures) -> None:
        nonlocal epoch_start
        step = local_step + resumed * steps_per_epoch
        losses.append(figures["loss"])
        epoch = (step - 1) // steps_per_epoch + 1
        progress("fine-tuning", step, total, epoch=epoch, loss=losses[-1])
        if step % steps_per_epoch == 0:
            epoch_losses.append(sum(losses[-steps_per_epoch:]) / steps_per_epoch)
            now = time.perf_counter()
            epoch_seconds.append(now - epoch_start)
            epoch_start = now
            if checkpoint is not None and step < total:
                _save_checkpoint(checkpoint, {
                    "key": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(), "losses": losses,
                    "epoch_losses": epoch_losses, "epoch_seconds": epoch_seconds,
                })  # fmt: skip

    model.train()
    steps = train_loop(
        params,
        optimizer,
        _encoded(tokenizer, pairs, order, model_device(model), max_length),
        _lm_loss(model) if teacher is None else _distill_loss(model, teacher),
        [after_step],
        schedule,
    )
    model.eval()
    return {
        "pairs": len(pairs),
        "epochs": epochs,
        "steps": steps + resumed * steps_per_epoch,
        "resumed_epochs": resumed,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "seed": seed,
        "epoch_losses": epoch_losses,
        "epoch_seconds": epoch_seconds,
        "final_loss": epoch_losses[-1],
        "seconds": time.perf_counter() - started,
    }


def _save_checkpoint(path: Path, state: dict) -> None:
    write_atomic(path, lambda fh: torch.save(state, fh))  # streamed: no copy in memory


def _weights_digest(model: Any) -> str:
    """sha256 of a model's tensors in memory (a checkpoint of distillation is only resumed
    with the same teacher)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_checkpoint(path: Path | None, key: str | None) -> dict | None:
    """The state saved at ``path`` for the inputs ``key`` names, or None (no file, or one
    of other inputs). The file is forgetctl's own, written by :func:`_save_checkpoint`."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    return state if state.get("key") == key else None


def finetune_steps(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    steps: int,
    learning_rate: float,
    batch_size: int = 8,
    seed: int = 0,
    ascent: bool = False,
    trainable: Sequence[torch.nn.Parameter] | None = None,
    progress: Progress = silent,
) -> list[float]:
    """A fixed number of fine-tuning steps in place (AdamW, constant rate, no weight decay,
    gradient norm clipped at 1); returns the step losses.

    ``trainable``: the parameters to train; by default every weight (full fine-tuning, as
    the relearning attack does, including base weights a merged PEFT model had frozen).
    ``ascent`` climbs the loss instead (the gradient-ascent baseline). ``progress`` gets a
    "training" bar.
    """
    params = list(trainable) if trainable is not None else list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    batches = _cycled(len(pairs), batch_size, seed, steps)
    losses: list[float] = []

    def after_step(step: int, figures: Figures) -> None:
        losses.append(figures["loss"])
        progress("training", step, steps, loss=figures["loss"])

    model.train()
    train_loop(
        params,
        optimizer,
        _encoded(tokenizer, pairs, batches, model_device(model)),
        _lm_loss(model, ascent),
        [after_step],
    )
    model.eval()
    return losses


def _cycled(n: int, batch_size: int, seed: int, steps: int) -> Iterator[list[int]]:
    """``steps`` batches of indices from seeded permutations of ``range(n)`` laid end to end
    (a batch never runs short while there are at least ``batch_size`` items)."""
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, n):
            order += torch.randperm(n, generator=gen).tolist()
        take, order = order[:batch_size], order[batch_size:]
        yield take


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
