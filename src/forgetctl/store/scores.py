"""Per-item scores kept between verifications: no model answers the same question twice.

A version's weights never change (adapters are hashed before they are merged), so its
greedy answer to an item, and the scores derived from it, are fixed. The gate asks the
same model the same questions again and again: the parent of a retry, production in
request after request, the general-knowledge sample every request shares, a candidate that
becomes the next request's parent. This cache answers those from an SQLite file in
``HOME/cache/``.

It holds no personal data: an entry's key is an HMAC (under a key in ``keys/``, outside
the cache) of the model's key, the prompt, the target and the scoring settings, and its
value is numbers only (recall, leakage, token accuracy, degeneracy ...). The greedy outputs are not
kept, so a cached item's ``output`` is empty.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path

from forgetctl.core.items import PromptItem

Hasher = Callable[[str], str]


class ScoreCache:
    """Scores of (model key, item) pairs, in an SQLite file; ``hasher`` keys the entries.

    It stores numbers under opaque keys; what the numbers are, and when to measure them, is
    :func:`forgetctl.lm.evaluate.evaluate_cached`'s."""

    def __init__(self, path: str | Path, hasher: Hasher) -> None:
        self.path, self.hasher = Path(path), hasher
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, value TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def keys(self, model_key: str, items: Sequence[PromptItem], settings: str) -> list[str]:
        return [
            # An item in the model's default format keeps the key it had before formats.
            self.hasher(
                json.dumps(
                    [model_key, settings, item.prompt, item.target]
                    + ([item.format] if item.format else [])
                )
            )  # fmt: skip
            for item in items
        ]

    def get(self, keys: Sequence[str]) -> dict[str, dict[str, float | None]]:
        if not keys:
            return {}
        with closing(self._connect()) as db:
            marks = ",".join("?" * len(keys))
            query = f"SELECT key, value FROM scores WHERE key IN ({marks})"
            return {k: json.loads(v) for k, v in db.execute(query, list(keys)).fetchall()}

    def put(self, scores: Mapping[str, dict[str, float | None]]) -> None:
        with closing(self._connect()) as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in scores.items()],
            )
