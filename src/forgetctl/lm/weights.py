"""Model weights on disk: loading (onto a device, in a dtype), saving with a manifest, and
merging a lineage of LoRA adapters into the base (cached by lineage key).

Loading defaults to float32 on CPU, which is what every figure in this project was measured
with; CUDA and bfloat16 are used only where a caller asks for them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from forgetctl.core.errors import BadInput, ModelMissing
from forgetctl.core.files import atomic_dir
from forgetctl.core.hashing import weights_sha256
from forgetctl.lm import DEFAULT_MODEL

MODEL_MANIFEST = "forgetctl-model.json"


WEIGHTS_FILE = "model.safetensors"


def require_model_dir(path: str | Path) -> Path:
    """``path`` if it holds a Hugging Face model, else :class:`ModelMissing` saying how to pull."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelMissing(
            f"no model at {path} (run `forgetctl model pull {DEFAULT_MODEL}`, "
            "or pass a local Hugging Face causal-LM directory)"
        )
    return path


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(require_model_dir(path)), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory, offline only, in eval mode: on ``device``
    (default CPU) in ``dtype`` (default float32)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers 5 draws a "Loading weights" bar per load; forgetctl shows its own progress.
    hf_logging.disable_progress_bar()
    path = require_model_dir(path)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype or torch.float32, local_files_only=True
    )
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def read_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / MODEL_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def write_model_files(
    model: Any, tokenizer: Any, out_dir: Path, manifest: dict[str, Any] | None = None
) -> None:
    """Save model + tokenizer into an existing directory, plus ``forgetctl-model.json``
    with the sha256 of the weights (and ``manifest``'s fields)."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {**(manifest or {}), "weights_sha256": weights_sha256(out_dir)}
    (out_dir / MODEL_MANIFEST).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    # safetensors writes its file 0600; an exported model must be readable by the server.
    for path in out_dir.iterdir():
        if path.is_file():
            path.chmod(0o644)


def save_merged(
    model: Any, tokenizer: Any, out_dir: str | Path, manifest: dict[str, Any] | None = None
) -> Path:
    """Write a model + tokenizer as plain safetensors into a new ``out_dir``, atomically.

    The files go to a temporary sibling that is fsynced and renamed into place, so a
    failure leaves neither ``out_dir`` nor a partial directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise BadInput(f"{out_dir} already exists; choose a new output directory")
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tokenizer, tmp, manifest)
    return out_dir


def merged_model(
    base_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """The base model with each LoRA adapter merged in, in order, in eval mode (on
    ``device`` in ``dtype``, as :func:`load_model`).

    Each adapter was trained on the weights produced by merging the ones before it, so it
    is loaded onto the current (already merged) weights and merged in turn.
    """
    from peft import PeftModel

    model, _ = load_model(base_dir, device, dtype)
    for adapter in adapter_dirs:
        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").is_file():
            raise ModelMissing(f"no LoRA adapter at {adapter}")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        model = model.merge_and_unload()
    model.eval()
    return model


def cached_merged(
    base_dir: str | Path, adapter_dirs: Sequence[str | Path], cache_root: str | Path, key: str
) -> Path:
    """A directory with the merged weights of a lineage, built once and reused.

    ``key`` names the lineage (:func:`forgetctl.core.hashing.lineage_key` of the base's and
    each adapter's hash), so any change to the base or an adapter gives a new entry. With no
    adapters the base directory itself is returned.
    """
    if not adapter_dirs:
        return require_model_dir(base_dir)
    dest = Path(cache_root) / key[:24]
    if (dest / MODEL_MANIFEST).is_file():
        return dest
    model = merged_model(base_dir, adapter_dirs)
    lineage = {"base": str(base_dir), "adapters": [str(a) for a in adapter_dirs], "key": key}
    try:
        save_merged(model, load_tokenizer(base_dir), dest, {"lineage": lineage})
    except BadInput:
        # Another process finished the same merge first (its rename won).
        if not (dest / MODEL_MANIFEST).is_file():
            raise
    return dest
