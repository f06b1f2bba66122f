"""Relearning attack: does a little fine-tuning on part of the forgotten data bring the rest back?

Knowledge that was only suppressed (a thin layer on top that steers answers away) comes
back after a few gradient steps on *some* of the subject's records, even on records the
attack never saw; knowledge that is really gone does not. The attack:

1. splits the forget items by the record they derive from (``PromptItem.source``), so a
   record and its paraphrases fall on the same side, deterministically by seed;
2. fine-tunes a copy of the model on the first part (``relearn_fraction`` of the records)
   for ``relearn_steps`` steps at ``relearn_learning_rate``;
3. measures answer recall on the held-out rest, before and after.

It is **full fine-tuning** (AdamW on every weight, adapters merged first), not LoRA: it is
the stronger attack (LoRA updates are a subset of it), it is what a party holding the
open weights of a 135M model would do, it needs no rank choice, and at this size it costs
only a few seconds per step on CPU.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from forgetctl.core.items import PromptItem
from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult, evaluate
from forgetctl.lm.int4 import plain_copy
from forgetctl.lm.train import finetune_steps


def split_items(
    items: Sequence[PromptItem], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices (attack, rest): ``fraction`` of the source records go to the attack side.

    Items without a source are records of their own. Both sides get at least one record
    when there are two or more; with a single record its variants are split instead.
    """
    groups: dict[object, list[int]] = {}
    for i, item in enumerate(items):
        key = ("src", item.source) if item.source is not None else ("item", i)
        groups.setdefault(key, []).append(i)
    if len(groups) < 2:
        # One record (with its variants): split the variants themselves, a stronger attack.
        groups = {("item", i): [i] for i in range(len(items))}
    keys = sorted(groups, key=repr)
    random.Random(seed).shuffle(keys)
    n_attack = round(fraction * len(keys))
    if len(keys) >= 2:
        n_attack = min(max(n_attack, 1), len(keys) - 1)
    attack = sorted(i for k in keys[:n_attack] for i in groups[k])
    rest = sorted(i for k in keys[n_attack:] for i in groups[k])
    return attack, rest


@dataclass
class RelearnResult:
    attack_indices: list[int]
    rest_indices: list[int]
    before: EvalResult
    """The model on the held-out rest, before the attack."""
    after: EvalResult
    """The attacked copy on the held-out rest."""
    losses: list[float]
    attack_s: float

    @property
    def recovery(self) -> float:
        return (self.after.mean("recall") or 0.0) - (self.before.mean("recall") or 0.0)

    def figures(self) -> dict:
        return {
            "attack_items": len(self.attack_indices),
            "rest_items": len(self.rest_indices),
            "recall_before": self.before.mean("recall"),
            "recall_after": self.after.mean("recall"),
            "leakage_before": self.before.mean("leakage"),
            "leakage_after": self.after.mean("leakage"),
            "recovery": self.recovery,
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "attack_s": self.attack_s,
        }


def relearn_attack(
    model,
    tokenizer,
    items: Sequence[PromptItem],
    cfg: VerifyConfig,
    before: EvalResult | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> RelearnResult:
    """Attack a copy of ``model`` (the original is untouched) and measure the held-out rest.

    ``before``: an existing evaluation of ``model`` on ``items`` (all of them, same order),
    to avoid generating the before-attack answers twice.
    """
    attack, rest = split_items(items, cfg.relearn_fraction, seed)
    if not attack or not rest:
        raise ValueError("a relearning attack needs at least two forget items")
    rest_items = [items[i] for i in rest]
    before_rest = (
        before.select(rest) if before is not None else evaluate(model, tokenizer, rest_items)
    )
    start = time.perf_counter()
    if progress:
        progress(f"relearning attack: {cfg.relearn_steps} steps on {len(attack)} items")
    attacked = plain_copy(model)
    torch.manual_seed(seed)
    losses = finetune_steps(
        attacked,
        tokenizer,
        [(items[i].prompt, items[i].target) for i in attack],
        steps=cfg.relearn_steps,
        learning_rate=cfg.relearn_learning_rate,
        batch_size=batch_size,
        seed=seed,
    )
    attack_s = time.perf_counter() - start
    if any(not math.isfinite(x) for x in losses):
        raise ValueError("relearning attack diverged (non-finite loss)")
    if progress:
        progress(f"measuring {len(rest_items)} held-out items after the attack")
    after_rest = evaluate(attacked, tokenizer, rest_items)
    del attacked
    return RelearnResult(attack, rest, before_rest, after_rest, losses, attack_s)
