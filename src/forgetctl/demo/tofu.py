"""TOFU author files: loading them and selecting the authors a demo model memorises.

Author files (TOFU's ``authors.jsonl``) hold one row per question: ``author_id``, ``author``,
``question``, ``answer``, ``paraphrased_question``, ``paraphrased_answer``,
``perturbed_answers``; the rows of one author share its ``author_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgetctl.core.data import load_jsonl
from forgetctl.core.errors import BadInput


def load_authors(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a TOFU-format author file; each must carry an integer ``author_id``."""
    rows = load_jsonl(path)
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("author_id"), int):
            raise BadInput(f"{Path(str(path)).name}: row {i} has no integer 'author_id'")
    return rows


def author_ids(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Author ids in order of first appearance."""
    return list(dict.fromkeys(int(r["author_id"]) for r in rows))


def select_authors(
    rows: Sequence[dict[str, Any]], authors: int | Sequence[int]
) -> tuple[list[int], list[dict[str, Any]]]:
    """(ids, rows) for the first ``authors`` authors (an int) or the given ids (a list).

    Order of the returned ids is the order given (or of the file for a count).
    """
    known = author_ids(rows)
    if isinstance(authors, int):
        if not 1 <= authors <= len(known):
            raise BadInput(f"author count must be 1..{len(known)}, got {authors}")
        ids = known[:authors]
    else:
        ids = list(dict.fromkeys(int(a) for a in authors))
        missing = sorted(set(ids) - set(known))
        if not ids:
            raise BadInput("no author ids given")
        if missing:
            raise BadInput(f"author ids not in the data: {missing}")
    wanted = set(ids)
    return ids, [r for r in rows if int(r["author_id"]) in wanted]


def parse_authors(text: str) -> int | list[int]:
    """CLI form of an author selection: ``"10"`` (a count) or ``"3,7,12"`` / ``"3-5"`` (ids)."""
    text = text.strip()
    try:
        if "," not in text and "-" not in text:
            return int(text)
        ids: list[int] = []
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                ids.extend(range(lo, hi + 1))
            elif part.strip():
                ids.append(int(part))
        return ids
    except ValueError:
        raise BadInput(f"authors must be a count or ids like 3,7,12-15: {text!r}") from None


def pairs_of(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for r in rows]
