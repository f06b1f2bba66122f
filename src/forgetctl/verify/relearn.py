"""Relearning attacks: does a little fine-tuning bring the forgotten knowledge back?

Knowledge that was only suppressed (a thin layer on top that steers answers away) comes
back after a few gradient steps on *some* of the subject's records, even on records the
attack never saw; knowledge that is really gone does not. But a model also learns a
little about anyone it is fine-tuned on (a name's likely country, the shape of the
answers, facts that one record shares with another), so the same attack is run on every
control subject the model never saw, each on its own copy, and only what the subject
regains beyond the controls counts. An attack:

1. splits the subject's forget items by the record they derive from (``PromptItem.source``),
   so a record and its paraphrases fall on the same side, deterministically by seed, and
   splits each control subject's items the same way;
2. fine-tunes a copy of the model on the attack side (``mode``: every weight, a LoRA
   adapter, or the retain items alone, which tests whether benign fine-tuning restores the
   subject) for ``steps`` steps at ``learning_rate``;
3. measures the held-out rest of each, and the int4-quantized attacked copy on them;
   what counts is the subject's gain on its rest beyond the controls' gain on theirs
   (``verify.checks.relearn``), since even a model that never saw either person predicts
   one person's records a little better than another's before any attack.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model

from forgetctl.core.items import PromptItem
from forgetctl.core.policy import AttackConfig
from forgetctl.core.progress import Progress, silent
from forgetctl.lm.evaluate import EvalResult, evaluate
from forgetctl.lm.int4 import plain_copy, quantize_model_int4
from forgetctl.lm.prompts import Pair
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


def attacked_copy(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    attack: AttackConfig,
    seed: int = 0,
    batch_size: int = 8,
    progress: Progress = silent,
):
    """A fine-tuned copy of ``model`` (the original is untouched) and the step losses."""
    copy = plain_copy(model)
    trainable = None
    if attack.mode == "lora":
        copy = get_peft_model(
            copy, LoraConfig(r=attack.lora_rank, lora_alpha=2 * attack.lora_rank,
                             target_modules="all-linear", lora_dropout=0.0),
        )  # fmt: skip
        trainable = [p for p in copy.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    losses = finetune_steps(
        copy, tokenizer, list(pairs), steps=attack.steps, learning_rate=attack.learning_rate,
        batch_size=batch_size, seed=seed, trainable=trainable, progress=progress,
    )  # fmt: skip
    if any(not math.isfinite(x) for x in losses):
        raise ValueError(f"relearning attack {describe(attack)} diverged (non-finite loss)")
    return copy, losses


def describe(attack: AttackConfig) -> str:
    what = {"full": "full fine-tuning", "lora": f"LoRA r{attack.lora_rank}",
            "retain": "full fine-tuning on retain items"}[attack.mode]  # fmt: skip
    return f"{what}, lr {attack.learning_rate:g}, {attack.steps} steps"


@dataclass
class Side:
    """One side's held-out rest after an attack, full precision and int4."""

    attack_items: int
    rest: EvalResult
    rest_int4: EvalResult
    losses: list[float]


@dataclass
class AttackResult:
    attack: AttackConfig
    subject: Side
    control: Side
    """The control subjects' held-out rests, pooled in the order of their prompt lists
    (``losses``: the first control's)."""
    rest_indices: list[int]
    """Indices of the subject's held-out items in its forget set."""
    control_rest_indices: list[int]
    """Indices of the controls' held-out items in their prompt lists, concatenated."""
    attack_s: float


def _measure(attacked, losses: list[float], tokenizer, trained: int, rest, progress) -> Side:
    return Side(
        trained,
        evaluate(attacked, tokenizer, rest, progress=progress),
        evaluate(quantize_model_int4(attacked), tokenizer, rest, progress=progress),
        losses,
    )


def _pool(sides: Sequence[Side]) -> Side:
    return Side(
        sum(s.attack_items for s in sides),
        EvalResult([x for s in sides for x in s.rest.items]),
        EvalResult([x for s in sides for x in s.rest_int4.items]),
        sides[0].losses,
    )


def relearn_attack(
    model,
    tokenizer,
    items: Sequence[PromptItem],
    controls: Sequence[Sequence[PromptItem]],
    attack: AttackConfig,
    fraction: float,
    retain: Sequence[PromptItem] = (),
    seed: int = 0,
    progress: Progress = silent,
) -> AttackResult:
    """Run one attack on the subject and, alike, on each control subject's items."""
    if len(items) < 2 or not controls or any(len(c) < 2 for c in controls):
        raise ValueError("a relearning attack needs at least two items on each side")
    start = time.perf_counter()
    if attack.mode == "retain":
        if not retain:
            raise ValueError("a retain-data attack needs retain items")
        progress(f"relearning attack ({describe(attack)}) on {len(retain)} retain items")
        attacked, losses = attacked_copy(model, tokenizer, [i.pair for i in retain], attack, seed,
                                         progress=progress)  # fmt: skip
    sides, rests = [], []
    for i, side in enumerate([items, *controls]):
        train, rest = split_items(side, fraction, seed)
        trained = len(retain)
        if attack.mode != "retain":
            whose = "subject" if i == 0 else f"control {i}'s"
            progress(f"relearning attack ({describe(attack)}) on {len(train)} {whose} items")
            pairs = [side[j].pair for j in train]
            attacked, losses = attacked_copy(model, tokenizer, pairs, attack, seed,
                                             progress=progress)  # fmt: skip
            trained = len(train)
        rest_items = [side[j] for j in rest]
        sides.append(_measure(attacked, losses, tokenizer, trained, rest_items, progress))
        rests.append(rest)
    offsets = [sum(map(len, controls[:k])) for k in range(len(controls))]
    control_rest = [off + j for off, rest in zip(offsets, rests[1:], strict=True) for j in rest]
    return AttackResult(attack, sides[0], _pool(sides[1:]), rests[0], control_rest,
                        time.perf_counter() - start)  # fmt: skip
