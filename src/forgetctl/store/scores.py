"""Per-item scores kept between verifications: no model answers the same question twice.

A version's weights never change (adapters are hashed before they are merged), so its
greedy answer to an item, and the scores derived from it, are fixed. The gate asks the
same model the same questions again and again: the parent of a retry, production in
request after request, the general-knowledge sample every request shares, a candidate that
becomes the next request's parent. This cache answers those from an SQLite file in
``HOME/cache/``.

It holds no personal data: an entry's key is an HMAC (under a key in ``keys/``, outside
the cache) of the model's key, the prompt, the target and the scoring settings, and its
value is numbers only (recall, leakage, fact count, probability). The greedy outputs are not
kept, so a cached item's ``output`` is empty.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from forgetctl.core.items import PromptItem
from forgetctl.lm.evaluate import SCORING_VERSION, EvalResult, ItemScore, evaluate

Hasher = Callable[[str], str]


NUMBERS = ("recall", "leakage", "facts", "prob")
"""The fields of an ``ItemScore`` that are kept: figures, never text."""


class ScoreCache:
    """Scores of (model key, item) pairs, in an SQLite file; ``hasher`` keys the entries."""

    def __init__(self, path: str | Path, hasher: Hasher) -> None:
        self.path, self.hasher = Path(path), hasher
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, value TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def _key(self, model_key: str, item: PromptItem, settings: str) -> str:
        return self.hasher(json.dumps([model_key, settings, item.prompt, item.target]))

    def evaluate(
        self,
        model_key: str,
        load_model: Callable[[], Any],
        tokenizer,
        items: Sequence[PromptItem],
        with_prob: bool = True,
    ) -> EvalResult:
        """``evaluate`` of the model ``model_key`` names on ``items``, generating only for
        the items not cached; ``load_model`` is called only when some are missing."""
        settings = f"{SCORING_VERSION}/prob={with_prob}"
        keys = [self._key(model_key, item, settings) for item in items]
        with closing(self._connect()) as db:
            marks = ",".join("?" * len(keys))
            query = f"SELECT key, value FROM scores WHERE key IN ({marks})"
            found = dict(db.execute(query, keys).fetchall()) if keys else {}
        missing = [i for i, k in enumerate(keys) if k not in found]
        fresh = EvalResult([])
        if missing:
            fresh = evaluate(load_model(), tokenizer, [items[i] for i in missing], with_prob)
            with closing(self._connect()) as db, db:
                db.executemany(
                    "INSERT OR REPLACE INTO scores VALUES (?, ?)",
                    [(keys[i], json.dumps({f: getattr(s, f) for f in NUMBERS}))
                     for i, s in zip(missing, fresh.items, strict=True)],
                )  # fmt: skip
        measured = dict(zip(missing, fresh.items, strict=True))
        scores = [
            measured.get(i)
            or ItemScore(prompt=item.prompt, target=item.target, kind=item.kind,
                         source=item.source, output="", **json.loads(found[keys[i]]))
            for i, item in enumerate(items)
        ]  # fmt: skip
        return EvalResult(scores, fresh.wall_s)
