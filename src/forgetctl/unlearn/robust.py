"""Robustness of the forgetting against the two ways forgotten data comes back.

**int4 rounding** (:func:`nf4_fake_quant`, :func:`int4_aware`). An unlearning update is a
small change of the weights; a 4-bit server rounds every weight to one of 16 levels per
block, and a change smaller than the rounding step simply disappears (Zhang et al. 2024,
"Catastrophic failure of LLM unlearning via quantization"). While unlearning, every LoRA
layer therefore computes with the *effective* weight ``W + scaling * B @ A`` rounded the
way deployment rounds it: NF4, blocks of 64 consecutive weights of the row-major weight,
one absmax scale per block, the 16 NF4 levels (the same scheme bitsandbytes'
``quantize_4bit(..., quant_type="nf4")`` uses, so the forward pass sees the weights the
int4 check serves). Rounding has zero gradient almost everywhere, so the backward pass uses
a straight-through estimator: ``w + (q(w) - w).detach()`` computes ``q(w)`` forward and
passes the gradient to ``w`` unchanged. The loss then only goes down when the update moves
weights across rounding boundaries, which is exactly what survives quantization.
Only the adapted (targeted) layers are fake-quantised: the frozen layers get the same
rounding in deployment, but it is a fixed perturbation that cannot undo the update.

**relearning** (:func:`sam_perturbation`). Fine-tuning on a few of the forgotten records
brings the rest back when the forget loss sits in a sharp minimum: a small step in weight
space climbs out of it (Fan et al. 2025, "Towards LLM unlearning resilient to relearning
attacks: a sharpness-aware minimization perspective"). Sharpness-aware forgetting takes the
forget gradient at the worst nearby point ``theta + rho * g / ||g||`` (``g`` the forget
gradient at ``theta``), so the update minimises the forget loss over a whole neighbourhood
of radius ``rho`` and lands in a flat region that a short relearning run cannot climb out of.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

BLOCKSIZE = 64

NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
"""The 16 NF4 code values (quantiles of a unit normal, rescaled to [-1, 1]; Dettmers 2023)."""

_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2


def nf4_quantize(weight: torch.Tensor, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """``weight`` rounded to NF4 and scaled back (no gradient): blockwise absmax over the
    flattened tensor, each value replaced by the nearest of the 16 levels times its block's
    absmax."""
    flat = weight.detach().reshape(-1).float()
    pad = (-flat.numel()) % blocksize
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    blocks = flat.view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = blocks / scale
    index = torch.bucketize(normed, _MIDPOINTS.to(normed.device))
    quant = NF4_LEVELS.to(normed.device)[index] * scale
    out = quant.reshape(-1)[: weight.numel()].view(weight.shape)
    return out.to(weight.dtype)


def nf4_fake_quant(weight: torch.Tensor, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """NF4-rounded ``weight`` in the forward pass, identity gradient (straight-through)."""
    return weight + (nf4_quantize(weight, blocksize) - weight).detach()


def _lora_fake_quant_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    # Bound to one peft LoRA Linear: compute with NF4(W + sum of active deltas). With the
    # adapter disabled (the reference model) the original full-precision forward runs.
    if self.disable_adapters or self.merged:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.get_base_layer()
    weight = base.weight
    for name in self.active_adapters:
        if name in self.lora_A:
            weight = weight + self.get_delta_weight(name)
    # The adapter may be float32 on a bfloat16 base (peft's default): compute in x's dtype,
    # as a 4-bit layer dequantizes into its compute dtype. A no-op in float32.
    return F.linear(x, nf4_fake_quant(weight).to(x.dtype), base.bias)


def lora_linear_layers(model: nn.Module) -> list[nn.Module]:
    """The peft LoRA Linear modules of ``model`` (those that carry an adapter)."""
    from peft.tuners.lora import Linear as LoraLinear

    return [m for m in model.modules() if isinstance(m, LoraLinear)]


@contextmanager
def int4_aware(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every LoRA Linear of ``model`` computes with its NF4-rounded
    effective weight (straight-through gradient). Restored on exit, even on error."""
    layers = lora_linear_layers(model) if enabled else []
    for layer in layers:
        layer.forward = types.MethodType(_lora_fake_quant_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


def _grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    norms = [p.grad.norm() for p in params if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.tensor(0.0)


@contextmanager
def sam_perturbation(params: Sequence[torch.Tensor], rho: float) -> Iterator[bool]:
    """Move ``params`` to ``theta + rho * g / ||g||`` using their current ``.grad`` (the
    forget gradient at ``theta``) for the duration of the block, then move them back.

    Yields whether a perturbation was applied (not when ``rho`` is 0 or the gradient is 0).
    The caller zeroes the gradients inside the block and takes the forget gradient there.
    """
    norm = float(_grad_norm(params))
    if rho <= 0 or norm == 0.0:
        yield False
        return
    # The original values are copied back (not the step subtracted): restored bit for bit.
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                saved.append((p, p.detach().clone()))
                p.add_(p.grad, alpha=rho / norm)
    try:
        yield True
    finally:
        with torch.no_grad():
            for p, original in saved:
                p.copy_(original)
