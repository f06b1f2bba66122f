"""Content hashes: of a file, a directory tree, a model's weights, and a lineage of them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgetctl.core.errors import ModelMissing


def _feed(digest: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    _feed(digest, Path(path))
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        _feed(digest, path)
        digest.update(b"\0")
    return digest.hexdigest()


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 of a model directory's weights (every ``*.safetensors``, sorted by name)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelMissing(f"no safetensors weights in {model_dir}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        _feed(digest, path)
    return digest.hexdigest()


def lineage_key(parts: Sequence[str]) -> str:
    """The identity of a model's effective weights: the hash of its base, then of each
    adapter merged on top, in order. The merged-weights cache and the score cache both
    key by it."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()
