"""Real 4-bit NF4 quantization of a model, as it is deployed for serving.

Unlearning by a small weight change can hide knowledge that 4-bit rounding brings back
(the change is smaller than the quantization step). This module produces the weights a
4-bit server actually computes with: every ``nn.Linear`` weight is quantized with
bitsandbytes' NF4 (blocks of 64 weights, one absmax scale per block, 16 levels) and
dequantized back, which is exactly what a bitsandbytes ``Linear4bit`` layer does before
its matmul. It runs on CPU with bitsandbytes' reference kernels.

Not quantized, as in transformers' ``load_in_4bit`` path:
- ``lm_head``: transformers keeps the output projection in full precision (it is the
  most sensitive layer), and in tied models such as SmolLM2 it shares its weight with the
  input embedding, so quantizing it would also quantize the embedding table.
- embeddings and norms: they are not ``nn.Linear`` and bitsandbytes does not replace them.
- biases: ``Linear4bit`` keeps them in the compute dtype.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

BLOCKSIZE = 64


SKIPPED_MODULES = ("lm_head",)


def _bnb_functional():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bitsandbytes.functional as bnbf
    return bnbf


def nf4_roundtrip(weight: torch.Tensor, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """The tensor a 4-bit NF4 layer computes with: quantize then dequantize, same dtype."""
    bnbf = _bnb_functional()
    # Always bitsandbytes' CPU reference kernels, wherever the model is: the rounding the
    # NF4 fake quantization of unlearning is tested to match.
    w = weight.detach().to("cpu", torch.float32).contiguous()
    packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
    out = bnbf.dequantize_4bit(packed, state).reshape(weight.shape)
    return out.to(weight.device, weight.dtype)


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy with any PEFT adapter merged into the base weights (what is served)."""
    clone = copy.deepcopy(model)
    if hasattr(clone, "merge_and_unload"):
        clone = clone.merge_and_unload()
    return clone


def quantized_linear_names(model: nn.Module) -> list[str]:
    """Names of the Linear modules that 4-bit deployment quantizes."""
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name.split(".")[-1] not in SKIPPED_MODULES
    ]


@torch.no_grad()
def quantize_model_int4(model: nn.Module, blocksize: int = BLOCKSIZE) -> nn.Module:
    """A copy of ``model`` (adapters merged) whose Linear weights went through NF4.

    The original model is left untouched.
    """
    clone = plain_copy(model)
    modules = dict(clone.named_modules())
    for name in quantized_linear_names(clone):
        lin = modules[name]
        lin.weight.copy_(nf4_roundtrip(lin.weight, blocksize))
    clone.eval()
    return clone
