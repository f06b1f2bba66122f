"""Targeted layer attribution (FIT): which decoder layers carry the forget set more than
the retain set.

For decoder layer ``l`` let ``g_F(l)`` be the gradient of the answer NLL on the forget items
with respect to the weights of the layer's Linear modules (the weights a LoRA adapter on
that layer would change), summed over all forget batches, and ``g_R(l)`` the same on the
retain items. The importance of the layer is

    importance(l) = s_F(l) / (s_R(l) + eps),   s_X(l) = ||g_X(l)|| / sum_m ||g_X(m)||

i.e. the layer's share of the forget gradient divided by its share of the retain gradient.
A gradient norm says how much changing the layer changes the loss: a layer whose share of
the forget loss's sensitivity is large and of the retain loss's sensitivity small is where
an update forgets the most per unit of collateral damage. Normalising each side by its
total makes the score independent of how well each set is fitted overall (a memorised
retain set has small gradients everywhere): 1.0 means "as much forget as retain", the
ranking is the same as that of the raw ratio ``||g_F(l)|| / ||g_R(l)||``, and ``eps``
(a small share) keeps a layer with no retain gradient from dominating by division by ~0.

Deterministic for a seed: at most ``max_items`` items per side are drawn with
``random.Random(seed)``, the batches are in a fixed order, and nothing else is random.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from torch import nn

from forgetctl.core.items import PromptItem
from forgetctl.lm.infer import model_device
from forgetctl.lm.prompts import encode_pairs
from forgetctl.unlearn.objectives import sequence_logprobs

EPS = 1e-3
"""A layer with a retain-gradient share below this counts as having this share."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, module list) of the model's decoder blocks (``model.layers`` in
    Llama-style models): the ModuleList with ``config.num_hidden_layers`` entries."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and (n is None or len(module) == n)
        ):
            return name, module
    raise ValueError("cannot find the decoder layers of this model")


def layer_linear_names(model: nn.Module, layer: int) -> list[str]:
    """Qualified names of the Linear modules inside decoder layer ``layer``."""
    prefix, layers = decoder_layers(model)
    return [
        f"{prefix}.{layer}.{name}"
        for name, mod in layers[layer].named_modules()
        if isinstance(mod, nn.Linear)
    ]


def _sample(items: Sequence[PromptItem], max_items: int, rng: random.Random) -> list[PromptItem]:
    items = list(items)
    return items if len(items) <= max_items else rng.sample(items, max_items)


def _layer_grad_norms(
    model: nn.Module, tokenizer, items: Sequence[PromptItem], batch_size: int
) -> list[float]:
    """||gradient of the summed answer NLL|| per decoder layer (Linear weights only)."""
    _, layers = decoder_layers(model)
    weights = [[m.weight for m in layer.modules() if isinstance(m, nn.Linear)] for layer in layers]
    # Only these weights need gradients: no memory or time spent on the others.
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in saved:
        p.requires_grad_(False)
    for ws in weights:
        for w in ws:
            w.requires_grad_(True)
            w.grad = None
    device = model_device(model)
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch = encode_pairs(tokenizer, [i.pair for i in chunk], device=device)
            # Sum of per-item mean NLLs, so every item weighs the same whatever its length.
            (-sequence_logprobs(model, batch).mean.sum()).backward()
        norms = []
        for ws in weights:
            sq = sum(float(w.grad.pow(2).sum()) for w in ws if w.grad is not None)
            norms.append(sq**0.5)
        return norms
    finally:
        for p, flag in saved.items():
            p.grad = None
            p.requires_grad_(flag)


def rank_layers(
    model: nn.Module,
    tokenizer,
    forget: Sequence[PromptItem],
    retain: Sequence[PromptItem],
    seed: int = 0,
    max_items: int = 32,
    batch_size: int = 8,
) -> list[tuple[int, float]]:
    """Decoder layers with their importance (see the module docstring), most important
    first; ties broken by layer index. The model's weights are not changed."""
    if not forget:
        raise ValueError("rank_layers: empty forget set")
    rng = random.Random(seed)
    forget_items = _sample(forget, max_items, rng)
    retain_items = _sample(retain, max_items, rng)
    was_training = model.training
    model.eval()  # no dropout: the gradients depend only on the items
    try:
        g_forget = _layer_grad_norms(model, tokenizer, forget_items, batch_size)
        g_retain = (
            _layer_grad_norms(model, tokenizer, retain_items, batch_size)
            if retain_items
            else [0.0] * len(g_forget)
        )
    finally:
        model.train(was_training)
    total_f = sum(g_forget) or 1.0
    total_r = sum(g_retain) or 1.0
    scores = [
        (layer, (f / total_f) / (r / total_r + EPS))
        for layer, (f, r) in enumerate(zip(g_forget, g_retain, strict=True))
    ]
    return sorted(scores, key=lambda s: (-s[1], s[0]))


def select_layers(ranking: Sequence[tuple[int, float]], k: int) -> list[int]:
    """The ``k`` most important layers (all of them when there are fewer), in layer order."""
    if k < 1:
        raise ValueError("select_layers: k must be >= 1")
    return sorted(layer for layer, _ in ranking[:k])
